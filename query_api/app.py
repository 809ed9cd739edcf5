"""The query API (FastAPI): answers, replay, records, costs, health and the web page.

Every request is authenticated with `Authorization: Bearer <key>`; the tenant comes from the
key and is part of every store query. Another tenant's id answers 404 exactly as a missing
one does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aitrail import __version__
from aitrail.auth import Authenticator, require
from aitrail.errors import AitrailError, Forbidden
from aitrail.settings import OidcSettings
from aitrail.metrics import CONTENT_TYPE_LATEST, Metrics
from aitrail.store.base import COST_GROUPS, Principal, Role, Store

from aitrail.integrity.note import Verifier

from .access import AccessLog
from .service import (
    AccessLogOut, AnswersOut, CheckpointsOut, CostsOut, ErrorResponse, ProofOut, QueryService, TraceOut, WhoAmI,
)

log = logging.getLogger(__name__)

READERS = (Role.AUDITOR, Role.ANALYST, Role.ADMIN)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "Bad request"), (401, "No valid key"), (403, "Role not allowed"), (404, "Not found"))
}


def error_json(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _reader(request: Request) -> Principal:
    """The caller, from `Authorization: Bearer <key or token>`; only roles that may read."""
    principal = request.app.state.authenticator.principal(request.headers.get("authorization"))
    if principal.role not in READERS:
        raise Forbidden(f"role '{principal.role}' cannot read audit data; needs role auditor, analyst or admin")
    return principal


Reader = Annotated[Principal, Depends(_reader)]


def create_app(
    store: Store,
    *,
    pseudonymise: Callable[[str], str],
    metrics: Metrics | None = None,
    verifier: Verifier | None = None,
    oidc: OidcSettings | None = None,
    access_log: AccessLog | None = None,
) -> FastAPI:
    """`verifier` (the checkpoint signing key's public half) checks proofs for replays;
    `access_log` records every read (the servers always pass one; without it, reads are
    not logged — for tests of other things only)."""
    metrics = metrics or Metrics()
    queries = QueryService(store, pseudonymise=pseudonymise, verifier=verifier)
    app = FastAPI(
        title="aitrail query API",
        version=__version__,
        description="Find and replay any past answer of your AI systems, with proof it was not altered.",
    )
    app.state.authenticator = Authenticator(store.authenticate, oidc)

    @app.exception_handler(AitrailError)
    async def _aitrail_error(request: Request, exc: AitrailError) -> JSONResponse:
        if exc.status >= 500:
            log.error("request failed: %s", exc.message)
        return error_json(exc.status, exc.code, exc.message, {"Retry-After": "5"} if exc.retriable else None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()
        )
        return error_json(400, "bad_request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_json(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_json(500, "internal", "internal error; the server log has the details")


    async def logged(principal: Principal, endpoint: str, query: dict[str, Any], ids: list[str]) -> None:
        if access_log is not None:
            await access_log.record(principal, endpoint, query, ids)

    @app.get("/v1/whoami", response_model=WhoAmI, responses=_ERRORS, tags=["identity"])
    async def whoami(principal: Reader) -> WhoAmI:
        """The caller as aitrail sees it: tenant and role come from the key or token."""
        return WhoAmI(tenant=principal.tenant, role=str(principal.role), key_id=principal.key_id)

    @app.get("/v1/answers", response_model=AnswersOut, responses=_ERRORS, tags=["answers"])
    async def answers(
        principal: Reader,
        q: Annotated[str | None, Query(description="Words of the question or answer.", max_length=1000)] = None,
        at: Annotated[str | None, Query(description="ISO 8601 or plain language, e.g. 'last Tuesday 14:30'.")] = None,
        tz: Annotated[str | None, Query(description="IANA time zone that `at` is read in; default UTC.")] = None,
        window: Annotated[str | None, Query(description="Half-width around `at`, e.g. 15m, 2h, 1d.")] = None,
        user: Annotated[str | None, Query(description="User id as the service knows it, or its pseudonym.")] = None,
        service: str | None = None,
        model: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 20,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
        visible_to: Annotated[str | None, Query(
            description="ACL tags a principal holds (comma-separated): only answers whose retrieved documents all "
                        "admit them — what that principal could have been shown.")] = None,
        exposed_to: Annotated[str | None, Query(
            description="ACL tags a principal holds: only answers that used a document NOT admitting them.")] = None,
    ) -> AnswersOut:
        params = dict(q=q, at=at, tz=tz, window=window, user=user, service=service, model=model, limit=limit,
                      cursor=cursor, visible_to=visible_to, exposed_to=exposed_to)
        result = await run_in_threadpool(queries.answers, principal, **params)
        await logged(principal, "/v1/answers", params, [a.record_id for a in result.data])
        return result

    @app.get("/v1/traces/{trace_id}", response_model=TraceOut, responses=_ERRORS, tags=["replay"])
    async def trace(
        principal: Reader,
        trace_id: str,
        visible_to: Annotated[str | None, Query(
            description="ACL tags a principal holds: show only the documents that principal may see.")] = None,
    ) -> TraceOut:
        result = await run_in_threadpool(queries.trace, principal, trace_id, visible_to=visible_to)
        await logged(principal, "/v1/traces/{trace_id}", {"trace_id": trace_id, "visible_to": visible_to},
                     [r["record_id"] for r in result.records])
        return result

    @app.get("/v1/records/{record_id}", responses=_ERRORS, tags=["records"])
    async def record(principal: Reader, record_id: str) -> dict[str, Any]:
        result = await run_in_threadpool(queries.record, principal, record_id)
        await logged(principal, "/v1/records/{record_id}", {"record_id": record_id}, [record_id])
        return result

    @app.get("/v1/records/{record_id}/proof", response_model=ProofOut, responses=_ERRORS, tags=["integrity"])
    async def proof(principal: Reader, record_id: str) -> ProofOut:
        """Inclusion proof of the record in its Merkle log, against the newest signed checkpoint."""
        result = await run_in_threadpool(queries.proof, principal, record_id)
        await logged(principal, "/v1/records/{record_id}/proof", {"record_id": record_id}, [record_id])
        return result

    @app.get("/v1/checkpoints/latest", response_model=CheckpointsOut, responses=_ERRORS, tags=["integrity"])
    async def checkpoints(
        principal: Reader, log: Annotated[str | None, Query(description="One log id; default every log.")] = None
    ) -> CheckpointsOut:
        """Newest signed checkpoint (C2SP signed note) of each log: size, root hash, signature."""
        return await run_in_threadpool(queries.latest_checkpoints, log)

    @app.get("/v1/costs", response_model=CostsOut, responses=_ERRORS, tags=["costs"])
    async def costs(
        principal: Reader,
        from_: Annotated[str | None, Query(alias="from", description="ISO 8601 or plain language.")] = None,
        to: Annotated[str | None, Query(description="ISO 8601 or plain language.")] = None,
        tz: str | None = None,
        group_by: Annotated[str, Query(description=f"Comma-separated: {', '.join(COST_GROUPS)}.")] = "model",
    ) -> CostsOut:
        result = await run_in_threadpool(queries.costs, principal, start=from_, end=to, tz=tz, group_by=group_by)
        await logged(principal, "/v1/costs", {"from": from_, "to": to, "tz": tz, "group_by": group_by}, [])
        return result

    @app.get("/v1/access-log", response_model=AccessLogOut, responses=_ERRORS, tags=["access"])
    async def access(
        principal: Reader,
        from_: Annotated[str | None, Query(alias="from", description="ISO 8601 or plain language.")] = None,
        to: Annotated[str | None, Query(description="ISO 8601 or plain language.")] = None,
        tz: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    ) -> AccessLogOut:
        """Who read what, when (admins and auditors). Reading the log is itself logged."""
        require(principal, Role.ADMIN, Role.AUDITOR)
        result = await run_in_threadpool(
            queries.access_log, principal, start=from_, end=to, tz=tz, limit=limit, cursor=cursor
        )
        await logged(principal, "/v1/access-log", {"from": from_, "to": to, "limit": limit, "cursor": cursor},
                     [e.record_id for e in result.data])
        return result

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        ready = await run_in_threadpool(store.ping)
        return JSONResponse({"status": "ready" if ready else "store unavailable"}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("aitrail.query_api").joinpath("static/index.html").read_text("utf-8"))

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.api_requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    return app

