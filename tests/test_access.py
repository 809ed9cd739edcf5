"""Compliance access through the real API on every backend: tenants, roles, document ACLs,
the read-access log, costs and cursors."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from aitrail.collector.sequencing import Sequencing
from aitrail.integrity.note import Signer
from aitrail.query_api.access import AccessLog
from aitrail.query_api.app import create_app
from aitrail.schemas.record import AuditRecord, record_id_for
from aitrail.store.base import Role
from tests.factories import completion, iso, retrieval

SIGNER = Signer.generate("aitrail/test")


def feedback(tenant: str, trace: int, score: float) -> AuditRecord:
    trace_id = f"{trace:032x}"
    return AuditRecord(record_id=record_id_for(tenant, trace_id, f"{99:016x}", "feedback"), kind="feedback",
                       tenant=tenant, trace_id=trace_id, span_id=f"{99:016x}", start_time=iso(24, 7, 40), score=score)


@pytest.fixture
def api(store):
    sequencing = Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=4, checkpoint_interval_s=0,
                            default_log="access.test")
    sequencing.write(
        [
            completion("acme", trace=1, question="What is the bonus policy?", answer="See the handbook.",
                       time=iso(24, 7, 30), cost="0.002"),
            retrieval("acme", trace=1, span=2, parent=1, documents=[
                {"doc_id": "handbook", "acl_tags": ["public"], "score": 0.9, "rank": 1},
                {"doc_id": "board-minutes-q3", "acl_tags": ["board-only"], "score": 0.7, "rank": 2},
            ]),
            completion("acme", trace=2, question="When does the office open?", answer="At nine.",
                       time=iso(24, 7, 20), cost="0.001"),
            feedback("acme", 2, 1.0),
            completion("globex", trace=3, question="Globex secret plans?", answer="Not telling.", time=iso(24, 7, 25)),
        ]
    )
    sequencing.tick()

    async def append(records):
        await asyncio.to_thread(sequencing.write, records)
        await asyncio.to_thread(sequencing.tick)

    client = TestClient(create_app(store, pseudonymise=lambda raw: "u_" + raw, verifier=SIGNER.verifier(),
                                   access_log=AccessLog(append)))
    keys = {(t, r): store.create_key(t, r)[0] for t in ("acme", "globex") for r in Role}

    def call(path, tenant="acme", role=Role.AUDITOR, **params):
        return client.get(path, params=params, headers={"Authorization": f"Bearer {keys[tenant, role]}"})

    return call


def trace_id(n: int) -> str:
    return f"{n:032x}"


def test_every_endpoint_keeps_tenants_apart(api, store):
    own = api("/v1/traces/" + trace_id(1)).json()
    record_id = own["records"][0]["record_id"]
    for path in (f"/v1/traces/{trace_id(1)}", f"/v1/records/{record_id}", f"/v1/records/{record_id}/proof"):
        other, missing = api(path, tenant="globex"), api(path.replace(trace_id(1), "f" * 32).replace(record_id, "f" * 32))
        assert other.status_code == missing.status_code == 404, path
        assert other.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert [a["trace_id"] for a in api("/v1/answers", tenant="globex").json()["data"]] == [trace_id(3)]
    assert api("/v1/answers", tenant="globex", q="bonus").json()["count"] == 0
    assert api("/v1/answers", tenant="globex", exposed_to="public").json()["count"] == 0
    globex_costs = api("/v1/costs", tenant="globex", group_by="tenant").json()
    assert [r["group"]["tenant"] for r in globex_costs["data"]] == ["globex"]
    assert globex_costs["summary"]["traces"] == 1
    globex_log = api("/v1/access-log", tenant="globex").json()["data"]
    assert globex_log and all(e["ids"] != [record_id] for e in globex_log)
    assert all(e["key_id"] != "" for e in globex_log)


def test_roles(api):
    assert api("/v1/answers", role=Role.INGEST).status_code == 403
    denied = api("/v1/access-log", role=Role.ANALYST)
    assert denied.status_code == 403 and "needs role admin or auditor" in denied.json()["error"]["message"]
    assert api("/v1/access-log", role=Role.ADMIN).status_code == 200
    searched = api("/v1/answers", role=Role.ANALYST, q="bonus")
    assert searched.status_code == 403 and "role 'analyst'" in searched.json()["error"]["message"]
    (analyst,) = [a for a in api("/v1/answers", role=Role.ANALYST).json()["data"] if a["trace_id"] == trace_id(1)]
    assert (analyst["question"], analyst["answer"], analyst["cost"]["amount"]) == (None, None, "0.0020000000")
    record = api(f"/v1/traces/{trace_id(1)}", role=Role.ANALYST).json()["records"]
    assert all("question" not in r and "answer" not in r for r in record)
    assert all("snippet" not in d for r in record for d in r.get("documents", []))
    assert api("/v1/whoami", role=Role.ANALYST).json() == {
        "tenant": "acme", "role": "analyst", "key_id": api("/v1/whoami", role=Role.ANALYST).json()["key_id"],
    }


def test_every_read_is_in_the_access_log(api, store):
    found = api("/v1/answers", q="bonus").json()
    api(f"/v1/traces/{trace_id(1)}")
    entries = api("/v1/access-log").json()["data"]
    by_endpoint = {e["endpoint"]: e for e in reversed(entries)}
    answers = by_endpoint["/v1/answers"]
    assert answers["query"]["q"] == "bonus" and answers["ids"] == [a["record_id"] for a in found["data"]]
    assert answers["role"] == "auditor" and answers["count"] == 1
    assert len(by_endpoint["/v1/traces/{trace_id}"]["ids"]) == 2
    # reading the log is a read too
    assert api("/v1/access-log").json()["data"][0]["endpoint"] == "/v1/access-log"
    # and the entries are sealed into the API's own Merkle log
    sealed = [r for r in store.records_in_log("acme/access.test") if r.kind == "access"]
    assert sealed and all(r.leaf_hash for r in sealed)


def test_document_acls_through_the_api(api):
    contractor = "public,contractor"
    assert [a["trace_id"] for a in api("/v1/answers", exposed_to=contractor).json()["data"]] == [trace_id(1)]
    assert [a["trace_id"] for a in api("/v1/answers", visible_to=contractor).json()["data"]] == [trace_id(2)]
    replay = api(f"/v1/traces/{trace_id(1)}", visible_to=contractor).json()
    (lookup,) = [r for r in replay["records"] if r["kind"] == "retrieval"]
    assert [d["doc_id"] for d in lookup["documents"]] == ["handbook"] and lookup["documents_hidden"] == 1


def test_costs_per_trace_and_per_useful_action(api):
    body = api("/v1/costs", group_by="day,model").json()
    assert body["total"] == {"amount": "0.0030000000", "currency": "USD"}
    assert [(r["group"]["day"], r["calls"]) for r in body["data"]] == [("2026-11-24", 2)]
    assert body["summary"]["traces"] == 2 and body["summary"]["useful_traces"] == 1
    assert body["summary"]["cost_per_trace"]["amount"] == "0.0015000000"
    assert body["summary"]["cost_per_useful_action"]["amount"] == "0.0030000000"


def test_cursor_pagination(api):
    first = api("/v1/answers", limit=1).json()
    assert first["count"] == 2 and first["next_cursor"]
    second = api("/v1/answers", limit=1, cursor=first["next_cursor"]).json()
    assert [a["trace_id"] for a in first["data"] + second["data"]] == [trace_id(1), trace_id(2)]
    assert api("/v1/answers", limit=1, cursor=second["next_cursor"]).json()["data"] == []
    bad = api("/v1/answers", cursor="not-a-cursor")
    assert bad.status_code == 400 and "cursor" in bad.json()["error"]["message"]
