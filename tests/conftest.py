from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from aitrail.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[1]

# Signing keys and the checkpoint mirror live outside the data folder, under the XDG
# folders (aitrail.custody): keep the tests' own out of the user's home. Subprocesses inherit it.
_CUSTODY = Path(tempfile.mkdtemp(prefix="aitrail-test-custody-"))
os.environ["XDG_CONFIG_HOME"] = str(_CUSTODY / "config")
os.environ["XDG_STATE_HOME"] = str(_CUSTODY / "state")


def _sqlite(request):
    return SqliteStore(request.getfixturevalue("tmp_path") / "aitrail.db")


def _opensearch(request, **settings):
    """A store on the session's OpenSearch under a prefix of its own, removed after the test."""
    from aitrail.settings import OpenSearchSettings
    from aitrail.store.opensearch import OpenSearchStore

    url = request.getfixturevalue("services").opensearch
    prefix = f"t{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: drop_opensearch_layout(url, prefix))
    # wait_for returns at the next scheduled refresh: a short interval keeps the suite quick.
    options = OpenSearchSettings(url=url, index_prefix=prefix, **({"refresh_interval": "100ms"} | settings))
    return OpenSearchStore.from_settings(options, refresh="wait_for")


def drop_opensearch_layout(url: str, prefix: str) -> None:
    from opensearchpy import OpenSearch

    client = OpenSearch([url])
    try:
        client.indices.delete(index=f"{prefix}-*", params={"ignore": 404, "expand_wildcards": "all"})
        client.indices.delete_index_template(name=f"{prefix}-records", params={"ignore": 404})
        client.delete_script(id=f"{prefix}-answers-merge", params={"ignore": 404})
    finally:
        client.close()


BACKENDS = {"sqlite": _sqlite, "opensearch": _opensearch}


@pytest.fixture(params=sorted(BACKENDS))
def store(request):
    """Every backend of the store seam; the contract suite runs once per backend."""
    instance = BACKENDS[request.param](request)
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
