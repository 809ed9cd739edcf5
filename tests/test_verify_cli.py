"""`aitrail verify` against the store's own operator: whoever can write the data folder or the
indices rolls the store back, truncates a log, wipes it, forks it with a new key, or strips a
record's content; verify names it against the checkpoints kept outside the store (the mirror,
an auditor's --trusted file). Exit codes: 0 verified, 1 tampering or loss found, 2 could not
check. verify writes nothing (it runs on a read-only copy)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from aitrail.cli import main
from aitrail.collector.sequencing import Sequencing
from aitrail.custody import CheckpointMirror, ensure_signing_key
from aitrail.integrity import merkle
from aitrail.integrity.leaf import erase
from aitrail.integrity.note import Signer
from aitrail.integrity.system import system_record
from aitrail.schemas.canonical import canonical_json, record_from_json
from aitrail.schemas.record import Kind
from aitrail.settings import load_settings
from aitrail.store.sqlite import SqliteStore
# At import (collection) time: importing tests.conftest runs it again as another module, which
# points XDG_CONFIG_HOME (the signing keys) at a new folder; later, mid-test, keys would vanish.
from tests.conftest import _opensearch
from tests.factories import completion, iso

TENANT = "acme"
ERASED_AT = "2026-11-26T00:00:00.000000000Z"


def records(first: int, count: int, answer: str = "Refunds within 30 days."):
    return [
        completion(TENANT, trace=1000 + i, time=iso(24, 7, i % 60), user=f"u_{i % 3}", answer=f"{answer} #{i}")
        for i in range(first, first + count)
    ]


class SqliteBackend:
    """What someone holding the data folder can do to the SQLite file."""

    name = "sqlite"

    def __init__(self, install: Install) -> None:
        self.install = install

    def open(self):
        return SqliteStore.in_dir(self.install.data)

    def env(self) -> dict[str, str]:
        return {}

    def conn(self):
        conn = self.install.store._conn()
        conn.execute("DROP TRIGGER IF EXISTS records_append_only")
        return conn

    def backup(self) -> Path:
        path = self.install.tmp / f"backup-{len(list(self.install.tmp.glob('backup-*')))}.db"
        self.install.store._conn().execute("VACUUM INTO ?", (str(path),))
        return path

    def restore(self, backup: Path) -> None:
        self.install.store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.install.data / 'aitrail.db'}{suffix}").unlink(missing_ok=True)
        shutil.copy(backup, self.install.data / "aitrail.db")
        self.install.store = self.open()

    def truncate(self, log_id: str, size: int, state) -> None:
        conn = self.conn()
        conn.execute("DELETE FROM records WHERE log_id = ? AND leaf_index >= ?", (log_id, size))
        conn.execute("DELETE FROM checkpoints WHERE log_id = ? AND size > ?", (log_id, size))
        conn.execute("DELETE FROM merkle_nodes WHERE log_id = ? AND (idx + 1) << level > ?", (log_id, size))
        conn.execute("UPDATE logs SET state = ? WHERE log_id = ?", (json.dumps(state.to_dict()), log_id))

    def wipe(self) -> None:
        conn = self.conn()
        tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if table == "answers_fts":  # contentless full-text index
                conn.execute("INSERT INTO answers_fts (answers_fts) VALUES ('delete-all')")
            elif not table.startswith("answers_fts_"):
                conn.execute(f"DELETE FROM {table}")

    def replace_with(self, forged_store) -> None:
        """The attacker's rebuilt store takes the place of the real one."""
        forged_store.close()
        self.restore(Path(forged_store.path))

    def new_store(self):
        return SqliteStore(self.install.tmp / f"forged-{os.urandom(4).hex()}.db")

    def replace_record(self, record) -> None:
        """The record's body replaced, and what the store derives from it derived again, the
        way an erasure must (content gone from the answers view too); the append-only trigger
        is put back after, so only the record is different."""
        from aitrail.store.sqlite import _UPSERT_ANSWER, _answer_row

        conn = self.conn()
        conn.execute("UPDATE records SET body = ? WHERE record_id = ?", (canonical_json(record), record.record_id))
        if record.kind == "completion":
            key = (record.tenant, record.trace_id, record.span_id)
            found = conn.execute("SELECT id, terms FROM answers WHERE tenant = ? AND trace_id = ? AND span_id = ?",
                                 key).fetchone()
            if found is not None:
                if found[1] is not None:
                    conn.execute("INSERT INTO answers_fts (answers_fts, rowid, terms) VALUES ('delete', ?, ?)", found)
                conn.execute("DELETE FROM answers WHERE id = ?", (found[0],))
            bodies = conn.execute("SELECT body FROM records WHERE tenant = ? AND trace_id = ? AND span_id = ? "
                                  "AND kind = 'completion' ORDER BY seq", key).fetchall()
            for (body,) in bodies:
                conn.execute(_UPSERT_ANSWER, _answer_row(record_from_json(body)))
        conn.execute("CREATE TRIGGER IF NOT EXISTS records_append_only BEFORE UPDATE ON records "
                     "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END")


class OpenSearchBackend:
    """What someone with write access to the cluster can do (delete, re-index, swap indices)."""

    name = "opensearch"

    def __init__(self, install: Install) -> None:
        self.install = install
        self.request = install.request

    def open(self):
        return _opensearch(self.request)

    def env(self) -> dict[str, str]:
        store = self.install.store
        return {"AITRAIL_OPENSEARCH__URL": self.request.getfixturevalue("services").opensearch,
                "AITRAIL_OPENSEARCH__INDEX_PREFIX": store.prefix}

    @property
    def client(self):
        return self.install.store._client

    def _all(self) -> str:
        return f"{self.install.store.prefix}-*"

    def backup(self) -> list[tuple[str, str, dict]]:
        from opensearchpy.helpers import scan

        self.client.indices.refresh(index=self._all())
        return [(h["_index"], h["_id"], h["_source"]) for h in scan(self.client, index=self._all(),
                                                                     query={"query": {"match_all": {}}})]

    def wipe(self) -> None:
        self.client.indices.refresh(index=self._all())  # delete_by_query only sees refreshed documents
        self.client.delete_by_query(index=self._all(), body={"query": {"match_all": {}}},
                                    params={"refresh": "true", "conflicts": "proceed"})

    def restore(self, docs) -> None:
        from opensearchpy.helpers import bulk

        self.wipe()
        bulk(self.client, ({"_index": i, "_id": d, "_source": s} for i, d, s in docs), refresh=True)

    def truncate(self, log_id: str, size: int, state) -> None:
        store = self.install.store
        doomed = [(i, d) for i, d, s in self.backup() if s.get("log_id") == log_id and (
            (i.startswith(f"{store.prefix}-records") and s.get("leaf_index", -1) >= size)
            or (i == store.checkpoints_index and s["size"] > size)
            or (i == store.nodes_index and (int(d.rsplit("/", 2)[2]) + 1) << int(d.rsplit("/", 2)[1]) > size)
        )]
        for index, doc_id in doomed:
            self.client.delete(index=index, id=doc_id)
        self.client.index(index=store.logs_index, id=log_id, body=state.to_dict())
        self.client.indices.refresh(index=self._all())

    def new_store(self):
        return self.open()

    def replace_with(self, forged_store) -> None:
        self.install.store = forged_store  # the indices verify reads are now the forged ones


BACKENDS = {"sqlite": SqliteBackend, "opensearch": OpenSearchBackend}


class Install:
    """One installation: a data folder, its signing key outside it (custody), the mirror in a
    folder of its own, and 40 records sealed through the real sequencing path, checkpoints
    every 8 leaves."""

    def __init__(self, tmp_path: Path, monkeypatch, request, backend: str) -> None:
        self.tmp, self.request = tmp_path, request
        self.data, self.mirror_dir = tmp_path / "data", tmp_path / "mirror"
        monkeypatch.setenv("AITRAIL_INTEGRITY__CHECKPOINT_DIR", str(self.mirror_dir))
        self.backend = BACKENDS[backend](self)
        self.settings = load_settings(None, data_dir=self.data)
        self.signer = ensure_signing_key(self.settings)
        self.vkey = self.signer.verifier().to_vkey()
        self.store = self.backend.open()
        self.monkeypatch = monkeypatch
        self.sequencing = self.sequencer(self.store, self.signer, mirror=True)
        self.written = records(0, 40)
        self.write(self.written)
        (self.log_id,) = self.store.log_ids()

    def sequencer(self, store, signer, *, mirror: bool) -> Sequencing:
        return Sequencing(
            store, signer, signer.name, checkpoint_every=8, checkpoint_interval_s=0,
            checkpoint_file=CheckpointMirror(self.mirror_dir) if mirror else None,
        )

    def write(self, batch, sequencing=None) -> None:
        sequencing = sequencing or self.sequencing
        for first in range(0, len(batch), 8):
            sequencing.write(batch[first : first + 8])

    def keep_trusted(self, form: str) -> Path:
        """What an auditor saves: the JSON of GET /v1/checkpoints/latest, or every note."""
        from aitrail.query_api.service import CheckpointOut, CheckpointsOut

        path = self.tmp / f"trusted-{form}.txt"
        if form == "json":  # the endpoint's own response model, as the auditor's client saved it
            cp = self.store.latest_checkpoint(self.log_id)
            latest = CheckpointsOut(data=[CheckpointOut(log_id=cp.log_id, size=cp.size, root_hash=cp.root_hash.hex(),
                                                        signed_at=cp.signed_at, note=cp.note)])
            path.write_text(latest.model_dump_json(indent=2))
        else:
            path.write_text("\n".join(cp.note for cp in self.store.checkpoints(self.log_id)))
        return path

    def state_at(self, size: int):
        """A log state consistent with the first `size` records: what a careful attacker writes."""
        rng = merkle.CompactRange()
        rng.extend(bytes.fromhex(r.leaf_hash) for r in sorted(
            self.store.records_in_log(self.log_id), key=lambda r: r.leaf_index)[:size])
        return replace(self.store.log_state(self.log_id), size=size, compact_range=rng.to_bytes(),
                       last_checkpoint_size=size, source_position=None)

    def delete_mirror(self) -> None:
        shutil.rmtree(self.mirror_dir)

    def verify(self, capsys, *extra: str) -> tuple[int, str, str]:
        for name, value in self.backend.env().items():
            self.monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = main(["verify", "--data-dir", str(self.data), *extra])
        out = capsys.readouterr()
        return code, out.out, out.err


@pytest.fixture(params=sorted(BACKENDS))
def install(request, tmp_path, monkeypatch):
    inst = Install(tmp_path, monkeypatch, request, request.param)
    yield inst
    inst.store.close()


@pytest.fixture
def sqlite_install(request, tmp_path, monkeypatch):
    inst = Install(tmp_path, monkeypatch, request, "sqlite")
    yield inst
    inst.store.close()


def failed(out: str, log_id: str, kind: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"FAILED {log_id} [{kind}]")]


# --- the attacks, with the mirror intact and with only an auditor's file -----------------------


def test_untouched_store_verifies_against_mirror_and_trusted_files(install, capsys):
    trusted = [install.keep_trusted("json"), install.keep_trusted("notes")]
    code, out, err = install.verify(capsys, "--trusted", str(trusted[0]), "--trusted", str(trusted[1]))
    assert code == 0, out + err
    # 5 mirrored + the newest one in the JSON + all 5 notes
    assert f"log {install.log_id}: OK" in err and "11 kept outside the store" in err
    code, _, _ = install.verify(capsys, "--public-key", install.vkey)
    assert code == 0


@pytest.mark.parametrize("kept", ["mirror", "trusted-json", "trusted-notes"])
def test_restoring_an_older_backup_is_a_rollback(install, capsys, kept):
    backup = install.backend.backup()  # 40 leaves
    install.write(records(40, 24))  # 64 leaves, checkpoints to 64
    options = _keep(install, kept)
    install.backend.restore(backup)
    code, out, err = install.verify(capsys, *options)
    assert code == 1, out + err
    (line,) = failed(out, install.log_id, "rolled_back")
    assert "size 64" in line and "40 leaves" in line
    assert ("mirror" in line) if kept == "mirror" else ("trusted file" in line)
    if kept == "mirror":
        assert failed(out, install.log_id, "mirror_missing")


@pytest.mark.parametrize("kept", ["mirror", "trusted-json"])
def test_restoring_a_backup_and_writing_on_is_a_fork(install, capsys, kept):
    backup = install.backend.backup()
    install.write(records(40, 24))
    options = _keep(install, kept)
    install.backend.restore(backup)
    # the service restarts on the restored store and seals other records at the same leaves
    again = install.sequencer(install.store, install.signer, mirror=False)
    install.write(records(100, 24, answer="Different"), again)
    code, out, err = install.verify(capsys, *options)
    assert code == 1, out + err
    assert failed(out, install.log_id, "forked")
    assert not failed(out, install.log_id, "rolled_back")


@pytest.mark.parametrize("kept", ["mirror", "trusted-notes"])
def test_truncating_a_log_with_its_checkpoints_and_state(install, capsys, kept):
    options = _keep(install, kept)
    install.backend.truncate(install.log_id, 24, install.state_at(24))
    if kept == "mirror":
        assert failed(install.verify(capsys, "--log", install.log_id)[1], install.log_id, "mirror_missing")
    code, out, err = install.verify(capsys, *options)
    assert code == 1, out + err
    (line,) = failed(out, install.log_id, "rolled_back")
    assert "size 40" in line and "24 leaves" in line and "records up to leaf 23" in line


@pytest.mark.parametrize("kept", ["mirror", "trusted-json"])
def test_wiping_every_table_is_loss_not_no_logs(install, capsys, kept):
    options = _keep(install, kept)
    install.backend.wipe()
    code, out, err = install.verify(capsys, *options)
    assert code == 1, out + err
    (line,) = failed(out, install.log_id, "log_missing")
    assert "missing from the store entirely" in line
    assert "no logs to verify" not in err


def test_dropping_every_table_is_loss(sqlite_install, capsys):
    conn = sqlite_install.backend.conn()
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'answers_fts_%'")
    for (table,) in tables.fetchall():
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    code, out, err = sqlite_install.verify(capsys)
    assert code == 1, out + err
    assert failed(out, sqlite_install.log_id, "log_missing")


@pytest.mark.parametrize("kept", ["mirror", "trusted-json", "trusted-notes"])
def test_a_log_rebuilt_and_resigned_with_a_new_key_is_a_fork(install, capsys, kept):
    options = _keep(install, kept)
    # The attacker rebuilds the log with one answer edited and signs it with a key of their
    # own (same name, so origins look right), left in the data folder.
    from aitrail.integrity.keys import create_signing_key

    evil = create_signing_key(install.data / "keys", "log-signing", key_name=install.signer.name)
    forged = install.backend.new_store()
    edited = list(install.written)
    edited[13] = edited[13].model_copy(update={"answer": "Refunds are never possible.", "response_model": "o1"})
    install.write(edited, install.sequencer(forged, evil, mirror=False))
    install.backend.replace_with(forged)
    for pinned in ((), ("--public-key", install.vkey)):
        code, out, err = install.verify(capsys, *options, *pinned)
        assert code == 1, out + err
        (line,) = failed(out, install.log_id, "forked")
        assert "mirror" in line if kept == "mirror" else "trusted file" in line
        assert failed(out, install.log_id, "bad_checkpoint")  # the store's checkpoints: an unknown key
    # the forged key only vouches for itself
    # pinning the forger's key: the kept checkpoints are not signed by it
    code, out, err = install.verify(capsys, *options, "--public-key", evil.verifier().to_vkey())
    assert code == 1 and any("kept in" in line for line in failed(out, install.log_id, "bad_checkpoint"))


def _keep(install: Install, kept: str) -> list[str]:
    """Where the evidence survives: the mirror, or (mirror deleted) an auditor's file saved now."""
    if kept == "mirror":
        return []
    path = install.keep_trusted(kept.split("-")[1])
    install.delete_mirror()
    return ["--trusted", str(path)]


# --- other installations, forged kept checkpoints -------------------------------------------------


def test_other_installations_entries_are_ignored(sqlite_install, capsys, tmp_path):
    other = Signer.generate("aitrail/feedfacecafe")
    neighbour = SqliteStore(tmp_path / "neighbour.db")
    Sequencing(neighbour, other, other.name, checkpoint_every=8, checkpoint_interval_s=0,
               checkpoint_file=CheckpointMirror(sqlite_install.mirror_dir)).write(records(0, 9))
    trusted = tmp_path / "neighbour.txt"
    trusted.write_text("".join(cp.note for cp in neighbour.checkpoints(neighbour.log_ids()[0])))
    neighbour.close()
    code, out, err = sqlite_install.verify(capsys, "--trusted", str(trusted))
    assert code == 0, out + err
    assert err.count("log ") == 1  # only our log


def test_a_forged_kept_checkpoint_is_rejected(sqlite_install, capsys, tmp_path):
    from aitrail.integrity.note import Checkpoint, sign_checkpoint

    forger = Signer.generate(sqlite_install.signer.name)
    note = sign_checkpoint(Checkpoint(f"{sqlite_install.signer.name}/{sqlite_install.log_id}", 48, bytes(32)), forger)
    path = tmp_path / "forged.txt"
    path.write_text(note)
    code, out, err = sqlite_install.verify(capsys, "--trusted", str(path))
    assert code == 1
    (line,) = failed(out, sqlite_install.log_id, "bad_checkpoint")
    assert "forged.txt" in line


def test_legacy_checkpoint_file_in_the_data_folder_is_read(sqlite_install, capsys):
    inst = sqlite_install
    legacy = inst.data / "checkpoints" / f"{inst.log_id}.jsonl"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text("".join(json.dumps(cp.to_dict()) + "\n" for cp in inst.store.checkpoints(inst.log_id)))
    inst.delete_mirror()
    inst.backend.truncate(inst.log_id, 16, inst.state_at(16))
    code, out, err = inst.verify(capsys)
    assert code == 1, out + err
    (line,) = failed(out, inst.log_id, "rolled_back")
    assert "checkpoint file" in line


def test_record_and_log_selectors_still_work(install, capsys):
    victim = install.written[7]
    code, out, err = install.verify(capsys, "--record", victim.record_id, "--tenant", TENANT)
    assert code == 0 and f"record {victim.record_id}: verified" in out
    code, out, err = install.verify(capsys, "--log", install.log_id)
    assert code == 0 and f"log {install.log_id}: OK" in err
    code, out, err = install.verify(capsys, "--log", "nobody/local")
    assert code == 2 and "no log nobody/local" in err


def test_verify_record_is_an_access_logged_read(install, capsys):
    from aitrail.cli_access import cli_log_id

    victim = install.written[3]
    code, out, err = install.verify(capsys, "--record", victim.record_id, "--tenant", TENANT)
    assert code == 0 and "not in the access log" not in err, err
    code, _, err = install.verify(capsys, "--record", "no-such-record", "--tenant", TENANT)
    assert code == 2 and "no record no-such-record" in err
    if hasattr(install.store, "settle"):
        install.store.settle()
    served, refused = install.store.records_in_log(cli_log_id(TENANT))
    assert served.details["endpoint"] == refused.details["endpoint"] == "cli:verify --record"
    assert served.details["ids"] == [victim.record_id] and served.details["status"] == 200
    assert refused.details["ids"] == [] and refused.details["status"] == 404
    assert served.details["cli"]["os_user"] and served.details["key_id"].startswith("cli:")
    # the command's own log is sealed and checkpointed like the others: the store still verifies
    code, out, err = install.verify(capsys)
    assert code == 0, out + err
    assert f"log {cli_log_id(TENANT)}: OK" in err


# --- absent content needs a sealed reason --------------------------------------------------------


def _strip(inst: Install, record_id: str):
    """Remove a record's content as an erasure does, now (after any reason appended before)."""
    import time

    from aitrail.schemas.timefmt import ns_to_iso

    stored = inst.store.get(TENANT, record_id)
    inst.backend.replace_record(erase(stored, max(ERASED_AT, ns_to_iso(time.time_ns()))))
    return stored


def test_fake_erasure_is_named(sqlite_install, capsys):
    inst = sqlite_install
    victim = inst.written[9]
    _strip(inst, victim.record_id)
    code, out, err = inst.verify(capsys)
    assert code == 1, out + err
    (line,) = failed(out, inst.log_id, "unexplained_erasure")
    assert f"record {victim.record_id}" in line and "no sealed erasure" in line
    code, out, _ = inst.verify(capsys, "--record", victim.record_id, "--tenant", TENANT)
    assert code == 1 and "unexplained_erasure" in out
    # the replay shows it failed, not erased
    from aitrail.custody import trusted_verifiers
    from aitrail.query_api.integrity import Proofs

    report = Proofs(inst.store, trusted_verifiers(inst.settings)).report([inst.store.get(TENANT, victim.record_id)])
    assert report["status"] == "failed" and report["records"][victim.record_id]["status"] == "failed"


def test_real_erasure_verifies_and_is_reported_erased(sqlite_install, capsys):
    inst = sqlite_install
    subject = "u_1"
    erasure = system_record(Kind.ERASURE, TENANT, {"subject": subject}, at="2026-11-25T12:00:00.000000000Z")
    later = records(40, 6)  # sealed after the erasure record: not covered by it
    inst.write([erasure])
    inst.write(later)
    erased = [r for r in inst.written if r.user_pseudonym == subject]
    for record in erased:
        _strip(inst, record.record_id)
    code, out, err = inst.verify(capsys)
    assert code == 0, out + err
    assert f"{len(erased)} erased" in err
    code, out, _ = inst.verify(capsys, "--record", erased[0].record_id, "--tenant", TENANT)
    assert code == 0 and "erased" in out and erasure.record_id in out

    from aitrail.custody import trusted_verifiers
    from aitrail.query_api.integrity import Proofs

    proofs = Proofs(inst.store, trusted_verifiers(inst.settings))
    report = proofs.report([inst.store.get(TENANT, r.record_id) for r in erased[:3]])
    assert report["status"] == "verified"
    assert {s["status"] for s in report["records"].values()} == {"erased"}

    # the same subject's record sealed after the erasure record, stripped: not explained
    after = next(r for r in later if r.user_pseudonym == subject)
    _strip(inst, after.record_id)
    code, out, err = inst.verify(capsys)
    assert code == 1
    (line,) = failed(out, inst.log_id, "unexplained_erasure")
    assert after.record_id in line


def test_retention_record_covers_the_ids_it_lists(sqlite_install, capsys):
    inst = sqlite_install
    listed, unlisted = inst.written[3], inst.written[4]
    inst.write([system_record(Kind.RETENTION, TENANT, {"record_ids": [listed.record_id]})])
    _strip(inst, listed.record_id)
    assert inst.verify(capsys)[0] == 0
    _strip(inst, unlisted.record_id)
    code, out, _ = inst.verify(capsys)
    assert code == 1 and [unlisted.record_id in line for line in failed(out, inst.log_id, "unexplained_erasure")] == [True]


def test_an_erasure_record_outside_the_signed_tree_explains_nothing(sqlite_install, capsys):
    inst = sqlite_install
    victim = inst.written[2]
    # forged: an erasure record claiming a leaf, inserted behind the sequencer's back
    forged = system_record(Kind.ERASURE, TENANT, {"record_ids": [victim.record_id]}).model_copy(
        update={"log_id": inst.log_id, "leaf_index": 39, "leaf_hash": "00" * 32, "content_commitment": "00" * 32,
                "content_salt": "00" * 32})
    inst.backend.conn().execute(
        "INSERT INTO records (record_id, tenant, kind, origin, trace_id, span_id, start_time, log_id, leaf_index, body)"
        " VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?)",
        (forged.record_id, TENANT, "erasure", "system", forged.start_time, inst.log_id, 39, canonical_json(forged)))
    _strip(inst, victim.record_id)
    code, out, _ = inst.verify(capsys)
    assert code == 1
    (line,) = failed(out, inst.log_id, "unexplained_erasure")
    assert victim.record_id in line and forged.record_id in line and "does not verify" in line


# --- exit codes -----------------------------------------------------------------------------------


def test_nothing_anywhere_is_no_logs_and_exit_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AITRAIL_INTEGRITY__CHECKPOINT_DIR", str(tmp_path / "mirror"))
    SqliteStore.in_dir(tmp_path / "data").close()
    vkey = Signer.generate("aitrail/000000000000").verifier().to_vkey()
    assert main(["verify", "--data-dir", str(tmp_path / "data"), "--public-key", vkey]) == 0
    assert "no logs to verify" in capsys.readouterr().err
    assert not (tmp_path / "mirror").exists()


@pytest.mark.parametrize("case", ["no store", "not a database", "no key", "trusted missing", "trusted garbage",
                                  "mirror garbage", "unexpected"])
def test_could_not_check_is_exit_2_with_a_sentence(sqlite_install, capsys, monkeypatch, case, tmp_path):
    inst = sqlite_install
    args = ["verify", "--data-dir", str(inst.data)]
    if case == "no store":
        args = ["verify", "--data-dir", str(tmp_path / "elsewhere"), "--public-key", inst.vkey]
        want = "no SQLite store"
    elif case == "not a database":
        inst.store.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{inst.data / 'aitrail.db'}{suffix}").unlink(missing_ok=True)
        (inst.data / "aitrail.db").write_bytes(b"this is not SQLite" * 512)
        want = "not a database"
    elif case == "no key":
        args = ["verify", "--data-dir", str(tmp_path / "fresh")]
        SqliteStore.in_dir(tmp_path / "fresh").close()
        want = "no public key"
    elif case == "trusted missing":
        args += ["--trusted", str(tmp_path / "absent.json")]
        want = "cannot read trusted file"
    elif case == "trusted garbage":
        (tmp_path / "garbage.json").write_text("{oops")
        args += ["--trusted", str(tmp_path / "garbage.json")]
        want = "not valid JSON"
    elif case == "mirror garbage":
        (mirror_file,) = inst.mirror_dir.glob("*.jsonl")
        mirror_file.write_text(mirror_file.read_text() + "not json\n")
        want = "cannot read the checkpoint mirror"
    else:
        import aitrail.integrity.verify as verify_module

        def boom(*_a, **_k):
            raise RuntimeError("a bug")

        monkeypatch.setattr(verify_module, "verify_logs", boom)
        want = "could not check: RuntimeError: a bug"
    capsys.readouterr()
    assert main(args) == 2
    out = capsys.readouterr()
    assert want in out.err and "Traceback" not in out.err + out.out and "FAILED" not in out.out


def test_opensearch_unreachable_is_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AITRAIL_OPENSEARCH__URL", "http://127.0.0.1:9")
    vkey = Signer.generate("aitrail/000000000000").verifier().to_vkey()
    assert main(["verify", "--data-dir", str(tmp_path), "--public-key", vkey]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and "Traceback" not in err


def test_help_documents_the_exit_codes():
    result = subprocess.run([sys.executable, "-m", "aitrail.cli", "verify", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for line in ("0  everything checked verified", "1  tampering or loss found", "2  could not check"):
        assert line in result.stdout
    assert "--trusted FILE" in result.stdout


# --- read-only --------------------------------------------------------------------------------------


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_verify_writes_nothing_to_a_copy(sqlite_install, capsys, tmp_path):
    inst = sqlite_install
    inst.store.close()
    copy = tmp_path / "copy"
    shutil.copytree(inst.data, copy)
    before, mirror_before = _hashes(copy), _hashes(inst.mirror_dir)
    assert main(["verify", "--data-dir", str(copy), "--public-key", inst.vkey]) == 0
    assert _hashes(copy) == before and _hashes(inst.mirror_dir) == mirror_before
    # tampering found on the copy, still nothing written
    conn = SqliteStore.in_dir(copy)._conn()
    conn.execute("DROP TRIGGER records_append_only")
    conn.execute("DELETE FROM records WHERE leaf_index = 5")
    conn.close()
    before = _hashes(copy)
    assert main(["verify", "--data-dir", str(copy), "--public-key", inst.vkey]) == 1
    assert _hashes(copy) == before
    inst.store = SqliteStore.in_dir(inst.data)


def test_read_only_store_cannot_write(sqlite_install):
    import sqlite3

    from aitrail.errors import Unavailable

    inst = sqlite_install
    reader = SqliteStore.in_dir(inst.data, read_only=True)
    try:
        assert reader.log_ids() == [inst.log_id]
        with pytest.raises(Unavailable, match="could not write"):
            reader.write(records(90, 1))
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._conn().execute("DELETE FROM records")
        with pytest.raises(sqlite3.OperationalError):
            reader.secret("pseudonym")
        assert reader._conn().execute("PRAGMA query_only").fetchone() == (1,)
    finally:
        reader.close()
    assert inst.store.count() == 40


def _read_only_mount_run(source: Path, mount: Path, *args: str) -> subprocess.CompletedProcess:
    """`aitrail verify` with `source` mounted read-only at `mount` (a private mount namespace)."""
    mount.mkdir()
    script = (f'mount --bind "{source}" "{mount}" && mount -o remount,bind,ro "{mount}" && '
              f'exec "{sys.executable}" -m aitrail.cli verify ' + " ".join(f'"{a}"' for a in args))
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"AITRAIL_INTEGRITY__CHECKPOINT_DIR": str(mount / "mirror")})


@pytest.mark.parametrize("state", ["closed", "copied while live"])
def test_verify_runs_on_a_read_only_mount(sqlite_install, tmp_path, state):
    inst = sqlite_install
    if state == "closed":
        inst.store.close()
    shutil.copytree(inst.data, tmp_path / "ro" / "data")  # live: the -wal and -shm come along
    shutil.copytree(inst.mirror_dir, tmp_path / "ro" / "mirror")
    if state == "closed":
        inst.store = SqliteStore.in_dir(inst.data)
    else:
        assert (tmp_path / "ro" / "data" / "aitrail.db-wal").stat().st_size > 0
    before = _hashes(tmp_path / "ro")
    mount = tmp_path / "mnt"
    result = _read_only_mount_run(tmp_path / "ro", mount, "--data-dir", str(mount / "data"), "--public-key", inst.vkey)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"log {inst.log_id}: OK" in result.stderr and "40 records" in result.stderr
    assert _hashes(tmp_path / "ro") == before
    # and tampering is still found there
    conn = SqliteStore.in_dir(tmp_path / "ro" / "data")._conn()
    conn.execute("DROP TRIGGER records_append_only")
    conn.execute("DELETE FROM records WHERE leaf_index >= 30")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    result = _read_only_mount_run(tmp_path / "ro", tmp_path / "mnt2", "--data-dir", str(tmp_path / "mnt2" / "data"),
                                  "--public-key", inst.vkey)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAILED {inst.log_id} [missing]" in result.stdout
