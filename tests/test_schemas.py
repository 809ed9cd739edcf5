"""Golden files: the committed JSON Schema and index template match the models."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import ValidationError

from aitrail.schemas import generate
from aitrail.schemas.canonical import canonical_json, record_from_json
from tests.factories import completion


def test_json_schema_is_up_to_date():
    committed = generate.JSON_SCHEMA_FILE.read_text(encoding="utf-8")
    assert committed == generate.render(generate.json_schema()), "run `make schemas` and commit the result"


def test_index_template_is_up_to_date():
    committed = generate.TEMPLATE_FILE.read_text(encoding="utf-8")
    assert committed == generate.render(generate.index_template()), "run `make schemas` and commit the result"


def test_template_searches_three_scripts_and_keeps_raw_attributes_flat():
    properties = generate.index_template()["template"]["mappings"]["properties"]
    for field in ("question", "answer"):
        assert properties[field]["fields"]["cjk"]["analyzer"] == "cjk"
        assert properties[field]["fields"]["thai"]["analyzer"] == "thai"
    assert properties["raw_attributes"] == {"type": "flat_object"}
    assert properties["documents"]["type"] == "nested"
    assert properties["start_time"]["type"] == "date_nanos"


def test_canonical_json_is_sorted_compact_and_stable():
    record = completion(trace=1, cost="0.00001650", raw_attributes={"z": 1, "a": {"y": 2, "b": 1.5}})
    data = canonical_json(record)
    assert data == canonical_json(record_from_json(data))
    assert b'"raw_attributes":{"a":{"b":1.5,"y":2},"z":1}' in data
    assert b'"amount":"0.00001650"' in data
    assert b" " not in data.replace(b"What is our refund policy?", b"").replace(b"Refunds within 30 days.", b"")
    keys = list(json.loads(data))
    assert keys == sorted(keys)


def test_canonical_json_keeps_unicode_as_utf8():
    data = canonical_json(completion(trace=2, question="คืนเงิน 退款"))
    assert "คืนเงิน 退款".encode() in data


def test_non_finite_numbers_are_refused():
    with pytest.raises(ValidationError):
        completion(trace=3, duration_ms=float("nan"))


def test_decimal_round_trip_is_exact():
    record = record_from_json(canonical_json(completion(trace=4, cost="0.1234567891")))
    assert record.cost.amount == Decimal("0.1234567891")
