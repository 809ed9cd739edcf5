"""The query API over a small seeded SQLite store, for the API-quality tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from fastapi import FastAPI

from aitrail.collector.sequencing import Sequencing
from aitrail.integrity.note import Signer
from aitrail.query_api.access import AccessLog
from aitrail.query_api.app import create_app
from aitrail.query_api.service import EXAMPLE_RECORD_ID, EXAMPLE_TRACE_ID
from aitrail.store.base import Role
from aitrail.store.sqlite import SqliteStore
from tests.factories import completion, iso, retrieval

SIGNER = Signer.generate("aitrail/api-test")


@dataclass
class SeededApi:
    app: FastAPI
    store: SqliteStore
    keys: dict[Role, str]
    trace_id: str
    record_id: str

    def auth(self, role: Role = Role.AUDITOR) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture(scope="module")
def seeded_api(tmp_path_factory):
    """The app the servers build, over a store with two answered questions, sealed into a
    signed log, and one key per role of tenant acme."""
    store = SqliteStore(tmp_path_factory.mktemp("api") / "aitrail.db")
    sequencing = Sequencing(store, SIGNER, "aitrail/api-test", checkpoint_every=4, checkpoint_interval_s=0,
                            default_log="api.test")
    # The ids the OpenAPI examples use, so the examples schemathesis sends find real records.
    trace, span = int(EXAMPLE_TRACE_ID, 16), int("00f067aa0ba902b7", 16)
    first = completion("acme", trace=trace, span=span, question="What is our refund policy?",
                       answer="Refunds within 30 days.", time=iso(24, 7, 30), cost="0.002")
    assert first.record_id == EXAMPLE_RECORD_ID
    sequencing.write(
        [
            first,
            retrieval("acme", trace=trace, span=int("a3ce929d0e0e4736", 16), parent=span),
            completion("acme", trace=2, question="เมื่อไหร่ออฟฟิศเปิด?", answer="เก้าโมง", time=iso(24, 7, 20)),
            completion("globex", trace=3, question="Globex plans?", answer="Not telling.", time=iso(24, 7, 25)),
        ]
    )
    sequencing.tick()

    async def append(records):
        await asyncio.to_thread(sequencing.write, records)
        await asyncio.to_thread(sequencing.tick)

    app = create_app(store, pseudonymise=lambda raw: "u_" + raw, verifier=SIGNER.verifier(),
                     access_log=AccessLog(append))
    keys = {role: store.create_key("acme", role)[0] for role in Role}
    yield SeededApi(app, store, keys, first.trace_id, first.record_id)
    store.close()
