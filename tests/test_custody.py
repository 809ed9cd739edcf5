"""Key custody: the signing keys and the checkpoint mirror stay out of the data folder, the API
signs its access log with a key of its own, and a rotated key's old checkpoints keep verifying."""

from __future__ import annotations

import asyncio
import os

import httpx

from aitrail import custody
from aitrail.cli import main
from aitrail.collector.sequencing import open_sequencing
from aitrail.custody import CheckpointMirror, access_key_path, note_origin, signing_key_path, trusted_verifiers
from aitrail.integrity.keys import create_signing_key
from aitrail.integrity.note import open_checkpoint
from aitrail.settings import load_settings
from aitrail.store.base import Role
from aitrail.store.sqlite import SqliteStore
from tests.factories import completion, iso


def _files_under(folder) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]


def test_keys_and_mirror_live_outside_the_data_folder(tmp_path):
    data = tmp_path / "data"
    settings = load_settings(None, data_dir=data)
    store = SqliteStore.in_dir(data)
    sequencing = open_sequencing(settings, store, create_key=True)
    sequencing.write([completion("acme", trace=1, time=iso(24, 7, 30))])
    sequencing.tick()
    store.close()

    key = signing_key_path(settings)
    assert key.exists() and key.with_suffix(".pub").exists()
    assert data.resolve() not in key.resolve().parents
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    for path in _files_under(data):  # nothing in the data folder can sign
        with open(path, "rb") as f:
            assert b"PRIVATE+KEY" not in f.read(), path
    mirrored = [path for path in _files_under(settings.integrity.checkpoint_dir) if path.endswith(".jsonl")]
    assert mirrored and all(data.resolve() not in os.path.realpath(p).split(os.sep) for p in mirrored)
    logs = CheckpointMirror(settings.integrity.checkpoint_dir).logs([sequencing.origin])
    assert sum(len(cps) for cps in logs.values()) >= 1


def test_two_data_folders_get_two_keys_and_distinct_origins(tmp_path):
    a = load_settings(None, data_dir=tmp_path / "a")
    b = load_settings(None, data_dir=tmp_path / "b")
    assert signing_key_path(a) != signing_key_path(b)
    assert custody.ensure_signing_key(a).name != custody.ensure_signing_key(b).name


def test_a_key_left_in_the_data_folder_by_an_older_version_is_moved_out(tmp_path):
    data = tmp_path / "data"
    settings = load_settings(None, data_dir=data)
    legacy = create_signing_key(data / "keys", "log-signing", key_name="aitrail/legacy")
    signer = custody.ensure_signing_key(settings)
    assert signer.verifier() == legacy.verifier()
    assert not (data / "keys" / "log-signing.key").exists()
    assert signing_key_path(settings).exists()


def test_rotation_keeps_old_checkpoints_verifying(tmp_path, capsys):
    data = tmp_path / "data"
    settings = load_settings(None, data_dir=data)
    store = SqliteStore.in_dir(data)
    first = open_sequencing(settings, store, create_key=True)
    first.write([completion("acme", trace=10 + i, time=iso(24, 7, i)) for i in range(5)])
    first.tick()
    old_vkey = first.signer.verifier().to_vkey()

    assert main(["keys", "signing", "--rotate", "--data-dir", str(data)]) == 0
    new_vkey = capsys.readouterr().out.strip()
    assert new_vkey != old_vkey and new_vkey.split("+")[0] == old_vkey.split("+")[0]  # same name, new key
    second = open_sequencing(settings, store, create_key=False)
    assert second.signer.verifier().to_vkey() == new_vkey
    second.write([completion("acme", trace=20 + i, time=iso(24, 8, i)) for i in range(5)])
    second.tick()

    for log_id in store.log_ids():
        for cp in store.checkpoints(log_id):
            open_checkpoint(cp.note, trusted_verifiers(settings))  # every checkpoint, old and new
    assert len({v.to_vkey() for v in trusted_verifiers(settings)} & {old_vkey, new_vkey}) == 2
    store.close()
    assert main(["verify", "--data-dir", str(data)]) == 0
    # An auditor who pinned only the new key cannot check the old checkpoints: exit 1, named.
    assert main(["verify", "--data-dir", str(data), "--public-key", new_vkey]) == 1


def test_api_signs_its_access_log_with_its_own_key(tmp_path):
    """`aitrail api` over the embedded store: it never needs the logs' key."""
    from aitrail.scaleout import api

    data = tmp_path / "data"
    settings = load_settings(None, data_dir=data, api_port=0)
    store = SqliteStore.in_dir(data)
    key, _ = store.create_key("acme", Role.AUDITOR)
    store.close()
    assert not signing_key_path(settings).exists()

    async def read_once() -> int:
        async with api(settings) as port:
            async with httpx.AsyncClient() as client:
                response = await client.get(
                    f"http://127.0.0.1:{port}/v1/answers", headers={"Authorization": f"Bearer {key}"}
                )
                assert response.status_code == 200, response.text
                # the access record is sealed; wait (bounded) for its checkpoint
                for _ in range(100):
                    found = SqliteStore.in_dir(data)
                    try:
                        cps = [cp for log_id in found.log_ids() for cp in found.checkpoints(log_id)]
                    finally:
                        found.close()
                    if cps:
                        return len(cps)
                    await asyncio.sleep(0.05)
        return 0

    assert asyncio.run(read_once()) >= 1
    assert not signing_key_path(settings).exists()  # the API did not create or need the logs' key
    assert access_key_path(settings).exists()
    access_verifier = custody.load_key(access_key_path(settings), "access key").verifier()
    store = SqliteStore.in_dir(data)
    try:
        for log_id in store.log_ids():
            assert "access." in log_id
            for cp in store.checkpoints(log_id):
                open_checkpoint(cp.note, access_verifier)
                assert note_origin(cp.note).endswith(log_id)
    finally:
        store.close()
    assert main(["verify", "--data-dir", str(data)]) == 0
