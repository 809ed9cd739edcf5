"""Every request to /v1 leaves an access record, served or refused, written by one middleware
before the answer leaves: generated from the app's routes, so a new endpoint is covered."""

from __future__ import annotations

import pytest

from aitrail.store.base import RecordQuery
from aitrail.tenancy import tenant_log_id
from tests.api.tenants import OPERATOR, ROUTES, SECRET, build

V1 = [template for method, template in ROUTES if template.startswith("/v1/")]


@pytest.fixture
def tenants(tmp_path):
    built = build(tmp_path)
    yield built
    built.store.close()


def _entries(tenants, tenant: str) -> list:
    return list(tenants.store.records_in_log(tenant_log_id(tenant, "access.test")))


def _one_more(tenants, tenant: str, request) -> tuple:
    """Send `request()`, return (response, the one access record it added to `tenant`'s log)."""
    before = {t: len(_entries(tenants, t)) for t in ("acme", "globex", OPERATOR)}
    response = request()
    after = {t: _entries(tenants, t) for t in before}
    added = {t: len(after[t]) - before[t] for t in before}
    assert added == {t: int(t == tenant) for t in before}, (added, response.text[:200])
    entry = after[tenant][-1]
    assert entry.kind == "access" and entry.tenant == tenant and entry.leaf_hash
    return response, entry.details


def _path(template: str, tenants, trace_id: str | None = None, record_id: str | None = None) -> str:
    return (template.replace("{trace_id}", trace_id or tenants.trace_id)
            .replace("{record_id}", record_id or tenants.record_id))


@pytest.mark.parametrize("template", V1)
def test_a_served_read_is_logged_with_what_it_returned(tenants, template):
    caller = "admin"
    response, details = _one_more(tenants, "acme", lambda: tenants.get(_path(template, tenants), caller))
    assert response.status_code == 200
    assert details["status"] == 200 and details["endpoint"] == template and details["role"] == "admin"
    assert details["key_id"] and "reason" not in details
    body = response.json()
    if "{record_id}" in template:
        assert details["ids"] == [tenants.record_id] and details["query"] == {"record_id": tenants.record_id}
    elif template == "/v1/traces/{trace_id}":
        assert details["ids"] == [r["record_id"] for r in body["records"]] and len(details["ids"]) == 2
    elif template == "/v1/checkpoints/latest":  # checkpoint reads are reads too: the logs shown
        assert details["ids"] == [c["log_id"] for c in body["data"]] and details["ids"]
    elif template in ("/v1/answers", "/v1/access-log"):
        assert details["ids"] == [a["record_id"] for a in body["data"]]
    assert details["count"] == len(details["ids"])


@pytest.mark.parametrize("template", V1)
def test_a_request_without_a_valid_credential_is_logged_under_the_operator_tenant(tenants, template):
    for caller, reason, claimed in (("none", "missing credentials", None),
                                    ("bad_key", "unknown or revoked key", "0123456789ab"),
                                    ("not_bearer", "Bearer", None)):
        response, details = _one_more(tenants, OPERATOR, lambda: tenants.get(_path(template, tenants), caller))
        assert response.status_code == 401
        assert details["status"] == 401 and reason in details["reason"] and details["endpoint"] == template
        assert details.get("claimed_key_id") == claimed and details["key_id"] is None and details["role"] is None
        assert "not-a-key" not in str(details)  # never the secret part of what was presented


@pytest.mark.parametrize("template", V1)
def test_a_refused_role_is_logged_under_its_own_tenant(tenants, template):
    response, details = _one_more(tenants, "acme", lambda: tenants.get(_path(template, tenants), "ingest"))
    assert response.status_code == details["status"] == 403
    assert details["role"] == "ingest" and "role 'ingest'" in details["reason"] and details["ids"] == []


def test_probes_of_another_tenants_ids_are_logged_under_the_prober(tenants):
    for template in [t for t in V1 if "{" in t]:
        response, details = _one_more(tenants, "globex", lambda: tenants.get(_path(template, tenants), "other_tenant"))
        assert response.status_code == details["status"] == 404 and details["ids"] == []
        assert details["reason"].startswith("no ") and SECRET not in str(details)


def test_bad_requests_denied_reads_and_unknown_endpoints_are_logged(tenants):
    response, details = _one_more(tenants, "acme", lambda: tenants.get("/v1/answers", at="next blursday"))
    assert response.status_code == details["status"] == 400 and "blursday" in details["reason"]
    assert details["query"] == {"at": "next blursday"}
    response, details = _one_more(tenants, "acme", lambda: tenants.get("/v1/access-log", "analyst"))
    assert response.status_code == details["status"] == 403 and details["role"] == "analyst"
    response, details = _one_more(tenants, "acme", lambda: tenants.get("/v1/answers", "analyst", q="salary"))
    assert response.status_code == details["status"] == 403 and details["query"] == {"q": "salary"}
    response, details = _one_more(tenants, "acme", lambda: tenants.get("/v1/nothing-here"))
    assert response.status_code == details["status"] == 404 and details["endpoint"] == "/v1/nothing-here"
    response, details = _one_more(tenants, "acme", lambda: tenants.client.post(
        "/v1/answers", headers={"Authorization": tenants.keys["auditor"]}))
    assert response.status_code == details["status"] == 405


def test_operations_and_the_page_are_not_audit_reads(tenants):
    before = {t: len(_entries(tenants, t)) for t in ("acme", OPERATOR)}
    for path in ("/healthz", "/readyz", "/", "/openapi.json"):
        assert tenants.get(path).status_code == 200
    assert {t: len(_entries(tenants, t)) for t in before} == before


def test_a_read_that_cannot_be_logged_is_not_served(tenants):
    tenants.failing["access"] = True
    try:
        for template in V1:
            for caller in ("auditor", "none"):
                response = tenants.get(_path(template, tenants), caller)
                assert response.status_code == 503, (template, caller)
                assert response.json()["error"]["code"] == "unavailable" and "access log" in response.text
                assert int(response.headers["retry-after"]) > 0
                assert SECRET not in response.text and tenants.trace_id not in response.text.replace(
                    f"/v1/traces/{tenants.trace_id}", "")
    finally:
        tenants.failing["access"] = False
    assert tenants.get(f"/v1/traces/{tenants.trace_id}").status_code == 200


def test_the_access_log_shows_status_and_reason(tenants):
    tenants.get("/v1/answers", "bad_key")  # the operator's log
    tenants.get("/v1/access-log", "ingest")
    tenants.get(f"/v1/traces/{tenants.trace_id}")
    entries = tenants.get("/v1/access-log").json()["data"]
    by_status = {e["status"]: e for e in reversed(entries) if e["status"] is not None}  # newest wins
    assert by_status[200]["endpoint"] == "/v1/traces/{trace_id}" and len(by_status[200]["ids"]) == 2
    assert by_status[403]["reason"].startswith("role 'ingest'") and by_status[403]["role"] == "ingest"
    assert 401 not in by_status  # refusals without a credential are the operator's, not acme's
    operator = tenants.get("/v1/access-log", "operator").json()["data"]
    assert any(e["status"] == 401 and e["claimed_key_id"] == "0123456789ab" for e in operator)
    # the stored entries are the access records the API reads back (kind access, this tenant)
    stored = tenants.store.list_records(RecordQuery(tenant="acme", kind="access", limit=500))
    assert {e["record_id"] for e in entries} <= {r.record_id for r in stored}


def test_the_entry_is_written_before_any_byte_of_the_answer(tenants):
    """Driven as the server drives it (raw ASGI): the access record is appended before the
    response starts, with the ids the endpoint returned."""
    import asyncio

    from aitrail.query_api.access import AccessLog
    from aitrail.query_api.app import create_app

    events: list[str] = []

    async def append(records):
        events.append(f"logged {records[0].details['status']} {len(records[0].details['ids'])} ids")

    app = create_app(tenants.store, pseudonymise=str, access_log=AccessLog(append), operator_tenant=OPERATOR)

    async def call(path: str, authorization: str | None) -> None:
        headers = [(b"authorization", authorization.encode())] if authorization else []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "root_path": ""}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            events.append(message["type"] + (f" {message['status']}" if "status" in message else ""))

        await app(scope, receive, send)

    asyncio.run(call(f"/v1/traces/{tenants.trace_id}", tenants.keys["auditor"]))
    assert events[:2] == ["logged 200 2 ids", "http.response.start 200"] and events[-1] == "http.response.body"
    events.clear()
    asyncio.run(call(f"/v1/traces/{tenants.trace_id}", None))
    assert events[:2] == ["logged 401 0 ids", "http.response.start 401"]


def test_an_unexpected_failure_is_logged_as_500(tenants, monkeypatch):
    def broken(query):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(tenants.store, "search_answers", broken)
    response, details = _one_more(tenants, "acme", lambda: tenants.get("/v1/answers"))
    assert response.status_code == details["status"] == 500 and details["reason"] == "internal error"
    assert "secret internals" not in response.text + str(details)
