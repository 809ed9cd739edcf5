"""The query API (FastAPI): answers, replay, records, costs, health and the web page.

Every request to `/v1/*` is authenticated with `Authorization: Bearer <key>` and logged, served
or refused, by one middleware (`access.AccessMiddleware`); the tenant comes from the key and is
part of every store query. Another tenant's id answers 404 exactly as a missing one does.
What each role sees on each endpoint: docs/access.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aitrail import __version__
from aitrail.auth import Authenticator, require
from aitrail.errors import AitrailError, Forbidden
from aitrail.settings import OidcSettings
from aitrail.metrics import CONTENT_TYPE_LATEST, Metrics, require_operator
from aitrail.store.base import COST_GROUPS, Principal, Role, Store

from aitrail.integrity.note import Verifier

from .access import AccessLog, AccessMiddleware, refusal, returned
from .service import (
    EXAMPLE_RECORD_ID, EXAMPLE_TRACE_ID, AccessLogOut, AnswersOut, CheckpointsOut, CostsOut, ErrorResponse, Health,
    ProofOut, QueryService, Ready, RecordView, TraceOut, WhoAmI, encode_cursor,
)

log = logging.getLogger(__name__)

READERS = (Role.AUDITOR, Role.ANALYST, Role.ADMIN)
RETRY_AFTER_S = 5

# Declared so OpenAPI tools send `Authorization: Bearer …`; `_reader` does the checking.
BEARER = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="aitrail API key (atk_…) or OIDC token",
    description="An aitrail API key (`aitrail keys create --tenant T --role auditor`, starts with `atk_`) or, when "
                "auth.oidc is configured, an OIDC access token. The tenant and role come from it.",
    auto_error=False,
)

_ERROR_TEXT = {
    400: ("Bad request: a parameter that cannot be read (time, zone, window, cursor, limit, group_by…).",
          "bad_request", ("cannot read the time 'next blursday'; use ISO 8601 (2026-11-24T14:30) or words such as "
                          "'last Tuesday 14:30'")),
    401: ("No valid key or token. Carries `WWW-Authenticate: Bearer`.",
          "unauthorized", "missing credentials: send 'Authorization: Bearer <key or token>'"),
    403: ("The key's role may not do this.",
          "forbidden", "role 'ingest' cannot read audit data; needs role auditor, analyst or admin"),
    404: ("Not found: missing, or another tenant's (the two are indistinguishable).",
          "not_found", f"no trace {EXAMPLE_TRACE_ID}"),
    503: ("A dependency (the store, the access log) is unavailable: retry after `Retry-After` seconds.",
          "unavailable", "this read could not be written to the access log, so it was not served: store unavailable"),
}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "The scheme to authenticate with.", "required": True,
                               "schema": {"type": "string"}, "example": 'Bearer realm="aitrail"'}},
    503: {"Retry-After": {"description": "Seconds to wait before retrying.", "required": True,
                          "schema": {"type": "integer", "minimum": 0}, "example": RETRY_AFTER_S}},
}


def errors(*statuses: int, **messages: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all with the `ErrorResponse` body.
    `messages` (`e404=...`) replace the example message of one status."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, code, message = _ERROR_TEXT[status]
        out[status] = {
            "model": ErrorResponse,
            "description": description,
            "content": {"application/json": {"example": {"error": {"code": code,
                                                                    "message": messages.get(f"e{status}", message)}}}},
        }
        if status in _ERROR_HEADERS:
            out[status]["headers"] = _ERROR_HEADERS[status]
    return out


def ok(example: Any, description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {"application/json": {"example": example}}}}


def _example(model: type) -> Any:
    return model.model_config["json_schema_extra"]["examples"][0]


def error_json(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _reader(request: Request, _: Annotated[Any, Security(BEARER)] = None) -> Principal:
    """The caller, from `Authorization: Bearer <key or token>` as the access middleware
    authenticated it; only roles that may read."""
    error = getattr(request.state, "auth_error", None)
    if error is not None:
        raise error
    principal = getattr(request.state, "principal", None)
    if principal is None:  # a route outside /v1 (the middleware authenticates /v1 only)
        principal = request.app.state.authenticator.principal(request.headers.get("authorization"))
    if principal.role not in READERS:
        raise Forbidden(f"role '{principal.role}' cannot read audit data; needs role auditor, analyst or admin")
    return principal


Reader = Annotated[Principal, Depends(_reader)]
READ_ERRORS = (401, 403, 503)

# Parameters shared by several endpoints.
_TIME_EXAMPLES = {
    "words": {"summary": "Plain language, read in `tz`", "value": "last Tuesday 14:30"},
    "iso": {"summary": "ISO 8601 with offset", "value": "2026-11-24T14:30:00+07:00"},
    "thai": {"summary": "Thai clock words", "value": "เมื่อวาน 9 โมง"},
}
TZ = Annotated[str | None, Query(
    description="IANA time zone the times are read in; default UTC.", max_length=64,
    openapi_examples={"bangkok": {"summary": "Bangkok", "value": "Asia/Bangkok"},
                      "utc": {"summary": "UTC", "value": "UTC"}})]
FROM = Annotated[str | None, Query(
    alias="from", description="Start of the range (inclusive): ISO 8601 or plain language, read in `tz`.",
    max_length=200, openapi_examples={"words": {"summary": "Plain language", "value": "1 November 2026"},
                                      "iso": {"summary": "ISO 8601", "value": "2026-11-01T00:00:00Z"}})]
TO = Annotated[str | None, Query(
    description="End of the range (inclusive): ISO 8601 or plain language, read in `tz`.", max_length=200,
    openapi_examples={"words": {"summary": "Plain language", "value": "yesterday 18:00"},
                      "iso": {"summary": "ISO 8601", "value": "2026-11-30T23:59:59Z"}})]
CURSOR = Annotated[str | None, Query(
    description="`next_cursor` of the previous page; absent for the first page.", max_length=1000,
    openapi_examples={"next": {"summary": "The page after the refund answer",
                               "value": encode_cursor("2026-11-24T07:30:00.000000000Z", EXAMPLE_RECORD_ID)}})]
ACL_TAGS: dict[str, Any] = {
    "max_length": 1000,
    "openapi_examples": {"contractor": {"summary": "A contractor's tags", "value": "public,contractor"}},
}
RECORD_ID = Annotated[str, Path(
    description="`record_id` of an answer, a trace record or an access entry (32 hex digits).", max_length=256,
    openapi_examples={"completion": {"summary": "A completion", "value": EXAMPLE_RECORD_ID}})]


def create_app(
    store: Store,
    *,
    pseudonymise: Callable[[str], str],
    metrics: Metrics | None = None,
    verifier: Verifier | None = None,
    oidc: OidcSettings | None = None,
    access_log: AccessLog | None = None,
    operator_tenant: str = "default",
) -> FastAPI:
    """`verifier` (the checkpoint signing key's public half) checks proofs for replays;
    `access_log` records every request to `/v1/*` (the servers always pass one; without it,
    reads are not logged — for tests of other things only); `operator_tenant`
    (settings.operator_tenant): its admins read `/metrics`, and requests refused without a
    valid credential are logged under it."""
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
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.retriable else {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="aitrail"'
        refusal(request, exc.message)
        return error_json(exc.status, exc.code, exc.message, headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()
        )
        refusal(request, problems)
        return error_json(400, "bad_request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; the API is described at /openapi.json"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed here; use {(exc.headers or {}).get('Allow', 'GET')}"
        refusal(request, message)
        return error_json(exc.status_code, code, message, exc.headers)  # 405 carries `Allow`

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_json(500, "internal", "internal error; the server log has the details")


    @app.get(
        "/v1/whoami", response_model=WhoAmI, tags=["identity"], summary="Who am I",
        responses=ok(_example(WhoAmI), "The caller's tenant, role and key id.") | errors(*READ_ERRORS),
    )
    async def whoami(principal: Reader) -> WhoAmI:
        """The caller as aitrail sees it: tenant and role come from the key or token."""
        return WhoAmI(tenant=principal.tenant, role=str(principal.role), key_id=principal.key_id)

    @app.get(
        "/v1/answers", response_model=AnswersOut, tags=["answers"], summary="Find past answers",
        responses=ok(_example(AnswersOut), "Matching completions, newest first, and the count of all matches.")
        | errors(400, *READ_ERRORS),
    )
    async def answers(
        request: Request,
        principal: Reader,
        q: Annotated[str | None, Query(
            description="Words of the question or answer (full text, any language).", max_length=1000,
            openapi_examples={"refund": {"summary": "Words of the question", "value": "refund policy"}})] = None,
        at: Annotated[str | None, Query(
            description="When the answer was given: ISO 8601 or plain language, read in `tz`. With `window`, "
                        "selects [at - window, at + window].", max_length=200, openapi_examples=_TIME_EXAMPLES)] = None,
        tz: TZ = None,
        window: Annotated[str | None, Query(
            description="Half-width of the range around `at` (needs `at`): a number and a unit s, m, h, d or w; "
                        "default 15m, at most 366 days.", max_length=32,
            openapi_examples={"quarter": {"summary": "15 minutes", "value": "15m"},
                              "day": {"summary": "One day", "value": "1d"}})] = None,
        user: Annotated[str | None, Query(
            description="User id as the service knows it (pseudonymised here), or its pseudonym (`u_…`).",
            max_length=256, openapi_examples={"pseudonym": {"summary": "A pseudonym", "value": "u_3f9a1c2e7b5d4a60"},
                                               "raw": {"summary": "The service's own user id",
                                                       "value": "alice@example.com"}})] = None,
        service: Annotated[str | None, Query(
            description="service.name of the AI application.", max_length=256,
            openapi_examples={"bot": {"summary": "A service", "value": "support-bot"}})] = None,
        model: Annotated[str | None, Query(
            description="Requested or responding model.", max_length=256,
            openapi_examples={"mini": {"summary": "A model", "value": "gpt-4o-mini"}})] = None,
        limit: Annotated[int, Query(
            ge=1, le=500, description="Answers per page (1–500).",
            openapi_examples={"page": {"summary": "A page of 20", "value": 20}})] = 20,
        cursor: CURSOR = None,
        visible_to: Annotated[str | None, Query(
            description="ACL tags a principal holds (comma-separated): only answers whose retrieved documents all "
                        "admit them — what that principal could have been shown.", **ACL_TAGS)] = None,
        exposed_to: Annotated[str | None, Query(
            description="ACL tags a principal holds (comma-separated): only answers that used a document NOT "
                        "admitting them.", **ACL_TAGS)] = None,
    ) -> AnswersOut:
        """Past answers (completions) matching words, a moment, a user, a service or a model, newest first.

        The question this API exists for: *what did our assistant answer last Tuesday at 14:30 (Bangkok
        time) to "what is our refund policy"?* → `q=refund policy&at=last Tuesday 14:30&tz=Asia/Bangkok`.
        The analyst role sees everything but the question and answer text, and may not search
        words (`q`: 403)."""
        params = dict(q=q, at=at, tz=tz, window=window, user=user, service=service, model=model, limit=limit,
                      cursor=cursor, visible_to=visible_to, exposed_to=exposed_to)
        result = await run_in_threadpool(queries.answers, principal, **params)
        returned(request, [a.record_id for a in result.data])
        return result

    @app.get(
        "/v1/traces/{trace_id}", response_model=TraceOut, tags=["replay"], summary="Replay one answer",
        responses=ok(_example(TraceOut), "Every record of the trace in causal order, with integrity status.")
        | errors(400, 404, *READ_ERRORS),
    )
    async def trace(
        request: Request,
        principal: Reader,
        trace_id: Annotated[str, Path(
            description="W3C trace id (32 hex digits; any case) from an answer's `trace_id`.", max_length=256,
            openapi_examples={"refund": {"summary": "The refund answer", "value": EXAMPLE_TRACE_ID}})],
        visible_to: Annotated[str | None, Query(
            description="ACL tags a principal holds (comma-separated): show only the documents that principal may "
                        "see; the others are counted in `documents_hidden`.", **ACL_TAGS)] = None,
    ) -> TraceOut:
        """The full reconstruction of one answer: retrievals with their documents, the prompt, the
        completion, tool calls, feedback and cost, each with the result of checking it against the
        signed Merkle log."""
        result = await run_in_threadpool(queries.trace, principal, trace_id, visible_to=visible_to)
        returned(request, [r["record_id"] for r in result.records])
        return result

    @app.get(
        "/v1/records/{record_id}", response_model=RecordView, response_model_exclude_unset=True, tags=["records"],
        summary="One record",
        responses=ok(_example(RecordView), "The record; null fields are left out.")
        | errors(400, 404, *READ_ERRORS, e404=f"no record {EXAMPLE_RECORD_ID}"),
    )
    async def record(request: Request, principal: Reader, record_id: RECORD_ID) -> dict[str, Any]:
        """One `AuditRecord` as stored (schemas/audit-record.v1.schema.json), null fields left out.
        For the analyst role the content fields are left out and named in `redacted`, and access
        records are refused (403), as the access log is."""
        result = await run_in_threadpool(queries.record, principal, record_id)
        returned(request, [result["record_id"]])
        return result

    @app.get(
        "/v1/records/{record_id}/proof", response_model=ProofOut, tags=["integrity"], summary="Inclusion proof",
        responses=ok(_example(ProofOut), "The proof, the checkpoint it is against and the server's own check.")
        | errors(400, 404, *READ_ERRORS, e404=f"no record {EXAMPLE_RECORD_ID}"),
    )
    async def proof(request: Request, principal: Reader, record_id: RECORD_ID) -> ProofOut:
        """Inclusion proof of the record in its Merkle log, against the newest signed checkpoint.
        Check it offline with the log's public key: `aitrail verify --record ID`. 503 while the
        record is not yet covered by a checkpoint (one follows within seconds)."""
        result = await run_in_threadpool(queries.proof, principal, record_id)
        returned(request, [result.record_id])
        return result

    @app.get(
        "/v1/checkpoints/latest", response_model=CheckpointsOut, tags=["integrity"], summary="Latest checkpoints",
        responses=ok(_example(CheckpointsOut), "The newest signed checkpoint of each log.")
        | errors(400, 404, *READ_ERRORS, e404="no checkpoint for log acme/aitrail.spans.v1.7"),
    )
    async def checkpoints(
        request: Request,
        principal: Reader,
        log: Annotated[str | None, Query(
            description="One of the caller's tenant's log ids; default every log of the tenant.", max_length=256,
            openapi_examples={"log": {"summary": "One log", "value": "acme/aitrail.spans.v1.0"}})] = None,
    ) -> CheckpointsOut:
        """Newest signed checkpoint (C2SP signed note) of each of the caller's tenant's logs: size,
        root hash, signature. Another tenant's log answers 404 exactly as a missing one; logs
        written before logs were per tenant belong to no tenant and are shown to nobody. A stored
        checkpoint is served only when its note opens with a trusted key, its origin is that key's
        name + `/` + the log id, and its size and root are the note's; otherwise the log is left
        out of `data` and named, with the reason, in `problems` (still 200)."""
        result = await run_in_threadpool(queries.latest_checkpoints, principal, log)
        returned(request, [cp.log_id for cp in result.data])
        return result

    @app.get(
        "/v1/costs", response_model=CostsOut, tags=["costs"], summary="Cost and tokens",
        responses=ok(_example(CostsOut), "Cost and tokens per group, the total, and cost per useful action.")
        | errors(400, *READ_ERRORS, e400="cannot group by colour; choose from " + ", ".join(COST_GROUPS)),
    )
    async def costs(
        principal: Reader,
        from_: FROM = None,
        to: TO = None,
        tz: TZ = None,
        group_by: Annotated[str, Query(
            description=f"Comma-separated dimensions: {', '.join(COST_GROUPS)}.", max_length=200,
            openapi_examples={"model": {"summary": "Per model", "value": "model"},
                              "service_model": {"summary": "Per service and model", "value": "service,model"}})]
        = "model",
    ) -> CostsOut:
        """Cost and tokens of completions in a time range, grouped; plus cost per trace and per useful
        action (a trace with positive feedback)."""
        return await run_in_threadpool(queries.costs, principal, start=from_, end=to, tz=tz, group_by=group_by)

    @app.get(
        "/v1/access-log", response_model=AccessLogOut, tags=["access"], summary="Who read what",
        responses=ok(_example(AccessLogOut), "Reads of audit data, newest first.")
        | errors(400, *READ_ERRORS, e403="role 'analyst' may not do this; it needs role admin or auditor"),
    )
    async def access(
        request: Request,
        principal: Reader,
        from_: FROM = None,
        to: TO = None,
        tz: TZ = None,
        limit: Annotated[int, Query(
            ge=1, le=500, description="Entries per page (1–500).",
            openapi_examples={"page": {"summary": "A page of 50", "value": 50}})] = 50,
        cursor: CURSOR = None,
    ) -> AccessLogOut:
        """Who read what, when (admins and auditors). Reading the log is itself logged."""
        require(principal, Role.ADMIN, Role.AUDITOR)
        result = await run_in_threadpool(
            queries.access_log, principal, start=from_, end=to, tz=tz, limit=limit, cursor=cursor
        )
        returned(request, [e.record_id for e in result.data])
        return result

    @app.get(
        "/healthz", response_model=Health, tags=["operations"], summary="Liveness",
        responses=ok(_example(Health), "The process answers."),
    )
    async def healthz() -> Health:
        """Liveness: the process answers. No credentials needed."""
        return Health(status="ok", version=__version__)

    @app.get(
        "/readyz", response_model=Ready, tags=["operations"], summary="Readiness",
        responses=ok(_example(Ready), "The store answers.")
        | errors(503, e503="store unavailable"),
    )
    async def readyz() -> Ready | JSONResponse:
        """Readiness: the store answers. No credentials needed."""
        if await run_in_threadpool(store.ping):
            return Ready(status="ready")
        return error_json(503, "unavailable", "store unavailable", {"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        """Prometheus metrics, for the operators only: an admin key of the operator tenant."""
        await run_in_threadpool(
            require_operator, app.state.authenticator.principal, operator_tenant, request.headers.get("authorization")
        )
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("aitrail.query_api").joinpath("static/index.html").read_text("utf-8"))

    document = app.openapi

    def openapi() -> dict[str, Any]:
        # Invalid parameters answer 400 with ErrorResponse (see _validation_error), never
        # FastAPI's default 422: take the 422 FastAPI documents out again.
        if app.openapi_schema is None:
            schema = document()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # Inside the request counter, so that a read refused for want of its access record
    # (503) is counted as such.
    app.add_middleware(AccessMiddleware, authenticate=app.state.authenticator.principal, access_log=access_log,
                       operator_tenant=operator_tenant)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.api_requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    return app

