"""One error shape everywhere — `{"error": {"code", "message"}}` with the right status and
headers — and the odd inputs that once answered 500."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from aitrail.errors import Unavailable
from aitrail.query_api.access import AccessLog
from aitrail.query_api.app import create_app
from aitrail.query_api.service import RecordView
from aitrail.query_api.timeparse import to_iso
from aitrail.store.base import Role
from aitrail.store.sqlite import SqliteStore


@pytest.fixture(scope="module")
def client(seeded_api):
    return TestClient(seeded_api.app, raise_server_exceptions=False)


def error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]["message"]


def test_unknown_route_and_method(client, seeded_api):
    assert "/openapi.json" in error(client.get("/v1/nothing-here", headers=seeded_api.auth()), 404, "not_found")
    response = client.post("/v1/answers", headers=seeded_api.auth())
    assert "use GET" in error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"


@pytest.mark.parametrize("params, words", [
    ({"limit": "0"}, "limit"), ({"limit": "10000000000000000000000"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"q": "x" * 1001}, "q"), ({"tz": "Asia/Bangkk", "at": "yesterday"}, "time zone"),
    ({"at": "next blursday"}, "cannot read the time"), ({"window": "15m"}, "window needs at"),
    ({"at": "99 ทุ่ม"}, "the time '99 ทุ่ม'"),  # quotes what was sent, not the rewritten clock words
    ({"cursor": "not-a-cursor"}, "cursor"),
])
def test_bad_parameters_are_400_not_422(client, seeded_api, params, words):
    assert words in error(client.get("/v1/answers", params=params, headers=seeded_api.auth()), 400, "bad_request")


def test_credentials(client, seeded_api):
    missing = client.get("/v1/answers")
    error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    error(client.get("/v1/answers", headers={"Authorization": "Bearer atk_unknown"}), 401, "unauthorized")
    error(client.get("/v1/answers", headers={"Authorization": "Basic YTpi"}), 401, "unauthorized")
    error(client.get("/v1/answers", headers=seeded_api.auth(Role.INGEST)), 403, "forbidden")
    error(client.get("/v1/access-log", headers=seeded_api.auth(Role.ANALYST)), 403, "forbidden")


def test_every_read_needs_a_reader_key(client, seeded_api):
    for path in [p for p in seeded_api.app.openapi()["paths"] if p.startswith("/v1/")]:
        path = path.replace("{trace_id}", seeded_api.trace_id).replace("{record_id}", seeded_api.record_id)
        error(client.get(path), 401, "unauthorized")
        error(client.get(path, headers=seeded_api.auth(Role.INGEST)), 403, "forbidden")


@pytest.mark.parametrize("path, params", [
    ("/v1/answers", {"at": "0001-01-01"}),
    ("/v1/answers", {"at": "9999-12-31T23:59:59"}),
    ("/v1/answers", {"at": "now", "window": "99999999999999999999999w"}),
    ("/v1/answers", {"at": "now", "window": "9" * 30}),
    ("/v1/answers", {"at": "now", "tz": "Asia"}),
    ("/v1/answers", {"at": "now", "tz": "a" * 60}),
    ("/v1/answers", {"at": "99 ทุ่ม"}),
    ("/v1/answers", {"at": "9" * 150}),
    ("/v1/costs", {"from": "0001-01-01", "tz": "Asia/Bangkok"}),
    ("/v1/costs", {"to": "9999-12-31T23:59", "tz": "America/New_York"}),
    ("/v1/costs", {"group_by": "model,\x00,ไทย"}),
    ("/v1/access-log", {"from": "0001-01-01T00:00+01:00"}),
    ("/v1/access-log", {"cursor": "WyJhIiwiYiIsImMiXQ"}),
    ("/v1/traces/%00%F0%9F%98%80", {}),
    ("/v1/records/..%2F..%2Fetc", {}),
    ("/v1/checkpoints/latest", {"log": "\u202e"}),
])
def test_odd_input_is_never_a_server_error(client, seeded_api, path, params):
    """Each of these answered 500 (OverflowError, IsADirectoryError, OSError) before."""
    response = client.get(path, params=params, headers=seeded_api.auth())
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error(response, response.status_code, response.json()["error"]["code"])


def test_ranges_at_the_ends_of_time_are_cut_not_failed(client, seeded_api):
    body = client.get("/v1/answers", params={"at": "0001-01-01"}, headers=seeded_api.auth()).json()
    assert body["window"] == {"from": "0001-01-01T00:00:00.000000000Z", "to": "0001-01-01T00:15:00.000000000Z"}
    assert to_iso(datetime(999, 1, 2, tzinfo=UTC)) == "0999-01-02T00:00:00.000000000Z"  # sorts before 2026 as text


class _Down(SqliteStore):
    def ping(self) -> bool:
        return False

    def search_answers(self, query):
        raise RuntimeError("secret internals")


def test_unavailable_is_503_with_retry_after(tmp_path, seeded_api):
    down = _Down(tmp_path / "down.db")
    client = TestClient(create_app(down, pseudonymise=str), raise_server_exceptions=False)
    not_ready = client.get("/readyz")
    assert "store" in error(not_ready, 503, "unavailable")
    assert int(not_ready.headers["retry-after"]) > 0

    async def refuse(records):
        raise Unavailable("store unavailable")

    unlogged = TestClient(create_app(seeded_api.store, pseudonymise=str, access_log=AccessLog(refuse)))
    # every request to /v1 is logged, checkpoint reads and refusals too: none is answered unlogged
    for path, headers in ((f"/v1/traces/{seeded_api.trace_id}", seeded_api.auth()),
                          ("/v1/checkpoints/latest", seeded_api.auth()), ("/v1/answers", {})):
        response = unlogged.get(path, headers=headers)
        assert "access log" in error(response, 503, "unavailable"), path
        assert int(response.headers["retry-after"]) > 0
        assert "Refunds" not in response.text


def test_unexpected_failure_is_500_without_internals(tmp_path):
    store = _Down(tmp_path / "broken.db")
    key = store.create_key("acme", Role.AUDITOR)[0]
    client = TestClient(create_app(store, pseudonymise=str), raise_server_exceptions=False)
    message = error(client.get("/v1/answers", headers={"Authorization": f"Bearer {key}"}), 500, "internal")
    assert "secret" not in message and "Traceback" not in message


def test_analyst_views_match_the_documented_record(client, seeded_api):
    """The redacted views an analyst gets are valid `RecordView`s too (schemathesis runs as auditor)."""
    analyst = seeded_api.auth(Role.ANALYST)
    record = client.get(f"/v1/records/{seeded_api.record_id}", headers=analyst).json()
    assert "question" not in record and "question" in record["redacted"]
    RecordView.model_validate(record)
    replay = client.get(f"/v1/traces/{seeded_api.trace_id}", params={"visible_to": "public"}, headers=analyst).json()
    for view in replay["records"]:
        RecordView.model_validate(view)
    assert any(view.get("documents_hidden") for view in replay["records"])
