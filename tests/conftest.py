from __future__ import annotations

from pathlib import Path

import pytest

from aitrail.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[1]


def _sqlite(tmp_path: Path):
    return SqliteStore(tmp_path / "aitrail.db")


BACKENDS = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(BACKENDS))
def store(request, tmp_path):
    """Every backend of the store seam; the contract suite runs once per backend."""
    instance = BACKENDS[request.param](tmp_path)
    yield instance
    instance.close()


@pytest.fixture(scope="session")
def services():
    """Real Kafka and OpenSearch (see tests/services.py). Started once per session; the
    native ones are left running for the next session (`make services-down` stops them)."""
    from tests.services import start_services

    endpoints, stoppers = start_services()
    yield endpoints
    for stop in stoppers:
        stop()
