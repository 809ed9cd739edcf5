"""C2SP signed notes (c2sp.org/signed-note) with Ed25519, and tlog checkpoints (c2sp.org/tlog-checkpoint).

Pure computation: no I/O, no other aitrail imports. Interoperable with Go's
``golang.org/x/mod/sumdb/note`` and ``github.com/transparency-dev/formats/log``.

A signed note is ``text`` (ending in a newline), a blank line, then one or more lines
``"— <key name> <base64(4-byte big-endian key ID || signature)>\\n"`` (em dash U+2014).
For Ed25519, key ID = ``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]``
and the signature is over the UTF-8 text, final newline included.

A checkpoint's text is ``origin``, decimal tree size, base64 root hash, then optional
non-empty extension lines, each ending in a newline.

Key strings (as printed and parsed by the Go note package):
verifier key ``<name>+<8 hex key ID>+<base64(0x01 || public key)>`` and signer key
``PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 || 32-byte seed)>``.

Errors: every failure raises a subclass of :class:`NoteError` (a ``ValueError``):
:class:`KeyFormatError`, :class:`MalformedNoteError`, :class:`UnknownKeyError`,
:class:`InvalidSignatureError`, :class:`MalformedCheckpointError`,
:class:`OriginMismatchError`. Base64 must be canonical (standard alphabet, padded).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Checkpoint",
    "InvalidSignatureError",
    "KeyFormatError",
    "MalformedCheckpointError",
    "MalformedNoteError",
    "NoteError",
    "NoteSignature",
    "OriginMismatchError",
    "SignedNote",
    "Signer",
    "UnknownKeyError",
    "Verifier",
    "key_id",
    "open_checkpoint",
    "open_note",
    "sign_checkpoint",
    "sign_note",
]

ALG_ED25519 = 0x01
MAX_SIGNATURES = 100
"""Notes with more signature lines are rejected as malformed (the spec requires >= 16)."""

_SIG_PREFIX = "\u2014 "
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX_ID = re.compile(r"[0-9a-fA-F]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class NoteError(ValueError):
    """Base of every error raised by this module."""


class KeyFormatError(NoteError):
    """A key name, verifier key or signer key string is invalid."""


class MalformedNoteError(NoteError):
    """The note text or signature block does not follow the signed-note syntax."""


class InvalidSignatureError(NoteError):
    """A signature by a known key (name and key ID match) does not verify."""

    def __init__(self, name: str, key_id: int) -> None:
        super().__init__(f"invalid signature for key {name}+{key_id:08x}")
        self.name, self.key_id = name, key_id


class UnknownKeyError(NoteError):
    """No signature in the note is by a known key; ``note`` holds the unverified parse."""

    def __init__(self, note: SignedNote, known: Iterable[str]) -> None:
        found = ", ".join(f"{s.name}+{s.key_id:08x}" for s in note.unverified) or "none"
        want = ", ".join(known) or "none"
        super().__init__(
            f"note has no signature by a known key (known: {want}; signed by: {found})"
        )
        self.note = note


class MalformedCheckpointError(NoteError):
    """A (verified) note's text is not a valid checkpoint body, or checkpoint fields are invalid."""


class OriginMismatchError(NoteError):
    """The checkpoint's origin line is not the expected one."""


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict standard base64; None unless ``text`` is the canonical encoding."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if _b64encode(raw) == text else None


def _is_valid_name(name: str) -> bool:
    return (
        bool(name)
        and "+" not in name
        and not any(c.isspace() or c < " " for c in name)
        and _is_utf8(name)
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _is_valid_name(name):
        raise KeyFormatError(
            f"invalid key name {name!r}: must be non-empty, without spaces, '+' or control characters"
        )


def key_id(name: str, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || public_key)[:4]`` as a big-endian uint32; ``public_key`` includes the algorithm byte."""
    return int.from_bytes(
        hashlib.sha256(name.encode("utf-8") + b"\n" + public_key).digest()[:4], "big"
    )


def _parse_key_body(name: str, hex_id: str, b64: str, what: str) -> tuple[int, bytes]:
    """Validate the shared ``name+hexid+base64(alg||key)`` tail; returns (key ID, 32 key bytes)."""
    _check_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise KeyFormatError(f"{what}: key ID {hex_id!r} is not 8 hex digits")
    raw = _b64decode(b64)
    if not raw:
        raise KeyFormatError(f"{what}: key is not canonical base64")
    if raw[0] != ALG_ED25519:
        raise KeyFormatError(f"{what}: unsupported signature algorithm 0x{raw[0]:02x}")
    if len(raw) != 33:
        raise KeyFormatError(f"{what}: Ed25519 key is {len(raw) - 1} bytes, want 32")
    return int(hex_id, 16), raw[1:]


class Verifier:
    """An Ed25519 note verifier: a key name and public key, identified by (name, key ID)."""

    __slots__ = ("_raw", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        """Raises KeyFormatError on an invalid key name."""
        _check_name(name)
        self._raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.name, self.public_key = name, public_key
        self.key_id = key_id(name, bytes([ALG_ED25519]) + self._raw)

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``; raises KeyFormatError,
        including when the key ID does not match the name and key."""
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise KeyFormatError(
                "verifier key must be <name>+<hex key ID>+<base64 key>"
            )
        kid, raw = _parse_key_body(*parts, what="verifier key")
        verifier = cls(parts[0], Ed25519PublicKey.from_public_bytes(raw))
        if verifier.key_id != kid:
            raise KeyFormatError(
                f"verifier key: key ID {kid:08x} does not match key (want {verifier.key_id:08x})"
            )
        return verifier

    def to_vkey(self) -> str:
        """The ``<name>+<hex key ID>+<base64 key>`` string :meth:`from_vkey` parses."""
        return f"{self.name}+{self.key_id:08x}+{_b64encode(bytes([ALG_ED25519]) + self._raw)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` (without key ID prefix) is a valid Ed25519 signature of ``message``."""
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verifier):
            return NotImplemented
        return (self.name, self._raw) == (other.name, other._raw)

    def __hash__(self) -> int:
        return hash((self.name, self._raw))

    def __repr__(self) -> str:
        return f"Verifier({self.to_vkey()!r})"


class Signer:
    """An Ed25519 note signer: a key name and private key."""

    __slots__ = ("_private_key", "_verifier", "key_id", "name")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        """Raises KeyFormatError on an invalid key name."""
        self._verifier = Verifier(name, private_key.public_key())
        self._private_key = private_key
        self.name, self.key_id = name, self._verifier.key_id

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A signer with a fresh random key."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``; raises KeyFormatError,
        including when the key ID does not match the name and derived public key."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise KeyFormatError(
                "signer key must be PRIVATE+KEY+<name>+<hex key ID>+<base64 key>"
            )
        kid, seed = _parse_key_body(*parts[2:], what="signer key")
        signer = cls(parts[2], Ed25519PrivateKey.from_private_bytes(seed))
        if signer.key_id != kid:
            raise KeyFormatError(
                f"signer key: key ID {kid:08x} does not match key (want {signer.key_id:08x})"
            )
        return signer

    def to_skey(self) -> str:
        """The secret ``PRIVATE+KEY+...`` string :meth:`from_skey` parses."""
        seed = self._private_key.private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{_b64encode(bytes([ALG_ED25519]) + seed)}"

    def verifier(self) -> Verifier:
        """The matching verifier."""
        return self._verifier

    def sign(self, message: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature of ``message``."""
        return self._private_key.sign(message)

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id:08x})"


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes (without the ID prefix)."""

    name: str
    key_id: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedNote:
    """An opened note: its text, the signatures verified by known keys, and those from unknown keys (unchecked)."""

    text: str
    signatures: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedNoteError("note text must end with a newline")
    if _CONTROL.search(text):
        raise MalformedNoteError(
            "note text contains a control character other than newline"
        )
    if not _is_utf8(text):
        raise MalformedNoteError("note text is not valid UTF-8")


def sign_note(text: str, *signers: Signer) -> str:
    """The signed note: ``text``, a blank line, one signature line per signer, in order.

    ``text`` must end with a newline and contain no control characters but newlines;
    raises MalformedNoteError otherwise, NoteError if no signer is given.
    """
    if not signers:
        raise NoteError("at least one signer is required")
    _check_text(text)
    message = text.encode("utf-8")
    lines = [
        f"{_SIG_PREFIX}{s.name} {_b64encode(s.key_id.to_bytes(4, 'big') + s.sign(message))}\n"
        for s in signers
    ]
    return text + "\n" + "".join(lines)


def open_note(note: str | bytes, verifiers: Iterable[Verifier]) -> SignedNote:
    """Parse ``note`` and verify every signature whose (key name, key ID) is a known verifier.

    Raises MalformedNoteError on bad syntax (invalid UTF-8, control characters, no blank
    line before the signatures, a bad signature line, more than MAX_SIGNATURES lines),
    InvalidSignatureError if any signature by a known key fails, UnknownKeyError if no
    signature is by a known key, NoteError if two verifiers share (name, key ID) with
    different keys. Signatures by unknown keys are returned unchecked in ``unverified``;
    duplicate lines are reported once.
    """
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        if known.setdefault((v.name, v.key_id), v) != v:
            raise NoteError(
                f"ambiguous key {v.name}+{v.key_id:08x}: two verifiers share name and key ID"
            )
    try:
        msg = note.decode("utf-8") if isinstance(note, bytes) else note
        msg.encode("utf-8")  # rejects lone surrogates in str input
    except UnicodeError:
        raise MalformedNoteError("note is not valid UTF-8") from None
    if _CONTROL.search(msg):
        raise MalformedNoteError("note contains a control character other than newline")
    split = msg.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("note has no blank line before its signatures")
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block.endswith("\n"):
        raise MalformedNoteError(
            "signature block is empty or does not end with a newline"
        )
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(
            f"note has {len(lines)} signatures, more than {MAX_SIGNATURES}"
        )
    message = text.encode("utf-8")
    verified: dict[NoteSignature, None] = {}
    unverified: dict[NoteSignature, None] = {}
    for n, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise MalformedNoteError(
                f"signature line {n} does not start with an em dash and a space"
            )
        name, _, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        raw = _b64decode(b64)
        if not _is_valid_name(name) or raw is None or len(raw) < 5:
            raise MalformedNoteError(
                f"signature line {n} is not '— <key name> <base64 key ID and signature>'"
            )
        sig = NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            unverified[sig] = None
        elif sig not in verified:
            if not verifier.verify(message, sig.signature):
                raise InvalidSignatureError(sig.name, sig.key_id)
            verified[sig] = None
    result = SignedNote(text, tuple(verified), tuple(unverified))
    if not verified:
        raise UnknownKeyError(result, (f"{name}+{kid:08x}" for name, kid in known))
    return result


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tlog checkpoint body: origin, tree size, 32-byte RFC 6962 root hash, extension lines.

    Construction validates the fields (raises MalformedCheckpointError): non-empty origin
    and extension lines without control characters, ``0 <= size < 2**64``, 32-byte root.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for what, line in [
            ("origin", self.origin),
            *(("extension line", e) for e in self.extensions),
        ]:
            if (
                not isinstance(line, str)
                or not line
                or _CONTROL.search(line)
                or "\n" in line
                or not _is_utf8(line)
            ):
                raise MalformedCheckpointError(
                    f"{what} {line!r} must be a non-empty line without control characters"
                )
        if (
            not isinstance(self.size, int)
            or isinstance(self.size, bool)
            or not 0 <= self.size < 1 << 64
        ):
            raise MalformedCheckpointError(
                f"tree size {self.size!r} is not an integer in [0, 2**64)"
            )
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != 32:
            raise MalformedCheckpointError(
                f"root hash must be 32 bytes, got {self.root_hash!r}"
            )

    def to_text(self) -> str:
        """The note text (body) of this checkpoint."""
        lines = [
            self.origin,
            str(self.size),
            _b64encode(self.root_hash),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body. Does not verify anything: only use on the text of a
        note returned by :func:`open_note`. Raises MalformedCheckpointError."""
        if not text.endswith("\n"):
            raise MalformedCheckpointError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedCheckpointError(
                f"checkpoint needs origin, size and root hash lines, got {len(lines)} lines"
            )
        origin, size, root, *extensions = lines
        if not _DECIMAL.fullmatch(size):
            raise MalformedCheckpointError(
                f"tree size {size!r} is not a decimal number without leading zeros"
            )
        root_hash = _b64decode(root)
        if root_hash is None:
            raise MalformedCheckpointError(
                f"root hash {root!r} is not canonical base64"
            )
        return cls(origin, int(size), root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    """The signed note text of ``checkpoint``, signed by ``signer`` (whose name SHOULD equal the origin)."""
    return sign_note(checkpoint.to_text(), signer)


def open_checkpoint(
    note: str | bytes, verifier: Verifier | Iterable[Verifier], *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint against the log's ``verifier`` and parse its body.

    Requires a valid signature by ``verifier`` (or by one of several trusted verifiers:
    a key and the keys it replaced); other signatures (e.g. witnesses) are ignored. If ``origin`` is given, the origin line must equal it. Raises
    MalformedNoteError, UnknownKeyError (not signed by ``verifier``),
    InvalidSignatureError, MalformedCheckpointError or OriginMismatchError.
    """
    verifiers = [verifier] if isinstance(verifier, Verifier) else list(verifier)
    checkpoint = Checkpoint.from_text(open_note(note, verifiers).text)
    if origin is not None and checkpoint.origin != origin:
        raise OriginMismatchError(
            f"checkpoint origin {checkpoint.origin!r}, want {origin!r}"
        )
    return checkpoint
