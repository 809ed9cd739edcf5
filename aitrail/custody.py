"""Key custody and the checkpoint mirror: what must stay out of reach of whoever holds the
data folder or the indices.

- **Signing keys** live in `integrity.keys_dir` (default
  `$XDG_CONFIG_HOME/aitrail/installations/<id of the data folder>`), never in the data folder:
  `log-signing.key` signs the logs' checkpoints (the sequencers: `aitrail serve`, the
  collectors), `access-signing.key` signs `aitrail api`'s own access log, so the API never
  holds the collectors' key. Each `.key` has its `.pub` beside it; only `.pub` files are
  needed to verify. A KMS or a mounted secret works by pointing `integrity.signing_key_file`
  at the mounted file (docs/integrity.md).
- **The row key** `store-mac.key` (32 random bytes, mode 0600) in the same folder
  authenticates the rows no Merkle log seals: API keys, secrets, dead letters
  (aitrail.store.rowmac). Every process that opens the store writable creates it when it is
  missing (`attach_row_key`) and then, once, authenticates the rows already there.
- **The checkpoint mirror** (`integrity.checkpoint_dir`, default
  `$XDG_STATE_HOME/aitrail/checkpoints`) receives every signed checkpoint, appended, one file
  per log origin. `aitrail verify` checks the store against it: a log rolled back, truncated,
  forked or wiped in the store still has its checkpoints here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path

from aitrail.errors import ConfigError
from aitrail.integrity.keys import KeyFileError, create_signing_key, load_signer, load_verifier
from aitrail.integrity.note import Signer, Verifier
from aitrail.integrity.sequencer import SignedCheckpoint
from aitrail.store.rowmac import KEY_BYTES, RowMac

log = logging.getLogger(__name__)

LOG_KEY = "log-signing"
ACCESS_KEY = "access-signing"
ROW_KEY = "store-mac"


def keys_dir(settings) -> Path:
    return Path(settings.integrity.keys_dir)


def signing_key_path(settings) -> Path:
    return Path(settings.integrity.signing_key_file or keys_dir(settings) / f"{LOG_KEY}.key")


def access_key_path(settings) -> Path:
    return Path(settings.integrity.access_signing_key_file or keys_dir(settings) / f"{ACCESS_KEY}.key")


def public_key_path(settings) -> Path:
    return signing_key_path(settings).with_suffix(".pub")


def legacy_key_path(settings) -> Path:
    """Where versions before key custody kept the signing key: inside the data folder."""
    return Path(settings.data_dir) / "keys" / f"{LOG_KEY}.key"


def row_key_path(settings) -> Path:
    return keys_dir(settings) / f"{ROW_KEY}.key"


def load_row_key(settings) -> RowMac | None:
    """The row key, or None when there is none yet."""
    path = row_key_path(settings)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the row key {path}: {exc.strerror or exc}") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"the row key {path} holds {len(key)} bytes, not {KEY_BYTES}: restore it from a backup")
    return RowMac(key)


@contextlib.contextmanager
def _row_key_lock(settings):
    folder = keys_dir(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / f".{ROW_KEY}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def attach_row_key(store, settings, *, create: bool = True) -> RowMac | None:
    """Give `store` the installation's row key (`store.row_mac`), so that it writes and checks
    the MACs of its API keys, secrets and dead letters. With `create` (every process that
    opens the store writable) a missing key is made, and the rows the store already holds are
    authenticated once, at that moment: rows present before the key are trusted as of then
    (docs/integrity.md). A store whose rows already carry MACs while the key is missing was
    authenticated with a key this host lacks: ConfigError, nothing created."""
    mac = load_row_key(settings)
    if mac is None and create:
        path = row_key_path(settings)
        with _row_key_lock(settings):  # processes of this host starting together make one key (flock)
            mac = load_row_key(settings)
            if mac is None:
                foreign = store.row_macs_present()
                if foreign:
                    raise ConfigError(
                        f"{foreign} API key, secret or dead-letter row(s) of the store carry MACs of a row key that "
                        f"is not at {path}: copy {path.name} from the installation that made it (it is kept with "
                        "the signing keys)"
                    )
                key = secrets.token_bytes(KEY_BYTES)
                temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(key)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
                mac = RowMac(key)
                count = store.authenticate_existing_rows(mac)
                log.warning(
                    "created the row key %s; %d API key, secret and dead-letter rows already in the store are "
                    "trusted as of now and were authenticated with it", path, count,
                )
    store.row_mac = mac
    return mac


def new_key_name() -> str:
    """A signing key's name, which is also its logs' origin prefix: random, so it says
    nothing about the store and two installations never share an origin."""
    return f"aitrail/{secrets.token_hex(6)}"


def _migrate_legacy_key(settings, path: Path) -> None:
    legacy = legacy_key_path(settings)
    if path.exists() or not legacy.exists() or settings.integrity.signing_key_file is not None:
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for suffix in (".key", ".pub"):
        source = legacy.with_suffix(suffix)
        if source.exists():
            shutil.move(str(source), str(path.with_suffix(suffix)))
    log.warning(
        "moved the checkpoint signing key out of the data folder (%s) to %s: whoever holds the data "
        "folder must not be able to re-sign its logs", legacy.parent, path.parent,
    )


def ensure_key(path: Path, *, name: str | None = None) -> Signer:
    """The signing key at `path`, created (with its .pub, directory mode 0700) when missing."""
    if path.exists():
        return load_signer(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    signer = create_signing_key(path.parent, path.stem, key_name=name or new_key_name())
    log.info("created signing key %s; public key: %s", path, signer.verifier().to_vkey())
    return signer


def ensure_signing_key(settings) -> Signer:
    """The logs' checkpoint signing key, created when missing (a key an earlier version left
    in the data folder is moved out first)."""
    path = signing_key_path(settings)
    _migrate_legacy_key(settings, path)
    return ensure_key(path, name=settings.integrity.origin)


def rotate_signing_key(settings) -> tuple[Verifier, Signer]:
    """Replace the logs' signing key by a new one of the same name (so the logs' origins stay).
    The old key's files are renamed `log-signing-<key id>.retired.key` / `log-signing-<key id>.pub`;
    the .pub stays in the keys folder, so checkpoints it signed keep verifying."""
    path = signing_key_path(settings)
    old = load_key(path, "checkpoint signing key")
    verifier = old.verifier()
    stem = f"{path.stem}-{verifier.key_id:08x}"
    path.rename(path.with_name(f"{stem}.retired.key"))
    if path.with_suffix(".pub").exists():
        path.with_suffix(".pub").rename(path.with_name(f"{stem}.pub"))
    else:
        path.with_name(f"{stem}.pub").write_text(verifier.to_vkey() + "\n")
    signer = create_signing_key(path.parent, path.stem, key_name=old.name)
    log.info("rotated signing key %s: retired %s, new %s", path, verifier.to_vkey(), signer.verifier().to_vkey())
    return verifier, signer


def load_key(path: Path, what: str) -> Signer:
    try:
        return load_signer(path)
    except KeyFileError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def trusted_verifiers(settings, explicit: Sequence[str] = ()) -> list[Verifier]:
    """The keys checkpoints may be signed with. `explicit` (an auditor's `--public-key`
    values) replaces the configured ones entirely: an auditor pins their own copy. Otherwise:
    the logs' key, the API's access-log key, every `.pub` in the keys folder (keys retired by
    rotation stay there) and `integrity.trusted_keys`."""
    sources: list[str | Path] = list(explicit)
    if not sources:
        sources += [public_key_path(settings), access_key_path(settings).with_suffix(".pub")]
        folder = keys_dir(settings)
        if folder.is_dir():
            sources += sorted(folder.glob("*.pub"))
        sources += list(settings.integrity.trusted_keys)
    verifiers: list[Verifier] = []
    for source in sources:
        if isinstance(source, Path) and not source.exists():
            continue
        try:
            verifier = load_verifier(source)
        except KeyFileError as exc:
            raise ConfigError(f"cannot use verifier key {source}: {exc}") from None
        if verifier not in verifiers:
            verifiers.append(verifier)
    return verifiers


def note_origin(note: str) -> str:
    return note.split("\n", 1)[0]


class CheckpointMirror:
    """Every signed checkpoint, appended (O_APPEND, fsync'd) to `<dir>/<origin>.jsonl`, one
    JSON object a line, outside the store. The sequencer appends after the store
    acknowledged, so whatever the mirror holds the store must hold too. For a stronger
    guarantee point `integrity.checkpoint_dir` at storage the operator cannot rewrite
    (a mount synchronised to an object-lock bucket, a separate host): docs/integrity.md."""

    def __init__(self, directory: Path, *, create: bool = True) -> None:
        self.directory = Path(directory)
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, origin: str) -> Path:
        return self.directory / (urllib.parse.quote(origin, safe="") + ".jsonl")

    def append(self, checkpoints: Iterable[SignedCheckpoint]) -> None:
        by_origin: dict[str, list[SignedCheckpoint]] = {}
        for cp in checkpoints:
            by_origin.setdefault(note_origin(cp.note), []).append(cp)
        for origin, items in by_origin.items():
            fd = os.open(self._path(origin), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            with os.fdopen(fd, "a", encoding="utf-8") as out:
                for cp in items:
                    out.write(json.dumps(cp.to_dict(), sort_keys=True) + "\n")
                out.flush()
                os.fsync(out.fileno())

    @staticmethod
    def _read(path: Path) -> list[SignedCheckpoint]:
        out = []
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(SignedCheckpoint.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a checkpoint line ({exc})") from None
        return out

    def read(self, origin: str) -> list[SignedCheckpoint]:
        path = self._path(origin)
        return self._read(path) if path.exists() else []

    def logs(self, key_names: Iterable[str]) -> dict[str, list[SignedCheckpoint]]:
        """Every mirrored log whose origin starts with one of `key_names` + '/', by log id
        (the checkpoints in the order they were appended). Raises ValueError naming the file
        and line of an unreadable entry."""
        prefixes = tuple(f"{urllib.parse.quote(name, safe='')}%2F" for name in key_names)
        found: dict[str, list[SignedCheckpoint]] = {}
        if not prefixes or not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob("*.jsonl")):
            if path.name.startswith(prefixes):
                for cp in self._read(path):
                    found.setdefault(cp.log_id, []).append(cp)
        return found
