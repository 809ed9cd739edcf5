"""Time formatting and AnyValue conversion."""

from __future__ import annotations

import datetime as dt

import pytest
from aitrail.collector.otlp_values import any_value_to_py, attributes_to_dict, id_hex
from aitrail.schemas.timefmt import iso_to_ns, ns_to_iso
from hypothesis import given
from hypothesis import strategies as st
from normalise_builders import any_value
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

MAX_NS = 253402300799_999_999_999  # 9999-12-31T23:59:59.999999999Z


def test_ns_to_iso_is_fixed_width_utc():
    assert ns_to_iso(0) == "1970-01-01T00:00:00.000000000Z"
    assert ns_to_iso(1_795_624_250_513_108_762) == "2026-11-25T16:30:50.513108762Z"
    assert ns_to_iso(1_795_624_250_000_000_001) == "2026-11-25T16:30:50.000000001Z"


@given(st.integers(min_value=0, max_value=MAX_NS))
def test_iso_round_trip(ns):
    text = ns_to_iso(ns)
    assert len(text) == 30 and iso_to_ns(text) == ns
    expected = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)
    assert text[:26] == expected.strftime("%Y-%m-%dT%H:%M:%S.%f")


@given(st.integers(min_value=0, max_value=MAX_NS), st.integers(min_value=0, max_value=MAX_NS))
def test_text_order_is_time_order(a, b):
    assert (ns_to_iso(a) < ns_to_iso(b)) == (a < b)


@pytest.mark.parametrize(("text", "ns"), [
    ("2026-11-25T16:30:50Z", 1_795_624_250_000_000_000),
    ("2026-11-25T16:30:50.5Z", 1_795_624_250_500_000_000),
    ("2026-11-25T16:30:50.123456+00:00", 1_795_624_250_123_456_000),
    ("2026-11-25T23:30:50.000000000+07:00", 1_795_624_250_000_000_000),
])
def test_iso_to_ns_reads_other_forms(text, ns):
    assert iso_to_ns(text) == ns


@pytest.mark.parametrize("text", ["yesterday", "2026-11-25", "2026-13-01T00:00:00Z", "2026-11-25T10:00:00.1234567890Z"])
def test_iso_to_ns_refuses_garbage(text):
    with pytest.raises(ValueError):
        iso_to_ns(text)


def _values():
    scalars = st.one_of(
        st.text(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
    )
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)), max_leaves=12)


@given(_values())
def test_any_value_round_trip(value):
    assert any_value_to_py(any_value(value)) == value


def test_any_value_odd_cases():
    assert any_value_to_py(AnyValue()) is None
    assert any_value_to_py(any_value(b"\xff\x00")) == "/wA="
    assert any_value_to_py(any_value("")) == ""
    assert any_value_to_py(any_value(0)) == 0 and any_value_to_py(any_value(False)) is False


def test_attributes_to_dict_last_value_wins_and_ids():
    from normalise_builders import kv

    assert attributes_to_dict([kv("a", 1), kv("a", 2), kv("b", "x")]) == {"a": 2, "b": "x"}
    assert id_hex(b"") is None and id_hex(bytes(16)) is None and id_hex(bytes(8)) is None
    assert id_hex(b"\x0a" * 8) == "0a" * 8
