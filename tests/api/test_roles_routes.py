"""Who may call what, generated from the app's routes: every route against every caller
(no credentials, a key that is not one, a scheme that is not Bearer, each role of acme, the
operator, another tenant). A route the table below does not name fails the test: a new
endpoint must say who may call it. Content never reaches an analyst; another tenant's ids,
logs and metrics answer exactly as missing ones do.
"""

from __future__ import annotations

import re

import pytest

from aitrail.integrity.leaf import CONTENT_FIELDS
from aitrail.query_api.replay import CONTENT_FIELDS as REDACTED_FIELDS
from aitrail.tenancy import log_tenant
from tests.api.tenants import LEGACY_LOG, ROUTES, SECRET, build

CALLERS = ("none", "bad_key", "not_bearer", "ingest", "auditor", "analyst", "admin", "operator", "other_tenant")


def _statuses(**given: int) -> dict[str, int]:
    missing = set(CALLERS) - set(given)
    assert not missing, missing
    return given


PUBLIC = _statuses(**dict.fromkeys(CALLERS, 200))
READ = _statuses(none=401, bad_key=401, not_bearer=401, ingest=403, auditor=200, analyst=200, admin=200,
                 operator=200, other_tenant=200)
# acme's id asked by another tenant (the operator's is one too): as if missing
READ_ONE_OF_ACME = {**READ, "other_tenant": 404, "operator": 404}
LOG_READ = {**READ, "analyst": 403}
OPERATORS = _statuses(none=401, bad_key=401, not_bearer=401, ingest=403, auditor=403, analyst=403, admin=403,
                      operator=200, other_tenant=403)

EXPECTED: dict[tuple[str, str], dict[str, int]] = {
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): OPERATORS,
    ("GET", "/v1/whoami"): READ,
    ("GET", "/v1/answers"): READ,
    ("GET", "/v1/traces/{trace_id}"): READ_ONE_OF_ACME,
    ("GET", "/v1/records/{record_id}"): READ_ONE_OF_ACME,
    ("GET", "/v1/records/{record_id}/proof"): READ_ONE_OF_ACME,
    ("GET", "/v1/checkpoints/latest"): READ,
    ("GET", "/v1/costs"): READ,
    ("GET", "/v1/access-log"): LOG_READ,
}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    built = build(tmp_path_factory.mktemp("roles"))
    yield built
    built.store.close()


def _path(template: str, tenants) -> str:
    return template.replace("{trace_id}", tenants.trace_id).replace("{record_id}", tenants.record_id)


def test_the_table_names_every_route_and_only_routes():
    assert ROUTES, "no routes listed"
    assert set(EXPECTED) - set(ROUTES) == set(), "the table names routes the app no longer has"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("caller", CALLERS)
def test_every_route_for_every_caller(tenants, route, caller):
    method, template = route
    if route not in EXPECTED:
        pytest.fail(f"{method} {template} is not in EXPECTED: say which callers may use it")
    response = tenants.client.request(method, _path(template, tenants),
                                      headers={"Authorization": tenants.keys[caller]} if caller != "none" else {})
    assert response.status_code == EXPECTED[route][caller], (caller, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message"} and error["message"]
        if response.status_code == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
        if response.status_code == 403 and template != "/metrics":
            assert f"role '{'analyst' if caller == 'analyst' else 'ingest'}'" in error["message"]
    if caller in ("analyst", "other_tenant") or response.status_code >= 400:
        assert SECRET not in response.text, (caller, template)


def test_analysts_never_get_content(tenants):
    """Every content field of the leaf commitment (and document snippets) is held back, on
    records, replays and answers, and `redacted` names them."""
    assert tuple(REDACTED_FIELDS) == tuple(CONTENT_FIELDS)
    record = tenants.get(f"/v1/records/{tenants.record_id}", "analyst").json()
    assert set(CONTENT_FIELDS) <= set(record["redacted"])
    assert not set(CONTENT_FIELDS) & set(record) and SECRET not in str(record)
    assert record["input_tokens"] == 42 and record["cost"]["amount"] == "0.002"
    replay = tenants.get(f"/v1/traces/{tenants.trace_id}", "analyst").json()
    (lookup,) = [r for r in replay["records"] if r["kind"] == "retrieval"]
    assert lookup["documents"][0]["doc_id"] == "handbook" and "snippet" not in lookup["documents"][0]
    assert "documents.snippet" in lookup["redacted"]
    assert SECRET not in str(replay)
    answers = tenants.get("/v1/answers", "analyst").json()["data"]
    assert answers and all(a["question"] is None and a["answer"] is None for a in answers)
    # the auditor sees what the analyst does not: the marker is really there
    assert str(tenants.get(f"/v1/records/{tenants.record_id}").json()).count(SECRET) >= len(CONTENT_FIELDS)


def test_analysts_may_not_search_content(tenants):
    for caller in ("analyst", "other_analyst"):
        response = tenants.get("/v1/answers", caller, q="salary")
        assert response.status_code == 403
        assert "role 'analyst'" in response.json()["error"]["message"] and " q" in response.json()["error"]["message"]
    assert tenants.get("/v1/answers", "auditor", q="salary").status_code == 200


def test_analysts_may_not_read_access_records(tenants):
    response = tenants.get(f"/v1/records/{tenants.access_id}", "analyst")
    assert response.status_code == 403 and "role 'analyst'" in response.json()["error"]["message"]
    assert SECRET not in response.text
    read = tenants.get(f"/v1/records/{tenants.access_id}", "auditor").json()
    assert read["kind"] == "access" and read["details"]["query"]["q"] == f"{SECRET} salary"
    # another tenant's analyst asking for it gets what a missing id gets: 404, not 403
    assert tenants.get(f"/v1/records/{tenants.access_id}", "other_analyst").status_code == 404


def _shape(response, asked: str) -> tuple[int, str]:
    return response.status_code, response.text.replace(asked, "<id>")


@pytest.mark.parametrize("template", [t for m, t in ROUTES if "{" in t])
def test_another_tenants_id_answers_as_a_missing_one(tenants, template):
    ids = {"{trace_id}": tenants.trace_id, "{record_id}": tenants.record_id}
    (placeholder,) = re.findall(r"\{\w+\}", template)
    for acme_id in {ids[placeholder], tenants.access_id} if placeholder == "{record_id}" else {ids[placeholder]}:
        missing_id = "f" * 32
        for caller in ("other_tenant", "other_analyst", "other_admin"):
            other = tenants.get(template.replace(placeholder, acme_id), caller)
            missing = tenants.get(template.replace(placeholder, missing_id), caller)
            assert other.status_code == 404
            assert _shape(other, acme_id) == _shape(missing, missing_id)


def test_checkpoints_show_only_the_callers_tenant(tenants):
    acme = tenants.get("/v1/checkpoints/latest").json()["data"]
    assert acme and {log_tenant(c["log_id"]) for c in acme} == {"acme"}
    globex = tenants.get("/v1/checkpoints/latest", "other_tenant").json()["data"]
    assert globex and {log_tenant(c["log_id"]) for c in globex} == {"globex"}
    # a log without a tenant is shown to nobody, not even by name
    for caller in ("auditor", "other_tenant", "admin", "operator"):
        shown = tenants.get("/v1/checkpoints/latest", caller).json()["data"]
        assert LEGACY_LOG not in {c["log_id"] for c in shown}
        assert _shape(tenants.get("/v1/checkpoints/latest", caller, log=LEGACY_LOG), LEGACY_LOG) == _shape(
            tenants.get("/v1/checkpoints/latest", caller, log="nothing.9"), "nothing.9")
    own = acme[0]["log_id"]
    assert tenants.get("/v1/checkpoints/latest", log=own).json()["data"][0]["log_id"] == own
    other = tenants.get("/v1/checkpoints/latest", "other_tenant", log=own)
    missing = tenants.get("/v1/checkpoints/latest", "other_tenant", log="globex/nothing.9")
    assert other.status_code == missing.status_code == 404
    assert _shape(other, own) == _shape(missing, "globex/nothing.9")


def test_proofs_are_against_the_records_own_tenant_log(tenants):
    proof = tenants.get(f"/v1/records/{tenants.record_id}/proof").json()
    assert log_tenant(proof["log_id"]) == "acme" and proof["status"] == "verified"
    assert proof["checkpoint"].split("\n")[0].endswith("/" + proof["log_id"])


def test_metrics_are_for_operators_and_name_no_tenant(tenants):
    text = tenants.get("/metrics", "operator").text
    assert "aitrail_otlp_items_received_total" in text
    assert 'aitrail_otlp_items_received_total{signal="traces"} 8.0' in text
    assert "tenant=" not in text and "acme" not in text and "globex" not in text
    refused = tenants.get("/metrics", "admin").json()["error"]["message"]
    assert "operator" in refused and "ops" not in refused.replace("operator", "")  # the operator tenant unnamed


def test_gateway_and_collector_metrics_are_for_operators_too(tenants):
    """`operations_routes` (the gateway serves them on its OTLP port, the collector on its own)."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from aitrail.auth import Authenticator
    from aitrail.metrics import Metrics
    from aitrail.scaleout import operations_routes

    async def ready():
        return None

    for labelled in (False, True):
        metrics = Metrics(tenant_labels=labelled)
        metrics.received("traces", "acme", 2, 0)
        ops = TestClient(Starlette(routes=operations_routes(
            metrics, ready, authenticator=Authenticator(tenants.store.authenticate), operator_tenant="ops")))
        for caller, status in (("none", 401), ("bad_key", 401), ("admin", 403), ("other_admin", 403),
                               ("auditor", 403), ("operator", 200)):
            headers = {"Authorization": tenants.keys[caller]} if caller != "none" else {}
            response = ops.get("/metrics", headers=headers)
            assert response.status_code == status, (caller, response.text)
            if status != 200:
                assert set(response.json()["error"]) == {"code", "message"} and "acme" not in response.text
        text = ops.get("/metrics", headers={"Authorization": tenants.keys["operator"]}).text
        # a tenant label only when configured (metrics.tenant_labels)
        assert ('tenant="acme"' in text) is labelled
        assert ops.get("/healthz").status_code == ops.get("/readyz").status_code == 200
