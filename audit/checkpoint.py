"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, Ed25519.

A checkpoint commits the log to a tree head (origin, size, root). It is the
thing an auditor keeps, so it is written in the format other transparency-log
tools read (golang.org/x/mod/sumdb/note, the witness network), not our own:

    example.com/audit
    42
    <base64 root>

    — example.com/audit <base64(key id || Ed25519 signature)>

Verification (`NoteVerifier.verify`, then `Checkpoint.parse_body`) fails with
one error type, `CheckpointError`, whose message says which step failed.
Misusing the constructors (an invalid key name, a short root) is a bug in the
caller and raises `ValueError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
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

from audit.merkle import HASH_SIZE

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "NoteSigner",
    "NoteVerifier",
    "key_id",
    "sign_checkpoint",
    "verify_checkpoint",
]

# C2SP signed-note signature type for Ed25519.
_ALG_ED25519 = 0x01
_KEY_ID_SIZE = 4
_SIGNATURE_SIZE = 64
_SIG_PREFIX = "\u2014 "  # EM DASH, space
# The Go reference stops at 100 signature lines; so do we, so a note padded
# with junk signatures cannot make verification arbitrarily slow.
_MAX_SIGNATURES = 100
# Tree sizes are uint64 in every other implementation; a larger one cannot be
# a real log and would not round-trip through them.
_MAX_TREE_SIZE = 2**64 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX8 = re.compile(r"[0-9a-f]{8}")
# ASCII control characters other than newline are forbidden in a note.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class CheckpointError(Exception):
    """A signed note or checkpoint is malformed, unsigned, or signed wrongly."""


def _valid_name(name: str) -> bool:
    """signed-note key names: non-empty, no Unicode whitespace, no '+'."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def key_id(name: str, public_key: bytes) -> bytes:
    """C2SP signed-note Ed25519 key ID: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([_ALG_ED25519]) + public_key).digest()
    return digest[:_KEY_ID_SIZE]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError(f"{what} is not valid base64") from exc


def _decode_note(text: bytes) -> str:
    """Decode note bytes as signed-note text allows: UTF-8, no control chars but '\\n'."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError("note is not valid UTF-8") from exc
    if _CONTROL.search(decoded):
        raise CheckpointError("note contains an ASCII control character other than newline")
    return decoded


# --- the checkpoint body ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head as C2SP tlog-checkpoint writes it.

    `extensions` holds any lines after the root hash. We emit none, but the
    spec allows them and a parsed checkpoint keeps them, so `body()` always
    reproduces the exact bytes that were signed.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or _CONTROL.search(self.origin):
            raise ValueError("origin must be one non-empty line without control characters")
        if isinstance(self.size, bool) or not 0 <= self.size <= _MAX_TREE_SIZE:
            raise ValueError(f"tree size {self.size!r} is not a uint64")
        if len(self.root) != HASH_SIZE:
            raise ValueError(f"root hash is {len(self.root)} bytes, not {HASH_SIZE}")
        for line in self.extensions:
            if not line or "\n" in line or _CONTROL.search(line):
                raise ValueError("extension lines must be non-empty single lines")

    def body(self) -> bytes:
        """The note text: origin, decimal size, base64 root, extensions, each + '\\n'."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        lines.extend(self.extensions)
        return "".join(line + "\n" for line in lines).encode()

    @classmethod
    def parse_body(cls, text: bytes) -> Checkpoint:
        """Parse a note text strictly; extension lines are kept, not interpreted.

        1. valid note text ending in a newline, no empty lines;
        2. an origin line;
        3. a size line: ASCII decimal, no sign, no leading zeros, <= 2**64 - 1;
        4. a root line: canonical standard base64 of a 32-byte hash;
        5. zero or more extension lines.
        """
        # 1.
        decoded = _decode_note(text)
        if not decoded.endswith("\n"):
            raise CheckpointError("checkpoint body does not end with a newline")
        lines = decoded[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint body has {len(lines)} lines, needs at least 3")
        if any(not line for line in lines):
            raise CheckpointError("checkpoint body contains an empty line")
        origin, size_line, root_line, *extensions = lines
        # 2. (non-empty: checked above)
        # 3.
        if not _DECIMAL.fullmatch(size_line):
            raise CheckpointError("tree size is not a canonical decimal number")
        size = int(size_line)
        if size > _MAX_TREE_SIZE:
            raise CheckpointError("tree size does not fit in 64 bits")
        # 4. Re-encoding rejects non-canonical padding bits, so one root has one spelling.
        root = _b64decode(root_line, "root hash")
        if len(root) != HASH_SIZE or base64.b64encode(root).decode() != root_line:
            raise CheckpointError("root hash is not the base64 of a 32-byte hash")
        # 5.
        return cls(origin, size, root, tuple(extensions))


# --- signed notes ---------------------------------------------------------------------


class NoteSigner:
    """Signs note texts with one Ed25519 key under one key name."""

    __slots__ = ("_private", "key_id", "name", "public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not _valid_name(name):
            raise ValueError(f"invalid key name {name!r}: empty, whitespace or '+'")
        self.name = name
        self._private = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(name, _raw_public(self.public_key))

    def __repr__(self) -> str:
        # Never the seed.
        return f"NoteSigner(name={self.name!r}, key_id={self.key_id.hex()})"

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_signer_key(cls, skey: str) -> NoteSigner:
        """Parse `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`."""
        # maxsplit: base64 may itself contain '+'; a name may not.
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise CheckpointError("signer key is not PRIVATE+KEY+<name>+<id>+<key>")
        name, id_hex, key_b64 = parts[2:]
        raw = _parse_key(name, id_hex, key_b64, "signer key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw))
        if signer.key_id.hex() != id_hex:
            raise CheckpointError("signer key's key id does not match its key")
        return signer

    def signer_key(self) -> str:
        """The key in golang.org/x/mod/sumdb/note's signer-key format. Secret."""
        seed = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        encoded = base64.b64encode(bytes([_ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{encoded}"

    def verifier_key(self) -> str:
        """The public key in golang.org/x/mod/sumdb/note's verifier-key format."""
        encoded = base64.b64encode(bytes([_ALG_ED25519]) + _raw_public(self.public_key))
        return f"{self.name}+{self.key_id.hex()}+{encoded.decode()}"

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.public_key)

    def signature_line(self, body: bytes) -> bytes:
        """One `— <name> <base64(key id || signature)>\\n` line over `body`."""
        _check_body(body)
        sig = self._private.sign(body)
        encoded = base64.b64encode(self.key_id + sig).decode()
        return f"{_SIG_PREFIX}{self.name} {encoded}\n".encode()

    def sign(self, body: bytes) -> bytes:
        """The signed note: `body`, a blank line, one signature line."""
        return body + b"\n" + self.signature_line(body)


def _check_body(body: bytes) -> None:
    # Refuse to sign what no verifier would accept: a bug here, not bad input.
    try:
        text = _decode_note(body)
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None
    if not text.endswith("\n"):
        raise ValueError("note text must end with a newline")


def _parse_key(name: str, id_hex: str, key_b64: str, what: str) -> bytes:
    if not _valid_name(name):
        raise CheckpointError(f"{what} has an invalid key name")
    if not _HEX8.fullmatch(id_hex):
        raise CheckpointError(f"{what} id is not 8 lowercase hex digits")
    raw = _b64decode(key_b64, what)
    if len(raw) != 1 + 32 or raw[0] != _ALG_ED25519:
        raise CheckpointError(f"{what} is not an Ed25519 key")
    return raw[1:]


class NoteVerifier:
    """Checks notes for a valid signature by one Ed25519 key under one name."""

    __slots__ = ("key_id", "name", "public_key")

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        if not _valid_name(name):
            raise ValueError(f"invalid key name {name!r}: empty, whitespace or '+'")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, _raw_public(public_key))

    def __repr__(self) -> str:
        return f"NoteVerifier(name={self.name!r}, key_id={self.key_id.hex()})"

    @classmethod
    def from_verifier_key(cls, vkey: str) -> NoteVerifier:
        """Parse `<name>+<hex key id>+<base64(0x01 || public key)>`."""
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise CheckpointError("verifier key is not <name>+<id>+<key>")
        name, id_hex, key_b64 = parts
        raw = _parse_key(name, id_hex, key_b64, "verifier key")
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw))
        # The id is a checksum of name and key: a mismatch is a typo or a swap.
        if verifier.key_id.hex() != id_hex:
            raise CheckpointError("verifier key's key id does not match its key")
        return verifier

    def verifier_key(self) -> str:
        encoded = base64.b64encode(bytes([_ALG_ED25519]) + _raw_public(self.public_key))
        return f"{self.name}+{self.key_id.hex()}+{encoded.decode()}"

    def verify(self, note: bytes) -> bytes:
        """Return the note text if this key signed it; else raise `CheckpointError`.

        1. the whole note is UTF-8 with no control characters but newline;
        2. it splits at its last blank line into text (ending in a newline) and
           a non-empty block of signature lines, each ending in a newline;
        3. every signature line is `— <valid name> <base64 of >= 5 bytes>`,
           at most 100 of them;
        4. a line with our name and key id must carry a valid signature
           (a bad one is an attack or corruption, never skipped);
           lines by other keys are ignored: cosigners may add theirs;
        5. at least one line is ours.
        """
        # 1.
        decoded = _decode_note(note)
        # 2.
        split = decoded.rfind("\n\n")
        if split < 0:
            raise CheckpointError("note has no blank line before its signatures")
        text, block = decoded[: split + 1], decoded[split + 2 :]
        if not block or not block.endswith("\n"):
            raise CheckpointError("note's signature block is empty or unterminated")
        lines = block[:-1].split("\n")
        if len(lines) > _MAX_SIGNATURES:
            raise CheckpointError(f"note has more than {_MAX_SIGNATURES} signatures")
        body = text.encode()
        verified = False
        for line in lines:
            # 3.
            if not line.startswith(_SIG_PREFIX):
                raise CheckpointError("signature line does not start with an em dash and space")
            name, sep, encoded = line[len(_SIG_PREFIX) :].partition(" ")
            if not sep or not _valid_name(name) or not encoded:
                raise CheckpointError("signature line is not '— <name> <signature>'")
            sig = _b64decode(encoded, "signature")
            if len(sig) < _KEY_ID_SIZE + 1:
                raise CheckpointError("signature is too short to hold a key id")
            # 4.
            if name != self.name or sig[:_KEY_ID_SIZE] != self.key_id:
                continue
            if len(sig) != _KEY_ID_SIZE + _SIGNATURE_SIZE:
                raise CheckpointError(f"signature by {self.name} is not an Ed25519 signature")
            try:
                self.public_key.verify(sig[_KEY_ID_SIZE:], body)
            except InvalidSignature as exc:
                raise CheckpointError(f"signature by {self.name} does not verify") from exc
            verified = True
        # 5.
        if not verified:
            raise CheckpointError(f"note carries no signature by {self.name}")
        return body


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> bytes:
    """The checkpoint as a signed note."""
    return signer.sign(cp.body())


def verify_checkpoint(note: bytes, verifier: NoteVerifier, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint and parse it; with `origin`, also require that log.

    Checking the origin matters: a key may sign for several logs, and a valid
    checkpoint of the wrong log says nothing about this one.
    """
    cp = Checkpoint.parse_body(verifier.verify(note))
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint is for origin {cp.origin!r}, not {origin!r}")
    return cp
