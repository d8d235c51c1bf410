"""C2SP tlog-checkpoint bodies and C2SP signed notes (Ed25519)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteSigner,
    NoteVerifier,
    key_id,
    sign_checkpoint,
    verify_checkpoint,
)
from audit.merkle import EMPTY_ROOT, MemoryTree

# golang.org/x/mod/sumdb/note, note_test.go: a fixed key and a signed text.
# Ed25519 is deterministic, so signing must reproduce the signature byte for byte.
KAT_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
KAT_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
KAT_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
KAT_SIG_LINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKv"
    "qfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()
KAT_NOTE = KAT_TEXT + b"\n" + KAT_SIG_LINE

ORIGIN = "audit.example/log"


def _seeded(name: str, seed: int) -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return _seeded(ORIGIN, 1)


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    tree = MemoryTree()
    for i in range(42):
        tree.append(f"record {i}".encode())
    return Checkpoint(ORIGIN, tree.size, tree.root())


@pytest.fixture(scope="module")
def note(checkpoint: Checkpoint, signer: NoteSigner) -> bytes:
    return sign_checkpoint(checkpoint, signer)


# --- known answers ---------------------------------------------------------------------


def test_go_note_known_answer_signs_identically() -> None:
    signer = NoteSigner.from_signer_key(KAT_SIGNER)
    assert signer.name == "PeterNeumann"
    assert signer.key_id == bytes.fromhex("c74f20a3")
    assert signer.verifier_key() == KAT_VERIFIER
    assert signer.signer_key() == KAT_SIGNER
    assert signer.sign(KAT_TEXT) == KAT_NOTE


def test_go_note_known_answer_verifies() -> None:
    verifier = NoteVerifier.from_verifier_key(KAT_VERIFIER)
    assert verifier.key_id == bytes.fromhex("c74f20a3")
    assert verifier.verifier_key() == KAT_VERIFIER
    assert verifier.verify(KAT_NOTE) == KAT_TEXT


def test_key_id_is_the_c2sp_formula(signer: NoteSigner) -> None:
    public = signer.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    expected = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + public).digest()[:4]
    assert signer.key_id == expected == key_id(ORIGIN, public)
    assert signer.verifier().key_id == expected
    assert signer.verifier_key().split("+")[1] == expected.hex()


def test_checkpoint_body_format() -> None:
    cp = Checkpoint("example.com/behind-the-sofa", 20852163, bytes(range(32)))
    root = base64.b64encode(bytes(range(32))).decode()
    assert cp.body() == f"example.com/behind-the-sofa\n20852163\n{root}\n".encode()
    assert Checkpoint.parse_body(cp.body()) == cp


# --- round trips -----------------------------------------------------------------------


def test_sign_and_verify_round_trip(
    checkpoint: Checkpoint, signer: NoteSigner, note: bytes
) -> None:
    assert note.startswith(checkpoint.body() + b"\n\xe2\x80\x94 " + ORIGIN.encode() + b" ")
    assert verify_checkpoint(note, signer.verifier(), origin=ORIGIN) == checkpoint
    assert verify_checkpoint(note, signer.verifier()) == checkpoint
    assert signer.verifier().verify(note) == checkpoint.body()


def test_keys_round_trip_through_their_strings(signer: NoteSigner, note: bytes) -> None:
    again = NoteSigner.from_signer_key(signer.signer_key())
    assert again.key_id == signer.key_id
    assert again.sign(b"same text\n") == signer.sign(b"same text\n")
    verifier = NoteVerifier.from_verifier_key(signer.verifier_key())
    assert verifier.verify(note)


def test_generated_keys_work() -> None:
    fresh = NoteSigner.generate("gateway-audit")
    cp = Checkpoint("gateway-audit", 0, EMPTY_ROOT)
    assert verify_checkpoint(sign_checkpoint(cp, fresh), fresh.verifier(), "gateway-audit") == cp
    assert "PRIVATE" not in repr(fresh)


def test_extension_lines_are_kept(signer: NoteSigner) -> None:
    cp = Checkpoint(ORIGIN, 7, EMPTY_ROOT, ("ext one", "ext-two"))
    assert cp.body().endswith(b"\next one\next-two\n")
    assert verify_checkpoint(sign_checkpoint(cp, signer), signer.verifier()) == cp


# --- signature lines by other keys ----------------------------------------------------


def test_cosignature_by_another_key_is_ignored(
    checkpoint: Checkpoint, signer: NoteSigner, note: bytes
) -> None:
    witness = _seeded("witness.example", 2)
    body = checkpoint.body()
    after = note + witness.signature_line(body)
    before = body + b"\n" + witness.signature_line(body) + signer.signature_line(body)
    for cosigned in (after, before):
        assert verify_checkpoint(cosigned, signer.verifier(), ORIGIN) == checkpoint
        assert verify_checkpoint(cosigned, witness.verifier(), ORIGIN) == checkpoint


def test_unknown_signature_with_junk_bytes_is_ignored(note: bytes, signer: NoteSigner) -> None:
    junk = "\u2014 someone-else " + base64.b64encode(b"\x00\x01\x02\x03junk").decode() + "\n"
    assert signer.verifier().verify(note + junk.encode())


# --- rejections ------------------------------------------------------------------------


def test_tampered_body_is_rejected(note: bytes, signer: NoteSigner) -> None:
    tampered = note.replace(b"\n42\n", b"\n43\n", 1)
    assert tampered != note
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_checkpoint(tampered, signer.verifier())


def test_tampered_signature_is_rejected(note: bytes, signer: NoteSigner) -> None:
    body, line = note.rsplit(b"\n\n", 1)
    name, encoded = line.decode().rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[-1] ^= 0x01
    forged = body + b"\n\n" + f"{name} {base64.b64encode(raw).decode()}\n".encode()
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_checkpoint(forged, signer.verifier())


def test_bad_signature_by_our_key_is_not_outvoted_by_a_good_one(
    note: bytes, signer: NoteSigner
) -> None:
    line = signer.signature_line(b"some other text\n")
    with pytest.raises(CheckpointError, match="does not verify"):
        signer.verifier().verify(note + line)


def test_wrong_key_is_rejected(note: bytes) -> None:
    same_name = _seeded(ORIGIN, 3)
    with pytest.raises(CheckpointError, match="no signature by"):
        verify_checkpoint(note, same_name.verifier())
    other_name = _seeded("other.example/log", 1)
    with pytest.raises(CheckpointError, match="no signature by"):
        verify_checkpoint(note, other_name.verifier())


def test_wrong_origin_is_rejected(note: bytes, signer: NoteSigner) -> None:
    with pytest.raises(CheckpointError, match="origin"):
        verify_checkpoint(note, signer.verifier(), origin="another.example/log")


def _mutations() -> dict[str, Callable[[bytes], bytes]]:
    dash = "\u2014".encode()
    return {
        "hyphen instead of em dash": lambda n: n.replace(dash + b" ", b"- "),
        "en dash instead of em dash": lambda n: n.replace(dash, "\u2013".encode()),
        "no space after the dash": lambda n: n.replace(dash + b" ", dash),
        "no blank line": lambda n: n.replace(b"\n\n", b"\n"),
        "no final newline": lambda n: n[:-1],
        "empty signature block": lambda n: n.split(b"\n\n")[0] + b"\n\n",
        "blank line in block": lambda n: n + b"\n",
        "CRLF line endings": lambda n: n.replace(b"\n", b"\r\n"),
        "control character": lambda n: n.replace(b"\n42\n", b"\n42\t\n"),
        "not UTF-8": lambda n: n.replace(b"audit", b"\xffudit"),
        "name with plus": lambda n: n.replace(dash + b" audit", dash + b" a+udit"),
        "no signature after name": lambda n: n.rsplit(b" ", 1)[0] + b"\n",
        "signature not base64": lambda n: n.rsplit(b" ", 1)[0] + b" !!!!\n",
        "signature too short": lambda n: n.rsplit(b" ", 1)[0] + b" AAAA\n",
        "truncated signature": lambda n: (
            n.rsplit(b" ", 1)[0] + b" " + n.rsplit(b" ", 1)[1][:40] + b"\n"
        ),
        "garbage line": lambda n: n + b"garbage\n",
        "too many signatures": lambda n: n + (dash + b" x AAAAAAA=\n") * 100,
    }


@pytest.mark.parametrize("mutation", list(_mutations()))
def test_malformed_notes_are_rejected(mutation: str, note: bytes, signer: NoteSigner) -> None:
    malformed = _mutations()[mutation](note)
    assert malformed != note
    with pytest.raises(CheckpointError):
        verify_checkpoint(malformed, signer.verifier())


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"origin\n42\n", "at least 3"),
        (b"origin\n42\nAAAA", "newline"),
        (b"\n42\n" + base64.b64encode(bytes(32)) + b"\n", "empty line"),
        (b"origin\n042\n" + base64.b64encode(bytes(32)) + b"\n", "canonical decimal"),
        (b"origin\n+42\n" + base64.b64encode(bytes(32)) + b"\n", "canonical decimal"),
        (b"origin\n 42\n" + base64.b64encode(bytes(32)) + b"\n", "canonical decimal"),
        (b"origin\n4_2\n" + base64.b64encode(bytes(32)) + b"\n", "canonical decimal"),
        ("origin\n\u0664\u0662\nAAAA\n".encode(), "canonical decimal"),
        (b"origin\n18446744073709551616\n" + base64.b64encode(bytes(32)) + b"\n", "64 bits"),
        (b"origin\n42\n" + base64.b64encode(bytes(31)) + b"\n", "32-byte"),
        (b"origin\n42\n" + base64.b64encode(bytes(32)).rstrip(b"=") + b"\n", "base64"),
        # Same bytes, non-zero padding bits: one root must have one spelling.
        (b"origin\n42\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n", "32-byte"),
        (b"origin\n42\n" + base64.b64encode(bytes(32)) + b"\n\n", "empty line"),
    ],
)
def test_parse_body_is_strict(body: bytes, problem: str) -> None:
    with pytest.raises(CheckpointError, match=problem):
        Checkpoint.parse_body(body)


def test_parse_body_accepts_largest_size() -> None:
    body = b"origin\n18446744073709551615\n" + base64.b64encode(bytes(32)) + b"\n"
    assert Checkpoint.parse_body(body).size == 2**64 - 1


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("", 1, bytes(32), ()),
        ("two\nlines", 1, bytes(32), ()),
        ("origin", -1, bytes(32), ()),
        ("origin", 2**64, bytes(32), ()),
        ("origin", 1, bytes(31), ()),
        ("origin", 1, bytes(32), ("",)),
        ("origin", 1, bytes(32), ("a\nb",)),
    ],
)
def test_checkpoint_rejects_invalid_fields(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match=r"origin|uint64|bytes|extension"):
        Checkpoint(origin, size, root, extensions)


@pytest.mark.parametrize(
    ("vkey", "problem"),
    [
        ("PeterNeumann+c74f20a3", "<name>"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "name"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "name"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "hex"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterMeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+c74f20a3+Alpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "Ed25519"),
        ("PeterNeumann+c74f20a3+" + base64.b64encode(b"\x01" + bytes(31)).decode(), "Ed25519"),
        ("PeterNeumann+c74f20a3+not base64!", "base64"),
    ],
)
def test_verifier_key_parsing_is_strict(vkey: str, problem: str) -> None:
    with pytest.raises(CheckpointError, match=problem):
        NoteVerifier.from_verifier_key(vkey)


@pytest.mark.parametrize(
    ("skey", "problem"),
    [
        (KAT_VERIFIER, "PRIVATE"),
        ("PRIVATE+KEY+PeterNeumann+c74f20a3", "PRIVATE"),
        (KAT_SIGNER.replace("c74f20a3", "00000000"), "does not match"),
        (KAT_SIGNER.replace("+AYEK", "+AoEK"), "Ed25519"),
    ],
)
def test_signer_key_parsing_is_strict(skey: str, problem: str) -> None:
    with pytest.raises(CheckpointError, match=problem):
        NoteSigner.from_signer_key(skey)


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "tab\there"])
def test_invalid_key_names_are_refused(name: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    with pytest.raises(ValueError, match="key name"):
        NoteSigner(name, key)
    with pytest.raises(ValueError, match="key name"):
        NoteVerifier(name, key.public_key())


@pytest.mark.parametrize("text", [b"no final newline", b"tab\there\n", b"\xff\n"])
def test_signer_refuses_text_no_verifier_would_accept(signer: NoteSigner, text: bytes) -> None:
    with pytest.raises(ValueError, match=r"newline|control|UTF-8"):
        signer.sign(text)
