"""Two tenants and an operator over one SQLite store, with logs per tenant, for the access
tests (tests/api/test_roles_routes.py, tests/api/test_access_middleware.py).

Every content field of acme's records holds a value marked `SECRET`, so a test can check that
no content reaches a role that may not read it by looking for the marker in the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from aitrail.integrity.leaf import CONTENT_FIELDS
from aitrail.integrity.note import Signer
from aitrail.integrity.sequencer import LogSequencer, new_log
from aitrail.metrics import Metrics
from aitrail.query_api.access import AccessLog, access_details, access_record
from aitrail.query_api.app import create_app
from aitrail.schemas.record import AuditRecord
from aitrail.store.base import Role
from aitrail.store.sqlite import SqliteStore
from aitrail.tenancy import tenant_log_id
from tests.factories import completion, iso, retrieval

SIGNER = Signer.generate("aitrail/access-test")
SECRET = "SECRET"
OPERATOR = "ops"
LEGACY_LOG = "legacy.0"  # a log from before logs were per tenant: it has no tenant


class _NoStore:
    """Listing the routes reads nothing."""

    def authenticate(self, key):
        raise AssertionError("listing the routes must not authenticate")

    def __getattr__(self, name):
        raise AssertionError(f"listing the routes must not use the store ({name})")


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves, HEAD aside."""
    return sorted((method, route.path) for route in app.routes for method in (getattr(route, "methods", None) or ())
                  if method != "HEAD")


ROUTES = routes(create_app(_NoStore(), pseudonymise=str))


def secret_content() -> dict[str, Any]:
    """A value for every content field of the leaf commitment, each marked SECRET."""
    values: dict[str, Any] = {}
    for name in CONTENT_FIELDS:
        annotation = str(AuditRecord.model_fields[name].annotation)
        if name in ("input_messages", "output_messages"):
            values[name] = [{"role": "user", "content": f"{SECRET} {name}"}]
        elif annotation.startswith("dict"):
            values[name] = {"note": f"{SECRET} {name}"}
        else:
            values[name] = f"{SECRET} {name}"
    return values


class TenantLogs:
    """Seals records into the log `<base>` of each one's tenant (or into a given log id),
    one sequencer per log, a checkpoint after every leaf."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._sequencers: dict[str, LogSequencer] = {}
        self._lock = threading.Lock()

    def seal(self, records: list[AuditRecord], *, base: str = "local", log_id: str | None = None) -> None:
        with self._lock:
            by_log: dict[str, list[AuditRecord]] = {}
            for record in records:
                by_log.setdefault(log_id or tenant_log_id(record.tenant, base), []).append(record)
            for target, batch in by_log.items():
                sequencer = self._sequencers.get(target)
                if sequencer is None:
                    state = self.store.log_state(target) or new_log(target, f"{SIGNER.name}/{target}")
                    sequencer = self._sequencers[target] = LogSequencer(
                        state, SIGNER, checkpoint_every=1, checkpoint_interval_s=0
                    )
                plan = sequencer.plan(batch, lambda r: b"k" * 32)
                self.store.write(plan.records, [plan.update])
                sequencer.commit(plan)


@dataclass
class Tenants:
    app: FastAPI
    client: TestClient
    store: SqliteStore
    metrics: Metrics
    keys: dict[str, str]  # caller name -> Authorization header value
    trace_id: str  # acme's trace with every content field
    record_id: str  # its completion
    access_id: str  # an access record of acme whose query holds words someone searched for
    globex_trace_id: str
    logs: TenantLogs
    failing: dict[str, bool] = field(default_factory=lambda: {"access": False})

    def get(self, path: str, caller: str | None = "auditor", **params: Any):
        headers = {"Authorization": self.keys[caller]} if caller and self.keys.get(caller) else {}
        return self.client.get(path, params=params, headers=headers)


def build(tmp_path) -> Tenants:
    store = SqliteStore(tmp_path / "aitrail.db")
    logs = TenantLogs(store)
    trace = 0x51
    secret = completion("acme", trace=trace, span=1, time=iso(24, 7, 30), cost="0.002",
                        **{k: v for k, v in secret_content().items()})
    lookup = retrieval("acme", trace=trace, span=2, parent=1, query_text=f"{SECRET} query_text", documents=[
        {"doc_id": "handbook", "acl_tags": ["public"], "score": 0.9, "rank": 1, "snippet": f"{SECRET} snippet",
         "content_sha256": hashlib.sha256(f"{SECRET} snippet".encode()).hexdigest()},
    ])
    other = completion("acme", trace=0x52, question="When does the office open?", answer="At nine.",
                       time=iso(24, 7, 20))
    globex = completion("globex", trace=0x53, question="Globex plans?", answer="Not telling.", time=iso(24, 7, 25))
    searched = access_record("acme", access_details(
        key_id="47cb389ebd0f", role="auditor", endpoint="/v1/answers", query={"q": f"{SECRET} salary"},
        ids=[secret.record_id], status=200,
    ))
    logs.seal([secret, lookup, other, globex])
    logs.seal([searched], base="access.test")
    logs.seal([completion("acme", trace=0x54, time=iso(24, 6, 0))], log_id=LEGACY_LOG)

    failing = {"access": False}

    async def append(records: list[AuditRecord]) -> None:
        if failing["access"]:
            from aitrail.errors import Unavailable

            raise Unavailable("store unavailable")
        await asyncio.to_thread(logs.seal, records, base="access.test")

    metrics = Metrics()
    metrics.received("traces", "acme", 3, 0)
    metrics.received("traces", "globex", 5, 0)
    app = create_app(store, pseudonymise=lambda raw: "u_" + raw, metrics=metrics, verifier=SIGNER.verifier(),
                     access_log=AccessLog(append), operator_tenant=OPERATOR)
    bearer = {f"{role}": store.create_key("acme", role)[0] for role in Role}
    keys = {
        **{name: f"Bearer {key}" for name, key in bearer.items()},
        "operator": f"Bearer {store.create_key(OPERATOR, Role.ADMIN)[0]}",
        "other_tenant": f"Bearer {store.create_key('globex', Role.AUDITOR)[0]}",
        "other_analyst": f"Bearer {store.create_key('globex', Role.ANALYST)[0]}",
        "other_admin": f"Bearer {store.create_key('globex', Role.ADMIN)[0]}",
        "bad_key": "Bearer atk_0123456789ab_not-a-key-anyone-was-given",
        "not_bearer": "Basic YWxpY2U6c2VjcmV0",
    }
    return Tenants(app, TestClient(app, raise_server_exceptions=False), store, metrics, keys, secret.trace_id,
                   secret.record_id, searched.record_id, globex.trace_id, logs, failing)
