"""The gateway's checkpoints and proofs, checked by implementations that share no code with it.

- tests/audit/note_reference.py: a signed-note / tlog-checkpoint verifier written
  from the C2SP specs, first anchored to the Go reference's published vector,
  then run on checkpoints a real AuditLog on SQLite signed, and on tampered
  copies of them, where its verdict must equal audit.checkpoint's;
- pymerkle (an RFC 6962/9162 Merkle tree library, test-only): the same roots and
  inclusion proofs as audit.merkle over the same records, and its own
  consistency proofs verify between the gateway's signed roots.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.checkpoint import CheckpointError, NoteSigner, NoteVerifier, verify_checkpoint
from audit.log import AuditLog
from audit.merkle import inclusion_proof, reference_root, root_from, verify_consistency
from audit.sqlite_store import SqliteAuditStore
from audit.store import StoredCheckpoint
from tests.audit.conftest import append_request, make_log
from tests.audit.note_reference import (
    NoteRejected,
    RefKey,
    open_note,
    parse_checkpoint,
    parse_vkey,
    rfc6962_leaf,
    rfc6962_root,
    spec_key_id,
)

ORIGIN = "oracle.example/audit"
# Checkpoints at these sizes: a single leaf, powers of two and neighbours, ragged edges.
SIZES = (1, 2, 3, 7, 8, 9, 16, 31, 33)

# golang.org/x/mod/sumdb/note's note_test.go: the Go reference's own key and note
# (the same vector circulates in independent ports in other languages).
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + b"\n"
    + "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSN"
    "XgKvqfqdngotpRZb6KE6RyyBwJnAM=\n".encode()
)


# --- the oracle itself, against the reference implementation's vector ----------------


def test_the_reference_verifier_accepts_the_go_vector_and_nothing_near_it() -> None:
    key = parse_vkey(GO_VKEY)
    assert key.key_id == bytes.fromhex("c74f20a3")
    opened = open_note(GO_NOTE, [key])
    assert (opened.text, opened.verified_by, opened.ignored) == (GO_TEXT, ("PeterNeumann",), 0)
    with pytest.raises(NoteRejected, match="fails"):
        open_note(GO_NOTE.replace(b"cryptography", b"cryptographY"), [key])
    with pytest.raises(NoteRejected, match="no signature by a known key"):
        open_note(GO_NOTE, [RefKey("PeterNeumann", b"\0\0\0\0", key.public)])
    with pytest.raises(NoteRejected, match="id does not match"):
        parse_vkey(GO_VKEY.replace("c74f20a3", "c74f20a4"))


# --- checkpoints the gateway signed ----------------------------------------------------


@dataclass
class Signed:
    log: AuditLog
    store: SqliteAuditStore
    checkpoints: list[StoredCheckpoint]
    vkey: str
    raw_public: bytes
    private: Ed25519PrivateKey  # kept to sign notes NoteSigner itself refuses to sign


@pytest_asyncio.fixture
async def signed(tmp_path: Path) -> AsyncIterator[Signed]:
    """A real AuditLog on SQLite with a signed checkpoint published at each of SIZES."""
    store = SqliteAuditStore(tmp_path / "audit.sqlite3")
    private = Ed25519PrivateKey.generate()
    audit_log = make_log(store, signer=NoteSigner(ORIGIN, private))
    checkpoints = []
    done = 0
    for size in SIZES:
        await asyncio.gather(
            *(append_request(audit_log, f"u{i % 4}", f"req-{i}") for i in range(done, size))
        )
        done = size
        checkpoints.append(audit_log.publish_checkpoint())
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    yield Signed(audit_log, store, checkpoints, audit_log.signer.verifier_key(), raw, private)
    await audit_log.close()
    store.close()


def _leaf_hashes(store: SqliteAuditStore, size: int) -> list[bytes]:
    """Leaf hashes recomputed by the reference from the stored payloads, not read back."""
    hashes = []
    for leaf in store.iter_leaves(0, size):
        assert leaf.payload is not None
        hashes.append(rfc6962_leaf(leaf.payload))
    return hashes


@pytest.mark.asyncio
async def test_every_published_checkpoint_verifies_with_the_reference(signed: Signed) -> None:
    key = parse_vkey(signed.vkey)  # what `gateway audit pubkey` prints, parsed from the spec
    assert (key.name, key.public) == (ORIGIN, signed.raw_public)
    assert key.key_id == spec_key_id(ORIGIN, signed.raw_public)
    assert [cp.size for cp in signed.checkpoints] == list(SIZES)
    for stored in signed.checkpoints:
        opened = open_note(stored.note, [key])
        assert opened.verified_by == (ORIGIN,)
        body = parse_checkpoint(opened.text)
        leaves = _leaf_hashes(signed.store, stored.size)
        assert (body.origin, body.size, body.extensions) == (ORIGIN, stored.size, ())
        # The signed root is the RFC's recursive MTH over the records, as the reference
        # computes it, and the root audit.merkle computes from the stored nodes.
        assert body.root == rfc6962_root(leaves) == stored.root
        assert body.root == root_from(stored.size, signed.store.node) == reference_root(leaves)
        ours = verify_checkpoint(stored.note, signed.log.verifier, origin=ORIGIN)
        assert (ours.origin, ours.size, ours.root) == (body.origin, body.size, body.root)


# --- tampered notes: the two verifiers must reach the same verdict ---------------------

Mutation = Callable[[bytes, NoteSigner], bytes]
_OTHER = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
_STRANGER = NoteSigner("witness.example/w1", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))


def _split(note: bytes) -> tuple[bytes, bytes]:
    text, _, sigs = note.rpartition(b"\n\n")
    return text + b"\n", sigs


def _flip_signature_byte(note: bytes, _: NoteSigner) -> bytes:
    text, sigs = _split(note)
    prefix, _, encoded = sigs.rstrip(b"\n").rpartition(b" ")
    raw = bytearray(base64.b64decode(encoded))
    raw[20] ^= 0x01  # inside the Ed25519 signature, past the key id
    return text + b"\n" + prefix + b" " + base64.b64encode(bytes(raw)) + b"\n"


def _change_size(note: bytes, _: NoteSigner) -> bytes:
    text, sigs = _split(note)
    origin, size, rest = text.split(b"\n", 2)
    return b"\n".join([origin, str(int(size) + 1).encode(), rest]) + b"\n" + sigs


def _change_root(note: bytes, _: NoteSigner) -> bytes:
    text, sigs = _split(note)
    origin, size, root, rest = text.split(b"\n", 3)
    other = base64.b64encode(hashlib.sha256(root).digest())
    return b"\n".join([origin, size, other, rest]) + b"\n" + sigs


def _resigned_by_other_key(note: bytes, _: NoteSigner) -> bytes:
    # Same name, different key: a forger who knows the origin but not the key.
    text, _sigs = _split(note)
    return _OTHER.sign(text)


def _add_cosignature(note: bytes, _: NoteSigner) -> bytes:
    text, _sigs = _split(note)
    return note + _STRANGER.signature_line(text)


def _add_sixteen_unknown(note: bytes, _: NoteSigner) -> bytes:
    text, _sigs = _split(note)
    extra = b"".join(
        NoteSigner(f"witness.example/w{i}", Ed25519PrivateKey.generate()).signature_line(text)
        for i in range(16)
    )
    return note + extra  # signed-note: verifiers MUST accept at least 16 signatures


def _add_same_name_other_key(note: bytes, _: NoteSigner) -> bytes:
    # Same name, other key id: an unknown key; ignored, the real signature still counts.
    text, _sigs = _split(note)
    return note + _OTHER.signature_line(text)


def _add_bad_signature_of_known_key(note: bytes, signer: NoteSigner) -> bytes:
    bad = base64.b64encode(signer.key_id + b"\x00" * 64)
    return note + f"\u2014 {signer.name} ".encode() + bad + b"\n"


def _truncate_known_signature(note: bytes, signer: NoteSigner) -> bytes:
    text, _sigs = _split(note)
    short = base64.b64encode(signer.key_id + b"\x01" * 63)
    return text + b"\n" + f"\u2014 {signer.name} ".encode() + short + b"\n"


def _duplicate_signature(note: bytes, _: NoteSigner) -> bytes:
    _text, sigs = _split(note)
    return note + sigs


def _only_the_unknown_signature(note: bytes, _: NoteSigner) -> bytes:
    text, _sigs = _split(note)
    return text + b"\n" + _STRANGER.signature_line(text)


def _hyphen_not_em_dash(note: bytes, _: NoteSigner) -> bytes:
    return note.replace("\u2014".encode(), b"-")


def _no_blank_line(note: bytes, _: NoteSigner) -> bytes:
    text, sigs = _split(note)
    return text + sigs


def _no_final_newline(note: bytes, _: NoteSigner) -> bytes:
    return note.rstrip(b"\n")


def _empty_signature_block(note: bytes, _: NoteSigner) -> bytes:
    text, _sigs = _split(note)
    return text + b"\n"


def _garbage_base64(note: bytes, _: NoteSigner) -> bytes:
    text, sigs = _split(note)
    return text + b"\n" + sigs.rstrip(b"\n") + b"!!\n"


def _too_short_signature(note: bytes, signer: NoteSigner) -> bytes:
    text, _sigs = _split(note)
    return text + b"\n" + f"\u2014 {signer.name} ".encode() + base64.b64encode(b"abcd") + b"\n"


def _name_with_plus(note: bytes, signer: NoteSigner) -> bytes:
    return note.replace(f"\u2014 {signer.name} ".encode(), f"\u2014 {signer.name}+x ".encode())


def _carriage_returns(note: bytes, _: NoteSigner) -> bytes:
    return note.replace(b"\n", b"\r\n")


def _control_character_in_text(note: bytes, _: NoteSigner) -> bytes:
    return note.replace(b"\n", b"\x01\n", 1)


def _invalid_utf8(note: bytes, _: NoteSigner) -> bytes:
    text, sigs = _split(note)
    return text[:-1] + b"\xff\n\n" + sigs


def _unchanged(note: bytes, _: NoteSigner) -> bytes:
    return note


# (mutation, whether the specs accept the result)
CASES: list[tuple[Mutation, bool]] = [
    (_unchanged, True),
    (_add_cosignature, True),
    (_add_sixteen_unknown, True),
    (_add_same_name_other_key, True),
    (_duplicate_signature, True),
    (_flip_signature_byte, False),
    (_change_size, False),
    (_change_root, False),
    (_resigned_by_other_key, False),
    (_add_bad_signature_of_known_key, False),
    (_truncate_known_signature, False),
    (_only_the_unknown_signature, False),
    (_hyphen_not_em_dash, False),
    (_no_blank_line, False),
    (_no_final_newline, False),
    (_empty_signature_block, False),
    (_garbage_base64, False),
    (_too_short_signature, False),
    (_name_with_plus, False),
    (_carriage_returns, False),
    (_control_character_in_text, False),
    (_invalid_utf8, False),
]


def _reference_accepts(note: bytes, key: RefKey) -> bool:
    try:
        parse_checkpoint(open_note(note, [key]).text)
    except NoteRejected:
        return False
    return True


def _gateway_accepts(note: bytes, verifier: NoteVerifier) -> bool:
    try:
        verify_checkpoint(note, verifier, origin=ORIGIN)
    except CheckpointError:
        return False
    return True


@pytest.mark.asyncio
@pytest.mark.parametrize(("mutate", "accepted"), CASES, ids=[m.__name__[1:] for m, _ in CASES])
async def test_reference_and_gateway_agree_on_tampered_checkpoints(
    signed: Signed, mutate: Mutation, accepted: bool
) -> None:
    key = parse_vkey(signed.vkey)
    for stored in (signed.checkpoints[0], signed.checkpoints[-1]):
        note = mutate(stored.note, signed.log.signer)
        assert _reference_accepts(note, key) is accepted
        assert _gateway_accepts(note, signed.log.verifier) is accepted


@pytest.mark.asyncio
async def test_a_checkpoint_checked_with_the_wrong_key_fails_in_both(signed: Signed) -> None:
    note = signed.checkpoints[-1].note
    wrong = parse_vkey(_OTHER.verifier_key())
    assert wrong.name == ORIGIN  # same name, so only the key id and signature tell them apart
    assert not _reference_accepts(note, wrong)
    assert not _gateway_accepts(note, _OTHER.verifier())


@pytest.mark.asyncio
async def test_where_the_gateway_is_stricter_than_the_spec(signed: Signed) -> None:
    """Two deliberate differences, both refusing what the spec would let through.

    DEL (U+007F) is not below U+0020, so signed-note allows it; audit.checkpoint
    refuses it with the other control characters. The spec lets verifiers limit
    signature lines (SHOULD) above 16; audit.checkpoint stops at 100, as the Go
    reference does. Neither affects a checkpoint the gateway itself signs.
    """
    key = parse_vkey(signed.vkey)
    note = signed.checkpoints[0].note
    text = note.rpartition(b"\n\n")[0] + b"\n"
    assert _reference_accepts(note, key)
    assert _gateway_accepts(note, signed.log.verifier)

    # NoteSigner refuses to sign such a text, so sign it with the raw key: the
    # reference must see a real signature for only the character rule to refuse it.
    with_del = text + b"ext\x7fline\n"
    blob = base64.b64encode(signed.log.signer.key_id + signed.private.sign(with_del))
    del_note = with_del + b"\n" + f"\u2014 {ORIGIN} ".encode() + blob + b"\n"
    assert _reference_accepts(del_note, key)
    assert not _gateway_accepts(del_note, signed.log.verifier)

    crowded = note + b"".join(_STRANGER.signature_line(text) for _ in range(100))
    assert _reference_accepts(crowded, key)
    assert not _gateway_accepts(crowded, signed.log.verifier)


# --- an independent Merkle implementation ---------------------------------------------


@pytest.fixture
def pymerkle() -> Any:
    return pytest.importorskip(
        "pymerkle",
        reason="pymerkle (test-only RFC 6962 oracle) not installed: Merkle cross-check NOT RUN",
    )


@pytest.mark.asyncio
async def test_pymerkle_agrees_on_roots_and_inclusion_proofs(signed: Signed, pymerkle: Any) -> None:
    size = SIZES[-1]
    payloads = [leaf.payload for leaf in signed.store.iter_leaves(0, size)]
    tree = pymerkle.InmemoryTree(algorithm="sha256")  # RFC 6962 prefixes: security on
    for payload in payloads:
        tree.append_entry(payload)
    for stored in signed.checkpoints:
        assert tree.get_root(stored.size) == stored.root
        for index in range(stored.size):
            ours = inclusion_proof(index, stored.size, signed.store.node)
            theirs = tree.prove_inclusion(index + 1, stored.size)  # pymerkle counts from one
            # pymerkle's path starts with the leaf itself, then the RFC 9162 audit path.
            assert theirs.path[1:] == ours
            theirs.verify(rfc6962_leaf(payloads[index]), stored.root)


@pytest.mark.asyncio
async def test_pymerkle_proves_the_signed_checkpoints_consistent(
    signed: Signed, pymerkle: Any
) -> None:
    """pymerkle's consistency proofs take another path shape than RFC 9162's, so the
    cross-check is semantic: its proofs verify between the gateway's signed roots, and
    the gateway's own proofs verify too; a forked root fails pymerkle's."""
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    for leaf in signed.store.iter_leaves(0, SIZES[-1]):
        tree.append_entry(leaf.payload)
    for old in signed.checkpoints:
        for new in signed.checkpoints:
            if old.size > new.size:
                continue
            tree.prove_consistency(old.size, new.size).verify(old.root, new.root)
            proof = signed.log.consistency(old.size, new.size)
            verify_consistency(old.size, new.size, old.root, new.root, proof)
    first, last = signed.checkpoints[0], signed.checkpoints[-1]
    with pytest.raises(pymerkle.InvalidProof):
        tree.prove_consistency(first.size, last.size).verify(os.urandom(32), last.root)
