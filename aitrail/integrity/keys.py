"""Checkpoint signing keys on disk, in the C2SP / Go ``note`` key formats.

``<name>.key`` holds the signer key ``PRIVATE+KEY+<key name>+<hex id>+<base64>`` (file
mode 0600) and ``<name>.pub`` the verifier key ``<key name>+<hex id>+<base64>``, which is
all ``aitrail verify`` needs. Keys are never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

from .note import KeyFormatError, Signer, Verifier

__all__ = ["KeyFileError", "create_signing_key", "load_signer", "load_verifier"]


class KeyFileError(ValueError):
    """A key file is missing, unreadable, malformed, or would be overwritten."""


def _check_file_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise KeyFileError(f"invalid key file name {name!r}: must be a plain file name")


def _write_new(path: Path, text: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # in case the umask took bits away; never adds any beyond mode


def create_signing_key(path_dir: str | os.PathLike[str], name: str, *, key_name: str | None = None) -> Signer:
    """Generate an Ed25519 key; write ``<name>.key`` (0600) and ``<name>.pub`` in ``path_dir``.

    ``key_name`` is the note key name (default ``name``); unlike the file name it may
    contain ``/`` (e.g. ``aitrail.local/<install id>``). Raises KeyFileError if either
    file exists (nothing is written then) or ``name`` is not a plain file name, and
    KeyFormatError if ``key_name`` is not a valid note key name.
    """
    _check_file_name(name)
    directory = Path(path_dir)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p} already exists; refusing to overwrite a key")
    signer = Signer.generate(key_name or name)
    directory.mkdir(parents=True, exist_ok=True)
    _write_new(key_path, signer.to_skey(), 0o600)
    try:
        _write_new(pub_path, signer.verifier().to_vkey(), 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return signer


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {path} is not UTF-8 text") from None


def load_signer(path: str | os.PathLike[str]) -> Signer:
    """Read a ``.key`` file. Raises KeyFileError (missing, unreadable or malformed)."""
    text = _read(path)
    try:
        return Signer.from_skey(text)
    except KeyFormatError as e:
        raise KeyFileError(f"{path}: {e}") from None


def load_verifier(path_or_vkey: str | os.PathLike[str]) -> Verifier:
    """A verifier from a ``.pub`` file, or from a verifier key string given directly.

    A string naming an existing file is read as a file; otherwise, if it looks like a
    verifier key (``name+hexid+base64``), it is parsed as one. A signer key (``.key``)
    is refused: never hand the private key to a verifier. Raises KeyFileError.
    """
    text: str
    source = str(path_or_vkey)
    if isinstance(path_or_vkey, os.PathLike) or os.path.exists(source) or source.count("+") < 2:
        text = _read(path_or_vkey)
    else:
        text, source = source.strip(), "verifier key"
    if text.startswith("PRIVATE+KEY+"):
        raise KeyFileError(f"{source} is a private signing key; give the public .pub key to verify")
    try:
        return Verifier.from_vkey(text)
    except KeyFormatError as e:
        raise KeyFileError(f"{source}: {e}") from None
