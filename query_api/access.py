"""The read-access log: every read of audit data becomes an `access` record in the trail
(who, role, tenant, endpoint, query, ids returned, when), sealed like any other record.

A read whose log entry cannot be made safe is not served (503): an unlogged read would be
a hole in the evidence.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aitrail.errors import AitrailError, Unavailable
from aitrail.integrity.system import system_record
from aitrail.schemas.record import AuditRecord, Kind
from aitrail.store.base import Principal

MAX_IDS = 500  # a page holds at most 500 answers; longer lists are cut and counted

Append = Callable[[list[AuditRecord]], Awaitable[None]]


class AccessLog:
    def __init__(self, append: Append) -> None:
        self._append = append

    async def record(self, principal: Principal, endpoint: str, query: dict[str, Any], ids: list[str]) -> None:
        details = {
            "key_id": principal.key_id, "role": str(principal.role), "endpoint": endpoint,
            "query": {k: v for k, v in query.items() if v is not None}, "ids": ids[:MAX_IDS], "count": len(ids),
        }
        entry = system_record(Kind.ACCESS, principal.tenant, details)
        entry.user_roles = [str(principal.role)]
        try:
            await self._append([entry])
        except AitrailError as exc:
            raise Unavailable(f"this read could not be written to the access log, so it was not served: {exc.message}")
