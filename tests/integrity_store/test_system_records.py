from __future__ import annotations

import pytest

from aitrail.errors import InvalidInput
from aitrail.integrity import system
from tests.factories import completion


def test_round_trip_and_deterministic_ids():
    record = system.system_record("erasure", "acme", {"subject": "u_1"}, at="2026-11-25T00:00:00.000000000Z")
    again = system.system_record("erasure", "acme", {"subject": "u_1"}, at="2026-11-25T00:00:00.000000000Z")
    assert record.record_id == again.record_id
    assert system.decode(system.encode([record])) == [record]


def test_only_system_kinds_travel_as_records():
    with pytest.raises(InvalidInput, match="not a system record kind"):
        system.system_record("completion", "acme", {})
    with pytest.raises(InvalidInput, match="is not a system record"):
        system.decode(system.encode([completion(trace=1)]))
    with pytest.raises(InvalidInput, match="not a list of system records"):
        system.decode(b"{oops")
