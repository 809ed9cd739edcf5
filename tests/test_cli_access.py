"""Reads through the `aitrail` command are logged, naming the operating-system user, in a log
of the command's own per tenant and host, sealed and signed; concurrent runs never fork it."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys

from aitrail.cli import main
from aitrail.cli_access import cli_log_id, record_cli_read
from aitrail.custody import access_key_path, trusted_verifiers
from aitrail.integrity.note import open_checkpoint
from aitrail.integrity.verify import verify_log
from aitrail.query_api.service import QueryService
from aitrail.settings import load_settings
from aitrail.store.base import Principal, Role
from aitrail.store.sqlite import SqliteStore
from tests.conftest import REPO
from tests.factories import completion, iso, retrieval

TENANT = "default"


def seeded(tmp_path) -> str:
    store = SqliteStore.in_dir(tmp_path)
    store.write([
        completion(TENANT, trace=7, time=iso(24, 7, 30), answer="See the refund policy."),
        retrieval(TENANT, trace=7, span=2, start_time=iso(24, 7, 29)),
    ])
    store.close()
    return f"{7:032x}"


def cli_entries(tmp_path, tenant: str = TENANT) -> list:
    store = SqliteStore.in_dir(tmp_path)
    try:
        return list(store.records_in_log(cli_log_id(tenant)))
    finally:
        store.close()


def test_answers_and_replay_are_logged_naming_the_os_user(tmp_path, capsys):
    trace_id = seeded(tmp_path)
    assert main(["answers", "--q", "refund", "--data-dir", str(tmp_path), "--json"]) == 0
    shown = [a["record_id"] for a in json.loads(capsys.readouterr().out)["data"]]
    assert main(["replay", trace_id, "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    answers, replay = cli_entries(tmp_path)
    assert answers.kind == replay.kind == "access" and answers.tenant == TENANT
    who = {"os_user": getpass.getuser(), "uid": os.getuid(), "host": socket.gethostname()}
    for entry in (answers, replay):
        assert {k: entry.details["cli"][k] for k in who} == who and entry.details["cli"]["pid"] > 0
        assert entry.details["key_id"] == f"cli:{who['os_user']}@{who['host']}" and entry.details["status"] == 200
    assert answers.details["endpoint"] == "cli:answers" and answers.details["ids"] == shown and shown
    assert answers.details["query"]["q"] == "refund"
    assert replay.details["endpoint"] == "cli:replay" and replay.details["query"] == {"trace_id": trace_id}
    assert len(replay.details["ids"]) == 2


def test_the_cli_log_is_its_own_sealed_and_signed(tmp_path, capsys):
    seeded(tmp_path)
    assert main(["answers", "--data-dir", str(tmp_path)]) == 0
    settings = load_settings(None, data_dir=tmp_path)
    store = SqliteStore.in_dir(tmp_path)
    try:
        log_id = cli_log_id(TENANT)
        assert log_id == f"{TENANT}/access.cli-{socket.gethostname()}"
        # only the command's log: never the server's `<tenant>/local` (two writers would fork it)
        assert store.log_ids() == [log_id]
        state = store.log_state(log_id)
        assert state.size == 1 and state.last_checkpoint_size == 1  # signed before the command ended
        checkpoint = store.latest_checkpoint(log_id)
        key = access_key_path(settings)
        assert key.exists() and not str(key).startswith(str(tmp_path))  # signed with the access key, kept outside
        open_checkpoint(checkpoint.note, trusted_verifiers(settings))
        report = verify_log(store, trusted_verifiers(settings), log_id)
        assert report.ok and report.records_checked == 1, report.failures
    finally:
        store.close()


def test_a_refused_read_is_logged_too(tmp_path, capsys):
    seeded(tmp_path)
    assert main(["replay", "f" * 32, "--data-dir", str(tmp_path)]) == 2
    assert "no trace" in capsys.readouterr().err
    assert main(["answers", "--at", "the day after never", "--data-dir", str(tmp_path)]) == 2
    missing, unreadable = cli_entries(tmp_path)
    assert missing.details["status"] == 404 and missing.details["reason"].startswith("no trace")
    assert unreadable.details["status"] == 400 and "cannot read the time" in unreadable.details["reason"]
    assert missing.details["ids"] == unreadable.details["ids"] == []


def test_a_read_that_cannot_be_logged_is_not_shown(tmp_path, capsys, monkeypatch):
    seeded(tmp_path)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "locks").write_text("a file where the lock folder should be")
    monkeypatch.setenv("AITRAIL_INTEGRITY__KEYS_DIR", str(keys))
    assert main(["answers", "--q", "refund", "--data-dir", str(tmp_path), "--json"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "could not be written to the access log" in out.err
    assert cli_entries(tmp_path) == []


def test_concurrent_runs_append_one_after_another(tmp_path):
    seeded(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITRAIL_")}
    runs = [subprocess.Popen([sys.executable, "-m", "aitrail.cli", "answers", "--q", "refund", "--json",
                              "--data-dir", str(tmp_path)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for _ in range(6)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err.decode()
        assert json.loads(out)["count"] == 1
    entries = cli_entries(tmp_path)
    assert [e.leaf_index for e in entries] == list(range(6))
    assert len({e.details["cli"]["pid"] for e in entries}) == 6
    settings = load_settings(None, data_dir=tmp_path)
    store = SqliteStore.in_dir(tmp_path)
    try:
        report = verify_log(store, trusted_verifiers(settings), cli_log_id(TENANT))
        assert report.ok and report.records_checked == 6 and report.verified_size == 6, report.failures
    finally:
        store.close()


def test_cli_reads_show_in_the_api_access_log(tmp_path, capsys):
    trace_id = seeded(tmp_path)
    assert main(["replay", trace_id, "--data-dir", str(tmp_path)]) == 0
    settings = load_settings(None, data_dir=tmp_path)
    record_cli_read(settings, tenant=TENANT, command="verify --record", query={"record": "ab" * 16}, ids=["ab" * 16])
    store = SqliteStore.in_dir(tmp_path)
    try:
        entries = QueryService(store, pseudonymise=str).access_log(
            Principal("k", TENANT, Role.AUDITOR), start=None, end=None, tz=None, limit=10, cursor=None,
        ).data
    finally:
        store.close()
    assert [e.endpoint for e in entries] == ["cli:verify --record", "cli:replay"]
    assert entries[1].cli["os_user"] == getpass.getuser() and entries[1].status == 200


def test_a_read_whose_entry_the_store_refuses_is_not_shown(tmp_path, capsys, monkeypatch):
    """Per-record outcomes: a store that refuses the access record (rather than failing the
    write) must stop the read as surely as a failed write."""
    from aitrail.store.base import RecordsRejected

    seeded(tmp_path)
    real_write = SqliteStore.write

    def refusing(self, records, *args, **kwargs):  # as the stores refuse sealed records
        if any(r.kind == "access" for r in records):
            raise RecordsRejected({r.record_id: "value out of range" for r in records}, len(records))
        return real_write(self, records, *args, **kwargs)

    monkeypatch.setattr(SqliteStore, "write", refusing)
    assert main(["answers", "--q", "refund", "--data-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "could not be written to the access log" in captured.err and "value out of range" in captured.err
