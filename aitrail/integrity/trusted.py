"""Checkpoints kept outside the store: an auditor's `--trusted` files, the checkpoint mirror
(:class:`aitrail.custody.CheckpointMirror`) and the checkpoint files older versions kept in
`<data_dir>/checkpoints/`.

Reading only parses: every note is checked later by :func:`.verify.verify_log` against the
trusted keys, as a stored one is. A log's id is taken from the note's origin line
(`<key name>/<log id>`), the authenticated part, never from fields beside it; entries whose
origin is not under one of ``prefixes`` (another installation's logs) are left out.

A `--trusted` file holds either the JSON body of `GET /v1/checkpoints/latest` as saved
(``{"data": [{"log_id", "size", "root_hash", "signed_at", "note"}, ...]}``, or that list
alone), or C2SP signed notes one after another, optionally separated by blank lines (each
note is its text, a blank line, then its ``— name base64`` signature lines).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .note import Checkpoint, NoteError
from .sequencer import SignedCheckpoint

__all__ = [
    "ExternalCheckpoint",
    "by_log",
    "TrustedFileError",
    "legacy_checkpoints",
    "log_id_of",
    "mirrored_checkpoints",
    "parse_trusted",
    "read_trusted_file",
]

_SIG_PREFIX = "\u2014 "


class TrustedFileError(ValueError):
    """A file of kept checkpoints that cannot be read or parsed (verification cannot run)."""


@dataclass(frozen=True, slots=True)
class ExternalCheckpoint:
    """One checkpoint kept outside the store. ``source`` names where it was kept (for
    messages); ``mirrored``: it was written where every checkpoint of the log goes (the
    mirror), so the store must hold it too, unchanged."""

    source: str
    checkpoint: SignedCheckpoint
    mirrored: bool = False


def log_id_of(origin: str, prefixes: Sequence[str]) -> str | None:
    """The log id of a checkpoint origin `<prefix>/<log id>`, or None when the origin is under
    none of ``prefixes`` (the longest matching prefix wins)."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if prefix and origin.startswith(prefix + "/") and len(origin) > len(prefix) + 1:
            return origin[len(prefix) + 1 :]
    return None


def _unverified_body(note: str) -> Checkpoint:
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("no blank line before its signatures")
    return Checkpoint.from_text(note[: split + 1])


def _from_note(note: str, prefixes: Sequence[str], signed_at: str = "") -> SignedCheckpoint | None:
    """Raises NoteError when the note's text is not a checkpoint."""
    body = _unverified_body(note)
    log_id = log_id_of(body.origin, prefixes)
    if log_id is None:
        return None
    return SignedCheckpoint(log_id, body.size, body.root_hash, note, signed_at)


def _split_notes(text: str, source: str) -> list[str]:
    lines = text.replace("\r\n", "\n").split("\n")
    notes, i, n = [], 0, len(lines)
    while i < n:
        while i < n and not lines[i].strip():
            i += 1
        if i >= n:
            break
        first, body = i + 1, []
        while i < n and lines[i] != "":
            if lines[i].startswith(_SIG_PREFIX):
                raise TrustedFileError(f"{source}: line {i + 1}: a signature line where a note's text was expected")
            body.append(lines[i])
            i += 1
        i += 1  # the blank line before the signatures
        signatures = []
        while i < n and lines[i].startswith(_SIG_PREFIX):
            signatures.append(lines[i])
            i += 1
        if not signatures:
            raise TrustedFileError(
                f"{source}: the note starting at line {first} has no signature lines ('— name base64') after its "
                "blank line"
            )
        notes.append("\n".join(body) + "\n\n" + "\n".join(signatures) + "\n")
    return notes


def parse_trusted(text: str, source: str, prefixes: Sequence[str]) -> list[ExternalCheckpoint]:
    """The checkpoints of one trusted file's text (see the module docstring). Raises
    TrustedFileError naming ``source`` and the entry when the text is neither form."""
    stripped = text.lstrip("\ufeff").strip()
    if not stripped:
        raise TrustedFileError(f"{source}: empty; expected the JSON of GET /v1/checkpoints/latest or signed notes")
    found: list[ExternalCheckpoint] = []
    if stripped[0] in "{[":
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise TrustedFileError(f"{source}: not valid JSON ({exc})") from None
        entries = data.get("data") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise TrustedFileError(f"{source}: JSON without a \"data\" list of checkpoints")
        for number, entry in enumerate(entries):
            note = entry.get("note") if isinstance(entry, dict) else None
            if not isinstance(note, str):
                raise TrustedFileError(f"{source}: data[{number}] has no \"note\" (the signed checkpoint)")
            try:
                cp = _from_note(note, prefixes, str(entry.get("signed_at") or ""))
            except NoteError as exc:
                raise TrustedFileError(f"{source}: data[{number}] is not a signed checkpoint ({exc})") from None
            if cp is not None:
                found.append(ExternalCheckpoint(source, cp))
        return found
    for number, note in enumerate(_split_notes(stripped + "\n", source), 1):
        try:
            cp = _from_note(note, prefixes)
        except NoteError as exc:
            raise TrustedFileError(f"{source}: note {number} is not a checkpoint ({exc})") from None
        if cp is not None:
            found.append(ExternalCheckpoint(source, cp))
    return found


def read_trusted_file(path: Path, prefixes: Sequence[str]) -> list[ExternalCheckpoint]:
    source = f"trusted file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustedFileError(f"cannot read trusted file {path}: {exc}") from None
    return parse_trusted(text, source, prefixes)


def _jsonl(path: Path, source: str, prefixes: Sequence[str]) -> list[ExternalCheckpoint]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustedFileError(f"cannot read {source}: {exc}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            cp = _from_note(entry["note"], prefixes, str(entry.get("signed_at") or ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise TrustedFileError(f"{path}:{number}: not a checkpoint line ({exc})") from None
        if cp is not None:
            out.append(ExternalCheckpoint(source, cp, mirrored=True))
    return out


def mirrored_checkpoints(mirror, prefixes: Sequence[str]) -> list[ExternalCheckpoint]:
    """The mirror's checkpoints under ``prefixes`` (``mirror``: a
    :class:`~aitrail.custody.CheckpointMirror`, opened with ``create=False``)."""
    try:
        logs = mirror.logs(prefixes)
    except (OSError, ValueError) as exc:
        raise TrustedFileError(f"cannot read the checkpoint mirror {mirror.directory}: {exc}") from None
    out = []
    for cps in logs.values():
        for cp in cps:
            try:
                mapped = _from_note(cp.note, prefixes, cp.signed_at)
            except NoteError as exc:
                raise TrustedFileError(
                    f"the checkpoint mirror {mirror.directory} holds an entry that is not a checkpoint ({exc})"
                ) from None
            if mapped is not None:
                out.append(ExternalCheckpoint(f"the mirror {mirror.directory}", mapped, mirrored=True))
    return out


def legacy_checkpoints(data_dir: Path, prefixes: Sequence[str]) -> list[ExternalCheckpoint]:
    """The checkpoint files versions before the mirror kept in `<data_dir>/checkpoints/<log id>.jsonl`."""
    folder = Path(data_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    out: list[ExternalCheckpoint] = []
    for path in sorted(folder.rglob("*.jsonl")):
        out += _jsonl(path, f"checkpoint file {path}", prefixes)
    return out


def by_log(items: Iterable[ExternalCheckpoint]) -> dict[str, list[ExternalCheckpoint]]:
    grouped: dict[str, list[ExternalCheckpoint]] = {}
    for item in items:
        grouped.setdefault(item.checkpoint.log_id, []).append(item)
    return grouped
