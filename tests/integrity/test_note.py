"""Signed notes and checkpoints against published vectors and properties.

Vector data (not code) is copied from golang.org/x/mod sumdb/note/note_test.go (Peter
Neumann / Enoch Root keys and signatures) and github.com/transparency-dev/formats
log/note_test.go (key pairs and a real sum.golang.org checkpoint).
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitrail.integrity.note import (
    Checkpoint,
    InvalidSignatureError,
    KeyFormatError,
    MalformedCheckpointError,
    MalformedNoteError,
    NoteError,
    NoteSignature,
    OriginMismatchError,
    Signer,
    UnknownKeyError,
    Verifier,
    key_id,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = (
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
)
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"

KEY_PAIRS = [  # (signer key, verifier key)
    ("PRIVATE+KEY+Log+2271c621+AdEIq9FLRQni54Wg68T96VJO+iayOaulswav2DUMKgvQ",
     "Log+2271c621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs"),
    ("PRIVATE+KEY+Known+451c786d+AQPRoE2+Z+Ed1HaHBA9F/FfracvcZ2rDU39kCecMEoci",
     "Known+451c786d+AXAQ0T7lbwuY4ABJ9/MYY9bWV3hmSyOGVt2x42NkmdUH"),
    ("PRIVATE+KEY+KnownAgain+4893b26c+ARhZda/l25zjGZswYLDZsLNRzNpmv5wYTN9IoTr1OJ2+",
     "KnownAgain+4893b26c+AQ+LR7BFF/F/dkpIBjBpSvT0crkteizuUkavAoGeaYMj"),
    ("PRIVATE+KEY+Unknown+fdbb2e08+Aav2knTC6orbhXX8pMWuNiWgO+Wwk2DB+h1eU2Q1W1nU",
     "Unknown+fdbb2e08+AWgRIYZ+8x1Vl+1Q+sR8zciNHiYI1SdlBjNw+RV0rots"),
    (PETER_SKEY, PETER_VKEY),
]  # fmt: skip

SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_CHECKPOINT = (
    "go.sum database tree\n6476701\nmb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=\n\n"
    "— sum.golang.org Az3grsLX85Gz+s1SiTbgkuqxgItqFq7gsMUEyVnrsa9LM7Us9S+1xbFIGu95949rj4nPRYfvimWEPWL+o3GeoWwOoAw=\n"
)

peter = Verifier.from_vkey(PETER_VKEY)
enoch = Verifier.from_vkey(ENOCH_VKEY)


def sig_of(line: str) -> NoteSignature:
    name, b64 = line[2:].rstrip("\n").split(" ")
    raw = base64.b64decode(b64)
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])


# --- keys ---------------------------------------------------------------------------------------


def test_key_id_definition() -> None:
    raw = base64.b64decode(PETER_VKEY.split("+")[2])
    assert key_id("PeterNeumann", raw) == 0xC74F20A3 == peter.key_id
    assert hashlib.sha256(b"PeterNeumann\n" + raw).digest()[:4] == bytes.fromhex(
        "c74f20a3"
    )


def test_vkey_roundtrip() -> None:
    assert peter.name == "PeterNeumann"
    assert peter.to_vkey() == PETER_VKEY
    assert (
        Verifier.from_vkey(SUMDB_VKEY).to_vkey() == SUMDB_VKEY
    )  # '+' inside the base64 key


@pytest.mark.parametrize(("skey", "vkey"), KEY_PAIRS)
def test_skey_derives_published_vkey(skey: str, vkey: str) -> None:
    signer = Signer.from_skey(skey)
    assert signer.to_skey() == skey
    assert signer.verifier().to_vkey() == vkey
    assert signer.verifier() == Verifier.from_vkey(vkey)


@pytest.mark.parametrize("key", [PETER_VKEY, PETER_SKEY])
def test_mangled_keys_rejected(key: str) -> None:
    parse = Verifier.from_vkey if key == PETER_VKEY else Signer.from_skey
    mangled = {
        key[i:j] for i in range(len(key) + 1) for j in range(i + 1, len(key) + 1)
    } - {key}
    mangled |= {key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))}
    for bad in mangled:
        with pytest.raises(KeyFormatError):
            parse(bad)
            pytest.fail(f"accepted {bad!r}")


def test_bad_keys_messages() -> None:
    with pytest.raises(
        KeyFormatError, match="canonical base64"
    ):  # wrong key length, adjusted key ID
        Verifier.from_vkey(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
    with pytest.raises(
        KeyFormatError, match="algorithm 0x65"
    ):  # unknown algorithm, adjusted key ID
        Verifier.from_vkey(
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )
    with pytest.raises(KeyFormatError, match="is 33 bytes, want 32"):
        Verifier.from_vkey(
            "PeterNeumann+c74f20a3+" + base64.b64encode(b"\x01" + bytes(33)).decode()
        )
    with pytest.raises(KeyFormatError, match="does not match"):
        Verifier.from_vkey(
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )
    for name in ["", "a b", "a+b", "tab\there", "nbsp\u00a0"]:
        with pytest.raises(KeyFormatError, match="invalid key name"):
            Signer.generate(name)


def test_generated_key_roundtrip() -> None:
    signer = Signer.generate("example.com/log")
    again = Signer.from_skey(signer.to_skey())
    verifier = Verifier.from_vkey(signer.verifier().to_vkey())
    assert again.key_id == verifier.key_id == signer.key_id
    assert verifier.verify(b"hi", again.sign(b"hi"))
    assert not verifier.verify(b"hj", again.sign(b"hi"))


# --- signed notes ---------------------------------------------------------------------------------


def test_sign_vector() -> None:
    signer = Signer.from_skey(PETER_SKEY)
    assert sign_note(TEXT, signer) == TEXT + "\n" + PETER_SIG


def test_sign_rejects_bad_text() -> None:
    signer = Signer.from_skey(PETER_SKEY)
    for text in ["abc", "", "a\rb\n", "nul\x00\n"]:
        with pytest.raises(MalformedNoteError):
            sign_note(text, signer)
    with pytest.raises(NoteError):
        sign_note(TEXT)


def test_open_vectors() -> None:
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    opened = open_note(note, [peter])
    assert opened.text == TEXT
    assert opened.signatures == (sig_of(PETER_SIG),)
    assert opened.unverified == (sig_of(ENOCH_SIG),)
    assert sig_of(PETER_SIG).key_id == 0xC74F20A3

    both = open_note(note.encode(), [peter, enoch, enoch])
    assert (
        both.signatures == (sig_of(PETER_SIG), sig_of(ENOCH_SIG))
        and both.unverified == ()
    )

    dupes = open_note(TEXT + "\n" + PETER_SIG * 2 + ENOCH_SIG * 3, [peter])
    assert dupes.signatures == (sig_of(PETER_SIG),) and dupes.unverified == (
        sig_of(ENOCH_SIG),
    )


def test_open_without_known_key() -> None:
    with pytest.raises(
        UnknownKeyError, match=r"signed by: PeterNeumann\+c74f20a3, EnochRoot\+af0cfe78"
    ) as err:
        open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])
    assert err.value.note.unverified == (sig_of(PETER_SIG), sig_of(ENOCH_SIG))
    assert err.value.note.signatures == ()


def test_open_invalid_signature() -> None:
    bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(
        InvalidSignatureError,
        match=r"^invalid signature for key PeterNeumann\+c74f20a3$",
    ):
        open_note(TEXT + "\n" + bad, [peter])
    # Every signature by a known key is checked, even after a valid one.
    with pytest.raises(InvalidSignatureError):
        open_note(TEXT + "\n" + PETER_SIG + bad, [peter])
    # A bad signature by an unknown key is ignored.
    bad_enoch = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    assert open_note(TEXT + "\n" + PETER_SIG + bad_enoch, [peter]).unverified == (
        sig_of(bad_enoch),
    )


@pytest.mark.parametrize(
    "note",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\r\n" + PETER_SIG,
        TEXT
        + "\n"
        + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG.replace("—", "-"),
        TEXT + "\n" + "— PeterNeumann AAAA\n",  # shorter than key ID + 1 byte
        TEXT
        + "\n"
        + "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM\n",
        TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_open_malformed(note: str) -> None:
    with pytest.raises(MalformedNoteError):
        open_note(note, [peter])


def test_open_invalid_utf8() -> None:
    with pytest.raises(MalformedNoteError, match="UTF-8"):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), [peter])
    with pytest.raises(MalformedNoteError, match="UTF-8"):
        open_note("\ud800" + TEXT + "\n" + PETER_SIG, [peter])


def test_open_ambiguous_verifiers() -> None:
    impostor = Verifier(peter.name, Signer.generate("x").verifier().public_key)
    impostor.key_id = peter.key_id  # forge a colliding (name, key ID)
    with pytest.raises(NoteError, match="ambiguous key"):
        open_note(TEXT + "\n" + PETER_SIG, [peter, impostor])


def test_misnamed_or_wrong_id_signature_is_unknown() -> None:
    misnamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
    with pytest.raises(UnknownKeyError):
        open_note(TEXT + "\n" + misnamed, [peter])
    wrong_id = PETER_SIG.replace("x08g", "xxxx")
    with pytest.raises(UnknownKeyError):
        open_note(TEXT + "\n" + wrong_id, [peter])


# --- checkpoints ----------------------------------------------------------------------------------


def test_sumdb_checkpoint_vector() -> None:
    verifier = Verifier.from_vkey(SUMDB_VKEY)
    cp = open_checkpoint(SUMDB_CHECKPOINT, verifier, origin="go.sum database tree")
    assert cp == Checkpoint(
        "go.sum database tree",
        6476701,
        base64.b64decode("mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk="),
    )
    assert cp.to_text() + "\n" + SUMDB_CHECKPOINT.split("\n\n")[1] == SUMDB_CHECKPOINT
    with pytest.raises(OriginMismatchError):
        open_checkpoint(
            SUMDB_CHECKPOINT, verifier, origin="Go rocks but I might have the wrong ID"
        )
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(SUMDB_CHECKPOINT.replace("6476701", "6476702"), verifier)
    with pytest.raises(UnknownKeyError):
        open_checkpoint(SUMDB_CHECKPOINT, peter)


@pytest.fixture(scope="module")
def log_signer() -> Signer:
    return Signer.from_skey(KEY_PAIRS[0][0])


def test_checkpoint_roundtrip(log_signer: Signer) -> None:
    cp = Checkpoint(
        "example.com/aitrail/log",
        20852163,
        hashlib.sha256(b"root").digest(),
        ("ext one", "ext two"),
    )
    note = sign_checkpoint(cp, log_signer)
    assert note.startswith("example.com/aitrail/log\n20852163\n")
    assert note.split("\n")[-2].startswith("— Log ")
    assert open_checkpoint(note, log_signer.verifier(), origin=cp.origin) == cp
    # Witness co-signatures by unknown keys are ignored.
    witness = Signer.generate("witness.example")
    cosigned = sign_note(cp.to_text(), log_signer, witness)
    assert open_checkpoint(cosigned, log_signer.verifier()) == cp
    with pytest.raises(UnknownKeyError):  # signed only by the witness
        open_checkpoint(sign_checkpoint(cp, witness), log_signer.verifier())


def test_checkpoint_tampering(log_signer: Signer) -> None:
    cp = Checkpoint("origin", 42, bytes(range(32)))
    note = sign_checkpoint(cp, log_signer)
    v = log_signer.verifier()
    with pytest.raises(InvalidSignatureError):  # body changed
        open_checkpoint(note.replace("\n42\n", "\n43\n"), v)
    with pytest.raises(InvalidSignatureError):  # extension line appended
        open_checkpoint(note.replace("\n\n", "\nextra\n\n"), v)
    body, sig = note.split("\n\n")
    name, b64 = sig[2:-1].split(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[10] ^= 1
    with pytest.raises(InvalidSignatureError):  # signature byte flipped
        open_checkpoint(f"{body}\n\n— {name} {base64.b64encode(raw).decode()}\n", v)
    with pytest.raises(UnknownKeyError):  # key name changed
        open_checkpoint(note.replace("— Log ", "— Log2 "), v)
    raw = bytearray(base64.b64decode(b64))
    raw[0] ^= 1
    with pytest.raises(UnknownKeyError):  # key ID changed
        open_checkpoint(f"{body}\n\n— {name} {base64.b64encode(raw).decode()}\n", v)
    with pytest.raises(UnknownKeyError):  # same name, different key
        open_checkpoint(note, Signer.generate("Log").verifier())


ROOT_B64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "body",
    [
        "Head\n9944\n",
        f"\n9944\n{ROOT_B64}\n",
        f"Log\n123\n{ROOT_B64}",
        f"Log\nbananas\n{ROOT_B64}\n",
        f"Log\n-34\n{ROOT_B64}\n",
        f"Log\n+34\n{ROOT_B64}\n",
        f"Log\n034\n{ROOT_B64}\n",
        f"Log\n 34\n{ROOT_B64}\n",
        f"Log\n٣٤\n{ROOT_B64}\n",  # non-ASCII digits
        f"Log\n18446744073709551616\n{ROOT_B64}\n",  # 2**64
        f"Log\n3438945738945739845734895735\n{ROOT_B64}\n",
        "Log\n123\nThisIsn'tBase64\n",
        "Log\n123\nYmFuYW5hcw==\n",  # 7 bytes, not a SHA-256 root
        f"Log\n123\n{ROOT_B64[:-1]}\n",
        f"Log\n123\n{ROOT_B64[:-2]}B=\n",  # non-canonical trailing bits
        f"Log\n123\n{ROOT_B64}\n\n",  # empty extension line
    ],
)
def test_malformed_checkpoint_bodies(body: str, log_signer: Signer) -> None:
    with pytest.raises(MalformedCheckpointError):
        Checkpoint.from_text(body)
    if body.endswith("\n"):  # validly signed, still rejected
        with pytest.raises(MalformedCheckpointError):
            open_checkpoint(sign_note(body, log_signer), log_signer.verifier())


def test_checkpoint_field_validation() -> None:
    root = bytes(32)
    assert Checkpoint("o", 0, root).to_text() == f"o\n0\n{ROOT_B64}\n"
    assert Checkpoint.from_text(f"o\n{2**64 - 1}\n{ROOT_B64}\n").size == 2**64 - 1
    for args in [("", 1, root), ("a\nb", 1, root), ("o", -1, root), ("o", 2**64, root), ("o", True, root),
                 ("o", 1, root[:31]), ("o", 1, root, ("",)), ("o", 1, root, ("a\nb",)), ("o\r", 1, root)]:  # fmt: skip
        with pytest.raises(MalformedCheckpointError):
            Checkpoint(*args)


line_text = st.text(
    st.characters(min_codepoint=0x20, exclude_categories=("Cs",)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=50, deadline=None)
@given(
    origin=line_text,
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(line_text, max_size=3),
)
def test_checkpoint_roundtrip_property(
    origin: str, size: int, root: bytes, extensions: list[str], log_signer: Signer
) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    assert Checkpoint.from_text(cp.to_text()) == cp
    assert (
        open_checkpoint(
            sign_checkpoint(cp, log_signer), log_signer.verifier(), origin=origin
        )
        == cp
    )


@settings(max_examples=50, deadline=None)
@given(text=st.lists(st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), max_size=20), min_size=1, max_size=5),
       pos=st.integers(min_value=0))  # fmt: skip
def test_note_tamper_property(text: list[str], pos: int, log_signer: Signer) -> None:
    body = "".join(line + "\n" for line in text)
    note = sign_note(body, log_signer)
    assert open_note(note, [log_signer.verifier()]).text == body
    i = pos % len(body)
    if (
        body[i] != "\n"
    ):  # changing any non-newline character of the text breaks the signature
        tampered = (
            body[:i]
            + chr(ord(body[i]) ^ 1 if ord(body[i]) ^ 1 >= 0x20 else 0x41)
            + body[i + 1 :]
        )
        if tampered != body:
            with pytest.raises(InvalidSignatureError):
                open_note(tampered + note[len(body) :], [log_signer.verifier()])
