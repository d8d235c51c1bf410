"""A second signed-note and checkpoint verifier, written from the specs alone (test-only).

An oracle for `audit.checkpoint`: it must not share that module's code, or one
misreading of the spec would pass both. So this file imports nothing from
`audit`; it follows the text of

- C2SP signed-note (https://c2sp.org/signed-note): a note is a text ending in a
  newline, a blank line, then one or more lines `— <key name> <base64 signature>`;
  the text is split from the signatures at the *last* blank line; the whole note
  is UTF-8 with no ASCII control character below U+0020 except newline; key
  names are non-empty, without Unicode spaces or '+'; a signature is
  base64(key ID (4 bytes, big-endian) || signature); verifiers ignore
  signatures of unknown keys (name *and* ID must match a known key), must verify
  those of known keys, and reject the note when no known key's signature
  verifies; a known key's failing signature rejects the whole note (a SHOULD we
  follow). Ed25519 (type 0x01): RFC 8032 over the note text, key ID =
  SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4].
- C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): the note text is at
  least three non-empty lines: origin (non-empty), tree size (ASCII decimal, no
  leading zeros unless 0), root hash (base64 of the RFC 6962 root), then
  optional non-empty extension lines.
- golang.org/x/mod/sumdb/note for the verifier-key text `<name>+<hex key ID>+
  <base64(0x01 || public key)>`, which `gateway audit pubkey` prints.

Where the specs leave room (how many signature lines to accept, DEL in the
text), this reference takes the spec's minimum requirement and no more; the
tests name each place where audit.checkpoint is deliberately stricter.

Ed25519 itself comes from `cryptography`: the primitive is not what is under
test, the note format around it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EM_DASH_SPACE = "\u2014 "
ED25519_TYPE = 0x01


class NoteRejected(Exception):  # noqa: N818 - the verdict, like audit's CheckpointError
    """The note (or key, or checkpoint body) is not acceptable under the specs."""


@dataclass(frozen=True)
class RefKey:
    name: str
    key_id: bytes  # 4 bytes
    public: bytes  # 32-byte Ed25519 public key


def spec_key_id(name: str, public: bytes) -> bytes:
    """signed-note §Ed25519: SHA-256(key name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\x0a" + bytes([ED25519_TYPE]) + public).digest()[
        :4
    ]


def _name_ok(name: str) -> bool:
    # "MUST be non-empty and MUST NOT contain any Unicode spaces or plus".
    return name != "" and "+" not in name and not any(ch.isspace() for ch in name)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteRejected(f"not standard base64: {text!r}") from exc


def parse_vkey(vkey: str) -> RefKey:
    """`<name>+<8 hex digits>+<base64(0x01 || 32-byte key)>`, the ID checked against the key."""
    name, sep1, rest = vkey.partition("+")
    id_hex, sep2, key_b64 = rest.partition("+")
    if not (sep1 and sep2) or not _name_ok(name):
        raise NoteRejected("verifier key is not <name>+<id>+<key>")
    if len(id_hex) != 8 or any(ch not in "0123456789abcdef" for ch in id_hex):
        raise NoteRejected("verifier key id is not 8 hex digits")
    raw = _b64(key_b64)
    if len(raw) != 33 or raw[0] != ED25519_TYPE:
        raise NoteRejected("verifier key is not an Ed25519 key")
    public = raw[1:]
    if spec_key_id(name, public).hex() != id_hex:
        raise NoteRejected("verifier key id does not match name and key")
    return RefKey(name, bytes.fromhex(id_hex), public)


def _check_note_characters(note: bytes) -> str:
    try:
        text = note.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise NoteRejected("note is not valid UTF-8") from exc
    for ch in text:
        if ord(ch) < 0x20 and ch != "\n":
            raise NoteRejected(f"control character U+{ord(ch):04X} in note")
    return text


@dataclass(frozen=True)
class OpenedNote:
    text: bytes
    verified_by: tuple[str, ...]  # names of known keys whose signature verified
    ignored: int  # signature lines of unknown keys


def open_note(note: bytes, known: list[RefKey]) -> OpenedNote:
    """Verify `note` against the `known` keys exactly as signed-note prescribes."""
    whole = _check_note_characters(note)
    cut = whole.rfind("\n\n")
    if cut == -1:
        raise NoteRejected("no blank line separates text and signatures")
    text = whole[: cut + 1]
    signatures = whole[cut + 2 :]
    if signatures == "" or not signatures.endswith("\n"):
        raise NoteRejected("no signature lines, or the last one lacks its newline")
    verified: list[str] = []
    ignored = 0
    for line in signatures.split("\n")[:-1]:
        if not line.startswith(EM_DASH_SPACE):
            raise NoteRejected(f"signature line does not start with an em dash: {line!r}")
        name, space, encoded = line[len(EM_DASH_SPACE) :].partition(" ")
        if not space or not _name_ok(name) or encoded == "":
            raise NoteRejected(f"signature line is not '— <name> <base64>': {line!r}")
        blob = _b64(encoded)
        if len(blob) < 5:  # 4-byte key ID plus a non-empty signature
            raise NoteRejected("signature shorter than a key ID and one byte")
        key_id, signature = blob[:4], blob[4:]
        key = next((k for k in known if k.name == name and k.key_id == key_id), None)
        if key is None:
            ignored += 1  # "MUST ignore signatures from unknown keys"
            continue
        try:
            Ed25519PublicKey.from_public_bytes(key.public).verify(signature, text.encode("utf-8"))
        except InvalidSignature as exc:
            raise NoteRejected(f"signature by known key {name} fails") from exc
        verified.append(name)
    if not verified:
        raise NoteRejected("no signature by a known key")
    return OpenedNote(text.encode("utf-8"), tuple(verified), ignored)


@dataclass(frozen=True)
class RefCheckpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...]


def parse_checkpoint(text: bytes) -> RefCheckpoint:
    """tlog-checkpoint note text: origin, size, base64 root, optional extension lines."""
    decoded = text.decode("utf-8")
    if not decoded.endswith("\n"):
        raise NoteRejected("note text does not end in a newline")
    lines = decoded[:-1].split("\n")
    if len(lines) < 3 or any(line == "" for line in lines):
        raise NoteRejected("checkpoint needs at least three non-empty lines")
    origin, size_text, root_text, *extensions = lines
    if not size_text.isascii() or not size_text.isdigit():
        raise NoteRejected("tree size is not ASCII decimal")
    if len(size_text) > 1 and size_text[0] == "0":
        raise NoteRejected("tree size has a leading zero")
    root = _b64(root_text)
    if len(root) != hashlib.sha256().digest_size:
        raise NoteRejected("root is not a SHA-256 hash")
    return RefCheckpoint(origin, int(size_text), root, tuple(extensions))


def rfc6962_root(leaf_hashes: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH over leaf hashes, recursively as the RFC writes it."""
    if not leaf_hashes:
        return hashlib.sha256(b"").digest()
    if len(leaf_hashes) == 1:
        return leaf_hashes[0]
    k = 1
    while k * 2 < len(leaf_hashes):
        k *= 2
    left, right = rfc6962_root(leaf_hashes[:k]), rfc6962_root(leaf_hashes[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def rfc6962_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()
