"""The read-access log: every request to the query API's `/v1/*`, served or refused, becomes
an `access` record in the trail (who, role, tenant, endpoint, query, ids returned, HTTP status,
the reason of a refusal, when), sealed like any other record.

One middleware, `AccessMiddleware`, does it for every route, so a new endpoint is logged
without doing anything:

- it authenticates the caller once, before routing: `request.state.principal`, or the
  refusal in `request.state.auth_error` (the endpoints' `Reader` dependency raises it);
- an endpoint names the ids it returns with `returned(request, ids)`; the app's error
  handlers put the message of a refusal in `request.state.access_reason`;
- when the response starts (status known, body not yet sent) it writes the entry; when the
  entry cannot be written the response is replaced by a 503 and nothing of the read leaves
  the server: an unlogged read would be a hole in the evidence.

The tenant of an entry is the caller's, from a valid credential. A request refused without
one (no key, an unknown or revoked key, a token that does not verify) has no tenant anyone can
trust (a key id or a token claim that did not verify could name any tenant), so it is logged
under the operator tenant (`operator_tenant`), with the key id it claimed.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aitrail.errors import AitrailError, Unavailable
from aitrail.integrity.system import system_record
from aitrail.schemas.record import AuditRecord, Kind
from aitrail.store.base import Principal

log = logging.getLogger(__name__)

MAX_IDS = 500  # a page holds at most 500 answers; longer lists are cut and counted
MAX_PARAMS = 32  # query parameters kept per entry; values cut at MAX_VALUE characters
MAX_VALUE = 1000
RETRY_AFTER_S = 5
LOGGED_PREFIX = "/v1/"
_CLAIMED_KEY = re.compile(r"\s*bearer\s+atk_([0-9a-f]{12})_", re.IGNORECASE)

Append = Callable[[list[AuditRecord]], Awaitable[None]]


def access_details(
    *, key_id: str | None, role: str | None, endpoint: str, query: dict[str, Any], ids: list[str], status: int,
    reason: str | None = None, **extra: Any,
) -> dict[str, Any]:
    """The `details` of an access record, for the API and the CLI alike (`GET /v1/access-log`
    reads them back as `AccessEntry`s). `extra`: more facts (`claimed_key_id`, `cli`)."""
    details: dict[str, Any] = {
        "key_id": key_id, "role": role, "endpoint": endpoint,
        "query": {k: v for k, v in query.items() if v is not None}, "ids": ids[:MAX_IDS], "count": len(ids),
        "status": status,
    }
    if reason:
        details["reason"] = reason[:MAX_VALUE]
    details.update({k: v for k, v in extra.items() if v is not None})
    return details


def access_record(tenant: str, details: dict[str, Any]) -> AuditRecord:
    entry = system_record(Kind.ACCESS, tenant, details)
    if details.get("role"):
        entry.user_roles = [details["role"]]
    return entry


class AccessLog:
    """Writes access records through `append` (embedded: the bus into the tenant's log;
    `aitrail api`: its own sequencer)."""

    def __init__(self, append: Append) -> None:
        self._append = append

    async def write(self, tenant: str, details: dict[str, Any]) -> None:
        try:
            await self._append([access_record(tenant, details)])
        except AitrailError as exc:
            raise Unavailable(
                f"this read could not be written to the access log, so it was not served: {exc.message}"
            ) from exc

    async def record(
        self, principal: Principal, endpoint: str, query: dict[str, Any], ids: list[str], *, status: int = 200,
        reason: str | None = None,
    ) -> None:
        await self.write(principal.tenant, access_details(
            key_id=principal.key_id, role=str(principal.role), endpoint=endpoint, query=query, ids=ids,
            status=status, reason=reason,
        ))


def returned(request: Request, ids: list[str]) -> None:
    """Name the record, trace or log ids a read hands out, for its access record."""
    request.state.access_ids = list(ids)


def refusal(request: Request, message: str) -> None:
    """The reason a request is refused, for its access record (the app's error handlers)."""
    request.state.access_reason = message


def _query(scope: Scope) -> dict[str, Any]:
    query: dict[str, Any] = {}
    pairs = urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    for name, value in list((scope.get("path_params") or {}).items()) + pairs:
        if len(query) >= MAX_PARAMS and name not in query:
            query["…"] = f"{len(pairs) + len(scope.get('path_params') or {}) - MAX_PARAMS} more parameters not kept"
            break
        value = str(value)
        query[name[:64]] = value if len(value) <= MAX_VALUE else value[:MAX_VALUE] + "…"
    return query


def _endpoint(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or scope["path"][:256]


class AccessMiddleware:
    """See the module docstring. `authenticate(authorization_header)` returns the caller or
    raises; `access_log` None: authenticate only, log nothing (tests of other things)."""

    def __init__(
        self, app: ASGIApp, *, authenticate: Callable[[str | None], Principal], access_log: AccessLog | None,
        operator_tenant: str,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.access_log = access_log
        self.operator_tenant = operator_tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LOGGED_PREFIX):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        authorization = Headers(scope=scope).get("authorization")
        try:
            state["principal"] = await run_in_threadpool(self.authenticate, authorization)
        except AitrailError as exc:
            state["auth_error"] = exc
        if self.access_log is None:
            await self.app(scope, receive, send)
            return

        logged = False
        replaced = False

        async def send_logged(message: Message) -> None:
            nonlocal logged, replaced
            if message["type"] == "http.response.start":
                logged = True
                try:
                    await self._write(scope, state, authorization, message["status"])
                except Unavailable as exc:
                    log.error("read refused: %s", exc.message)
                    replaced = True
                    await JSONResponse(
                        {"error": {"code": exc.code, "message": exc.message}}, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_S)},
                    )(scope, receive, send)
                    return
            if not replaced:
                await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except Exception:
            if not logged:  # an unexpected error: ServerErrorMiddleware answers 500 after us
                state.setdefault("access_reason", "internal error")
                try:
                    await self._write(scope, state, authorization, 500)
                except Unavailable as exc:
                    log.error("could not log a failed request: %s", exc.message)
            raise

    async def _write(self, scope: Scope, state: dict[str, Any], authorization: str | None, status: int) -> None:
        principal: Principal | None = state.get("principal")
        reason = state.get("access_reason") if status >= 400 else None
        ids = state.get("access_ids", []) if status < 400 else []
        endpoint, query = _endpoint(scope), _query(scope)
        if principal is not None:
            tenant = principal.tenant
            details = access_details(key_id=principal.key_id, role=str(principal.role), endpoint=endpoint,
                                     query=query, ids=ids, status=status, reason=reason)
        else:
            claimed = _CLAIMED_KEY.match(authorization or "")
            auth_error = state.get("auth_error")
            tenant = self.operator_tenant
            details = access_details(
                key_id=None, role=None, endpoint=endpoint, query=query, ids=ids, status=status,
                reason=reason or (auth_error.message if auth_error is not None else None),
                claimed_key_id=claimed.group(1) if claimed else None,
            )
        await self.access_log.write(tenant, details)
