"""Row MACs (aitrail.store.rowmac) against an insider who writes the data folder or the indices:
an API key row moved to another tenant or role, added, or un-revoked does not authenticate; a
replaced secret stops the store; a forged dead letter is listed as not authentic and never
replayed; `aitrail verify` names each such row. Genuine rows keep working, and rows present
when the row key is first made are authenticated then."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import uuid

import pytest
from fastapi.testclient import TestClient

from aitrail import cli, custody
from aitrail.errors import ConfigError, Unauthorized
from aitrail.query_api.app import create_app
from aitrail.settings import load_settings
from aitrail.store import open_store
from aitrail.store.base import Role
from aitrail.store.keys import hash_key
from aitrail.store.sqlite import SqliteStore
from tests.conftest import REPO
from tests.factories import completion

SPAN_CAPTURE = (REPO / "tests" / "fixtures" / "otlp-captures" / "otelv2-span" / "00-traces.pb").read_bytes()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def install(tmp_path):
    data = tmp_path / "data"
    settings = load_settings(None, data_dir=data)
    store = open_store(settings)
    yield settings, store, data
    store.close()


def db(data) -> contextlib.closing:
    return contextlib.closing(sqlite3.connect(data / "aitrail.db", isolation_level=None))


def get(client: TestClient, key: str):
    return client.get("/v1/answers", headers={"Authorization": f"Bearer {key}"})


def test_the_row_key_lives_outside_the_data_folder(install):
    settings, store, data = install
    path = custody.row_key_path(settings)
    assert path.parent == custody.keys_dir(settings) and data.resolve() not in path.resolve().parents
    assert len(path.read_bytes()) == 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert store.row_mac is not None


@pytest.mark.parametrize("attack", ["tenant", "role", "inserted", "unrevoked"])
def test_an_altered_key_row_does_not_authenticate(install, attack, caplog):
    settings, store, data = install
    store.write([completion("acme", trace=1), completion("globex", trace=2)])
    analyst, analyst_info = store.create_key("acme", Role.ANALYST)
    client = TestClient(create_app(store, pseudonymise=str))
    assert get(client, analyst).status_code == 200  # genuine: works
    key, key_id = analyst, analyst_info.key_id
    with db(data) as conn:
        if attack == "tenant":
            conn.execute("UPDATE api_keys SET tenant = 'globex' WHERE key_id = ?", (key_id,))
        elif attack == "role":
            conn.execute("UPDATE api_keys SET role = 'admin' WHERE key_id = ?", (key_id,))
        elif attack == "inserted":
            key_id, key = "0badc0ffee00", "atk_0badc0ffee00_" + "x" * 43
            conn.execute("INSERT INTO api_keys (key_id, key_hash, tenant, role, created_at) VALUES (?, ?, ?, ?, ?)",
                         (key_id, hash_key(key), "globex", "admin", "2026-01-01T00:00:00.000000000Z"))
        else:
            revoked, info = store.create_key("acme", Role.ANALYST)
            assert store.revoke_key(info.key_id) and get(client, revoked).status_code == 401
            key, key_id = revoked, info.key_id
            conn.execute("UPDATE api_keys SET revoked_at = NULL WHERE key_id = ?", (key_id,))
    with caplog.at_level(logging.WARNING, logger="aitrail.store.sqlite"):
        response = get(client, key)
    assert response.status_code == 401
    assert f"key {key_id} is refused" in response.json()["error"]["message"]
    assert any(key_id in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    with pytest.raises(Unauthorized):
        store.authenticate(key)


def test_revoking_keeps_a_genuine_row_authentic(install):
    settings, store, data = install
    key, info = store.create_key("acme", Role.ANALYST)
    assert store.revoke_key(info.key_id)
    assert store.authenticate(key) is None  # revoked: unknown, not "altered"
    assert store.unauthenticated_rows() == []


def test_a_replaced_secret_stops_the_store(install):
    settings, store, data = install
    genuine = store.secret("pseudonym")
    assert store.secret("pseudonym") == genuine
    with db(data) as conn:
        conn.execute("UPDATE secrets SET value = ? WHERE name = 'pseudonym'", (b"\x00" * 32,))
    with pytest.raises(ConfigError) as stopped:
        store.secret("pseudonym")
    assert "'pseudonym'" in stopped.value.message and "data folder was altered" in stopped.value.message
    with db(data) as conn:  # replaced wholesale, with the MAC of another row: refused as well
        mac = conn.execute("SELECT mac FROM secrets WHERE name = 'pseudonym'").fetchone()[0]
        conn.execute("DELETE FROM secrets")
        conn.execute("INSERT INTO secrets (name, value, mac) VALUES ('pseudonym', ?, ?)", (b"\x01" * 32, mac))
    with pytest.raises(ConfigError):
        store.secret("pseudonym")


def _forge_dead_letter(data) -> int:
    with db(data) as conn:
        cursor = conn.execute(
            "INSERT INTO dead_letters (at, reason, headers, payload) VALUES (?, ?, ?, ?)",
            ("2026-12-01T00:00:00.000000000Z", "normaliser bug", json.dumps({"signal": "traces", "tenant": "acme"}),
             SPAN_CAPTURE),
        )
        return cursor.lastrowid


def test_a_forged_dead_letter_is_listed_not_authentic_and_not_replayed(install, capsys):
    settings, store, data = install
    store.add_dead_letter("normaliser bug", SPAN_CAPTURE, {"signal": "traces", "tenant": "acme"})
    before = store.count()
    store.close()
    forged = _forge_dead_letter(data)
    code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data), "--json")
    genuine_view, forged_view = json.loads(out)["data"]
    assert genuine_view["authentic"] is True and genuine_view["replayable"]
    assert forged_view["id"] == str(forged) and forged_view["authentic"] is False and not forged_view["replayable"]
    assert "not authentic" in forged_view["not_authentic"]
    code, out, _ = run_cli(capsys, "dlq", "list", "--data-dir", str(data))
    assert "[NOT AUTHENTIC]" in out

    code, out, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data), "--id", str(forged))
    assert code == 1 and f"{forged}: not replayed: not authentic" in out
    code, out, err = run_cli(capsys, "dlq", "replay", "--data-dir", str(data))
    assert code == 1
    assert f"{genuine_view['id']}: stored" in out and f"{forged}: not replayed: not authentic" in out
    reopened = SqliteStore.in_dir(data)
    try:
        genuine_records = reopened.count() - before
        assert genuine_records > 0  # the genuine one was stored, the forged one (same payload) was not replayed
        with db(data) as conn:
            replayed = {r[0] for r in conn.execute("SELECT dead_letter_id FROM dead_letter_replays")}
        assert replayed == {int(genuine_view["id"])}
    finally:
        reopened.close()


def test_verify_names_every_unauthenticated_row(install, capsys):
    settings, store, data = install
    assert cli.main(["keys", "signing", "--create", "--data-dir", str(data)]) == 0
    key, info = store.create_key("acme", Role.ANALYST)
    store.secret("pseudonym")
    store.add_dead_letter("bug", b"payload", {"signal": "traces", "tenant": "acme"})
    code, out, err = run_cli(capsys, "verify", "--data-dir", str(data))
    assert code == 0, out + err
    with db(data) as conn:
        conn.execute("UPDATE api_keys SET tenant = 'globex' WHERE key_id = ?", (info.key_id,))
        conn.execute("UPDATE secrets SET value = ? WHERE name = 'pseudonym'", (b"\x00" * 32,))
    forged = _forge_dead_letter(data)
    code, out, err = run_cli(capsys, "verify", "--data-dir", str(data))
    assert code == 1
    failed = [line for line in out.splitlines() if "[unauthenticated]" in line]
    assert len(failed) == 3, out
    assert any(f"view api_keys row key {info.key_id}" in line and "does not verify" in line for line in failed)
    assert any("view secrets row secret pseudonym" in line for line in failed)
    assert any(f"view dead_letters row dead letter {forged}" in line and "MAC is missing" in line for line in failed)


def test_rows_present_when_the_row_key_is_made_are_trusted_then(tmp_path, caplog):
    data = tmp_path / "data"
    settings = load_settings(None, data_dir=data)
    old = SqliteStore.in_dir(data)  # a store of a version before row MACs: no row key
    key, info = old.create_key("acme", Role.ANALYST)
    secret = old.secret("pseudonym")
    old.add_dead_letter("bug", b"payload", {"signal": "traces"})
    old.close()
    with db(data) as conn:  # a store made before the mac column existed
        for table in ("api_keys", "secrets", "dead_letters"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN mac")
    assert not custody.row_key_path(settings).exists()
    with caplog.at_level(logging.WARNING, logger="aitrail.custody"):
        store = open_store(settings)
    try:
        assert any("3 API key, secret and dead-letter rows" in r.getMessage() for r in caplog.records)
        assert store.authenticate(key).tenant == "acme" and store.secret("pseudonym") == secret
        assert store.unauthenticated_rows() == [] and store.layout_problems() == []
    finally:
        store.close()
    # Once made, the key is never made again: a row added by hand later stays unauthenticated.
    with db(data) as conn:
        conn.execute("INSERT INTO secrets (name, value) VALUES ('subject:acme:alice', ?)", (b"\x02" * 32,))
    store = open_store(settings)
    try:
        assert [r.row for r in store.unauthenticated_rows()] == ["secret subject:acme:alice"]
    finally:
        store.close()


def test_a_store_authenticated_with_another_row_key_is_not_re_keyed(tmp_path):
    data = tmp_path / "data"
    settings = load_settings(None, data_dir=data)
    open_store(settings).close()  # the row key made, the pseudonym secret... not yet: add a row
    store = open_store(settings)
    store.create_key("acme", Role.ANALYST)
    store.close()
    custody.row_key_path(settings).unlink()  # this host lacks the key the rows were made with
    with pytest.raises(ConfigError) as refused:
        open_store(settings)
    assert "store-mac.key" in refused.value.message and "copy" in refused.value.message
    assert not custody.row_key_path(settings).exists()


# -- OpenSearch -------------------------------------------------------------------------------


@pytest.fixture
def opensearch_install(services, tmp_path, monkeypatch):
    from tests.conftest import drop_opensearch_layout

    prefix = f"rm{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AITRAIL_OPENSEARCH__URL", services.opensearch)
    monkeypatch.setenv("AITRAIL_OPENSEARCH__INDEX_PREFIX", prefix)
    settings = load_settings(None, data_dir=tmp_path / "data")
    store = open_store(settings)
    yield settings, store
    store.close()
    with contextlib.suppress(Exception):
        drop_opensearch_layout(services.opensearch, prefix)


@pytest.mark.services
def test_opensearch_keys_and_secrets_are_authenticated(opensearch_install):
    settings, store = opensearch_install
    assert store.row_mac is not None
    key, info = store.create_key("acme", Role.ANALYST)
    revoked, revoked_info = store.create_key("acme", Role.ANALYST)
    assert store.authenticate(key).tenant == "acme"
    assert store.revoke_key(revoked_info.key_id) and store.authenticate(revoked) is None
    genuine = store.secret("pseudonym")
    assert store.secret("pseudonym") == genuine and store.unauthenticated_rows() == []

    client = store._client  # noqa: SLF001 (the insider writes the index directly)
    client.update(index=store.keys_index, id=info.key_id, body={"doc": {"tenant": "globex"}}, refresh=True)
    client.update(index=store.keys_index, id=revoked_info.key_id, body={"doc": {"revoked_at": None}}, refresh=True)
    inserted = "atk_0badc0ffee01_" + "y" * 43
    client.index(index=store.keys_index, id="0badc0ffee01", refresh=True, body={
        "key_id": "0badc0ffee01", "key_hash": hash_key(inserted), "tenant": "globex", "role": "admin",
        "created_at": "2026-01-01T00:00:00.000Z"})
    client.update(index=store.secrets_index, id="pseudonym", body={"doc": {"value": "AA" * 22}}, refresh=True)
    for refused_key, key_id in ((key, info.key_id), (revoked, revoked_info.key_id), (inserted, "0badc0ffee01")):
        with pytest.raises(Unauthorized) as refused:
            store.authenticate(refused_key)
        assert f"key {key_id} is refused" in refused.value.message
    with pytest.raises(ConfigError) as stopped:
        store.secret("pseudonym")
    assert "'pseudonym'" in stopped.value.message
    assert {r.row for r in store.unauthenticated_rows()} == {
        f"key {info.key_id}", f"key {revoked_info.key_id}", "key 0badc0ffee01", "secret pseudonym"}


# -- Kafka: the dead-letter topic ----------------------------------------------------------


@pytest.mark.services
def test_a_forged_kafka_dead_letter_is_not_replayed(services, tmp_path, monkeypatch, capsys):
    import asyncio

    from aiokafka import AIOKafkaProducer

    from aitrail.bus.base import BusMessage, Signal
    from aitrail.bus.kafka import REASON_HEADER, SIGNAL_HEADER, TENANT_HEADER, KafkaBus, ensure_topics
    from tests.conftest import drop_opensearch_layout

    tag = uuid.uuid4().hex[:8]
    for name, value in {
        "AITRAIL_KAFKA__BOOTSTRAP_SERVERS": services.kafka, "AITRAIL_KAFKA__TOPIC": f"r{tag}.spans",
        "AITRAIL_KAFKA__DLQ_TOPIC": f"r{tag}.spans.dlq", "AITRAIL_KAFKA__GROUP_ID": f"g-r{tag}",
        "AITRAIL_OPENSEARCH__URL": services.opensearch, "AITRAIL_OPENSEARCH__INDEX_PREFIX": f"r{tag}",
        "AITRAIL_DATA_DIR": str(tmp_path / "data"),
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None)
    asyncio.run(ensure_topics(settings.kafka))
    try:
        code, out, err = run_cli(capsys, "dlq", "list", "--json")
        assert code == 0 and json.loads(out)["count"] == 0
        store = open_store(settings)  # as the collector does: the row key is made
        store.close()

        async def write() -> None:
            bus = KafkaBus(settings.kafka, produce=True)
            bus.row_mac = custody.load_row_key(settings)
            async with bus:
                await bus._dead_letter(BusMessage(Signal.TRACES, SPAN_CAPTURE, tenant="acme",  # noqa: SLF001
                                                  headers={TENANT_HEADER: "acme"}), "normaliser bug")
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
            await producer.start()
            try:  # the insider's: a forged OTLP payload with plausible headers, and no (or a copied) MAC
                await producer.send_and_wait(settings.kafka.dlq_topic, SPAN_CAPTURE + b"", headers=[
                    (TENANT_HEADER, b"acme"), (SIGNAL_HEADER, b"traces"), (REASON_HEADER, b"normaliser bug")])
            finally:
                await producer.stop()

        asyncio.run(write())
        code, out, err = run_cli(capsys, "dlq", "list", "--json")
        genuine, forged = sorted(json.loads(out)["data"], key=lambda d: not d["authentic"])
        assert genuine["authentic"] is True and genuine["replayable"]
        assert forged["authentic"] is False and "carries no MAC" in forged["not_authentic"]
        code, out, err = run_cli(capsys, "dlq", "replay", "--wait", "0")
        assert code == 1, (out, err)
        assert f"{forged['id']}: not replayed: not authentic" in out and f"{genuine['id']}: submitted" in out
        code, out, err = run_cli(capsys, "dlq", "replay", "--id", forged["id"], "--wait", "0")
        assert code == 1 and f"{forged['id']}: not replayed: not authentic" in out
    finally:
        with contextlib.suppress(Exception):
            drop_opensearch_layout(services.opensearch, f"r{tag}")


@pytest.mark.services
def test_opensearch_rows_present_when_the_row_key_is_made_are_trusted_then(services, tmp_path, monkeypatch):
    from aitrail.store.opensearch import OpenSearchStore
    from tests.conftest import drop_opensearch_layout

    prefix = f"rm{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AITRAIL_OPENSEARCH__URL", services.opensearch)
    monkeypatch.setenv("AITRAIL_OPENSEARCH__INDEX_PREFIX", prefix)
    settings = load_settings(None, data_dir=tmp_path / "data")
    old = OpenSearchStore.from_settings(settings.opensearch)  # as a version before row MACs wrote them
    try:
        key, info = old.create_key("acme", Role.AUDITOR)
        secret = old.secret("pseudonym")
        assert not custody.row_key_path(settings).exists()
        store = open_store(settings)
        try:
            assert store.authenticate(key).tenant == "acme" and store.secret("pseudonym") == secret
            assert store.unauthenticated_rows() == []
            old.create_key("globex", Role.ADMIN)  # written without a MAC after the key was made: refused
            assert [r.row.split()[0] for r in store.unauthenticated_rows()] == ["key"]
        finally:
            store.close()
    finally:
        old.close()
        with contextlib.suppress(Exception):
            drop_opensearch_layout(services.opensearch, prefix)
