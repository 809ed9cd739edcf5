"""The `aitrail` command: keys, answers, replay, errors."""

from __future__ import annotations

import json
import subprocess
import sys

from aitrail.cli import main
from aitrail.store.sqlite import SqliteStore
from tests.factories import completion, iso, retrieval


def seeded(tmp_path):
    store = SqliteStore.in_dir(tmp_path)
    store.write(
        [
            completion("default", trace=7, time=iso(24, 7, 30), answer="See [refund-policy] for details."),
            retrieval("default", trace=7, span=2, start_time=iso(24, 7, 29)),
        ]
    )
    store.close()
    return f"{7:032x}"


def test_keys_create_prints_the_key_alone(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "aitrail.cli", "keys", "create", "--tenant", "acme", "--role", "auditor",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout
    assert key.endswith("\n") and key.count("\n") == 1 and key.startswith("atk_")
    principal = SqliteStore.in_dir(tmp_path).authenticate(key.strip())
    assert (principal.tenant, principal.role) == ("acme", "auditor")


def test_keys_list_and_revoke(tmp_path, capsys):
    assert main(["keys", "create", "--tenant", "acme", "--role", "ingest", "--data-dir", str(tmp_path)]) == 0
    key = capsys.readouterr().out.strip()
    assert main(["keys", "list", "--data-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    key_id = key.split("_")[1]
    assert key_id in listing and "acme" in listing and "active" in listing and key not in listing
    assert main(["keys", "revoke", key_id, "--data-dir", str(tmp_path)]) == 0
    assert main(["keys", "revoke", key_id, "--data-dir", str(tmp_path)]) == 2
    assert "no active key" in capsys.readouterr().err


def test_answers_json_matches_the_api_shape(tmp_path, capsys):
    trace_id = seeded(tmp_path)
    assert main(["answers", "--q", "refund", "--at", "2026-11-24T14:30", "--tz", "Asia/Bangkok",
                 "--data-dir", str(tmp_path), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["count"] == 1 and body["data"][0]["trace_id"] == trace_id
    assert body["window"] == {"from": "2026-11-24T07:15:00.000000000Z", "to": "2026-11-24T07:45:00.000000000Z"}


def test_answers_table_and_replay_timeline_show_text_as_written(tmp_path, capsys):
    trace_id = seeded(tmp_path)
    assert main(["answers", "--q", "refund", "--data-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "1 answer(s)" in table and "[refund-policy]" in table and trace_id in table
    assert main(["replay", trace_id, "--tz", "Asia/Bangkok", "--data-dir", str(tmp_path)]) == 0
    timeline = capsys.readouterr().out
    assert timeline.index("retrieval") < timeline.index("completion")
    assert "policy-7 version 3" in timeline and "acl board-only" in timeline
    assert "A: See [refund-policy] for details." in timeline
    assert "2026-11-24 14:30:00 +07" in timeline


def test_errors_are_a_sentence_and_a_non_zero_exit(tmp_path, capsys):
    seeded(tmp_path)
    assert main(["answers", "--at", "the day after never", "--data-dir", str(tmp_path)]) == 2
    assert "cannot read the time" in capsys.readouterr().err
    assert main(["replay", "f" * 32, "--data-dir", str(tmp_path)]) == 2
    assert "no trace" in capsys.readouterr().err
    assert main(["answers", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file" in capsys.readouterr().err


def test_config_file_and_environment(tmp_path, capsys, monkeypatch):
    seeded(tmp_path)
    config = tmp_path / "aitrail.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[collector]\ndefault_tenant = "nobody"\n')
    assert main(["answers", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 0  # tenant "nobody" has nothing
    monkeypatch.setenv("AITRAIL_COLLECTOR__DEFAULT_TENANT", "default")  # environment beats the file
    assert main(["answers", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1


def test_verify_names_the_tampered_record_and_exits_1(tmp_path, capsys):
    from aitrail.collector.sequencing import open_sequencing
    from aitrail.schemas.canonical import canonical_json
    from aitrail.settings import load_settings

    settings = load_settings(None, data_dir=tmp_path)
    store = SqliteStore.in_dir(tmp_path)
    sequencing = open_sequencing(settings, store, create_key=True)
    records = [completion("default", trace=40 + i, time=iso(24, 9, i)) for i in range(10)]
    sequencing.write(records)
    sequencing.tick()
    assert main(["verify", "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()

    victim = records[4]
    stored = store.get("default", victim.record_id)
    conn = store._conn()
    conn.execute("DROP TRIGGER records_append_only")
    conn.execute("UPDATE records SET body = ? WHERE record_id = ?",
                 (canonical_json(stored.model_copy(update={"answer": "Never refunded."})), victim.record_id))
    assert main(["verify", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"record {victim.record_id}" in out and "CONTENT_ALTERED" in out.upper()
    assert main(["verify", "--record", victim.record_id, "--data-dir", str(tmp_path)]) == 1

    conn.execute("DELETE FROM checkpoints WHERE size = (SELECT max(size) FROM checkpoints)")
    assert main(["verify", "--data-dir", str(tmp_path)]) == 1
    assert "missing from the store" in capsys.readouterr().out
    store.close()
