"""The OpenAPI document (`/openapi.json`, served by `aitrail serve` and `aitrail api`) is
complete: every endpoint of the design, each with a summary and description, described and
exemplified parameters, a response model with an example, and its errors documented with the
one error shape. The examples themselves are valid instances of their models."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from aitrail.query_api import service

DESIGN_ENDPOINTS = (
    "/v1/answers", "/v1/traces/{trace_id}", "/v1/records/{record_id}", "/v1/records/{record_id}/proof",
    "/v1/checkpoints/latest", "/v1/costs", "/v1/access-log", "/healthz", "/readyz",
)
ERROR_REF = "#/components/schemas/ErrorResponse"


@pytest.fixture(scope="module")
def document(seeded_api):
    response = TestClient(seeded_api.app).get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_every_design_endpoint_is_documented(document):
    assert set(DESIGN_ENDPOINTS) <= set(document["paths"])
    assert all("get" in document["paths"][path] for path in DESIGN_ENDPOINTS)


@pytest.mark.parametrize("path", DESIGN_ENDPOINTS)
def test_each_endpoint_has_description_examples_and_errors(document, path):
    operation = document["paths"][path]["get"]
    assert operation.get("summary") and operation.get("description"), path
    ok = operation["responses"]["200"]["content"]["application/json"]
    assert ok["schema"].get("$ref", "").startswith("#/components/schemas/"), f"{path}: 200 has no response model"
    assert ok.get("example") or ok.get("examples"), f"{path}: 200 has no example"
    model = document["components"]["schemas"][ok["schema"]["$ref"].rsplit("/", 1)[1]]
    assert model.get("examples"), f"{path}: the response model has no examples"

    errors = {status: r for status, r in operation["responses"].items() if status[0] in "45"}
    expected = {"503"} if path == "/readyz" else set() if path == "/healthz" else {"401", "403", "503"}
    if "{" in path:
        expected |= {"400", "404"}
    assert expected <= set(errors), f"{path}: undocumented errors {expected - set(errors)}"
    for status, response in errors.items():
        content = response["content"]["application/json"]
        assert content["schema"] == {"$ref": ERROR_REF}, (path, status)
        assert set(content["example"]["error"]) == {"code", "message"}, (path, status)
    for status, header in (("401", "WWW-Authenticate"), ("503", "Retry-After")):
        if status in errors:
            assert errors[status]["headers"][header]["required"] is True, (path, status)


def test_parameters_are_described_with_examples(document):
    for path, method, operation in operations(document):
        for parameter in operation.get("parameters", []):
            where = f"{method.upper()} {path} {parameter['name']}"
            assert parameter.get("description"), where
            assert parameter.get("examples") or parameter.get("example"), where
    answers = {p["name"]: p for p in document["paths"]["/v1/answers"]["get"]["parameters"]}
    assert "last Tuesday 14:30" in [e["value"] for e in answers["at"]["examples"].values()]
    assert "Asia/Bangkok" in [e["value"] for e in answers["tz"]["examples"].values()]


def test_bearer_auth_is_declared_for_every_read(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    for path, method, operation in operations(document):
        if path.startswith("/v1/"):
            assert operation.get("security") == [{"bearer": []}], path
        else:
            assert not operation.get("security"), path


def test_no_422_and_every_reference_resolves(document):
    """Invalid parameters answer 400 (ErrorResponse), never FastAPI's default 422."""
    for path, method, operation in operations(document):
        assert "422" not in operation["responses"], path
    assert not {"HTTPValidationError", "ValidationError"} & set(document["components"]["schemas"])

    def refs(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(document))
    assert "#/components/schemas/RecordView" in found  # the replay's records are documented records
    for ref in found:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in document["components"]["schemas"]


MODELS = [
    service.ErrorResponse, service.AnswersOut, service.TraceOut, service.RecordView, service.ProofOut,
    service.CheckpointsOut, service.CostsOut, service.AccessLogOut, service.WhoAmI, service.Health, service.Ready,
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_examples_are_valid(model):
    examples = model.model_config["json_schema_extra"]["examples"]
    assert examples
    for example in examples:
        model.model_validate(example)
    if model is service.TraceOut:
        for record in examples[0]["records"]:
            service.RecordView.model_validate(record)


def test_answers_example_is_the_design_question(seeded_api):
    """The documented example request finds the seeded answer that the examples describe."""
    client = TestClient(seeded_api.app)
    found = client.get("/v1/answers", params={"q": "refund policy", "at": "2026-11-24T14:30:00", "tz": "Asia/Bangkok"},
                       headers=seeded_api.auth()).json()
    assert [a["record_id"] for a in found["data"]] == [service.EXAMPLE_RECORD_ID]
    assert found["window"] == {"from": "2026-11-24T07:15:00.000000000Z", "to": "2026-11-24T07:45:00.000000000Z"}
