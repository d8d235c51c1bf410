"""The keyring: key-encryption keys (KEKs) that wrap every data key (DEK) at rest.

A DEK is random per artifact (one per model package, one per audit data subject)
and is only ever stored wrapped: AES-256-GCM under a KEK, with associated data
that names what the DEK belongs to, so a wrapped key moved to another artifact
does not unwrap. The wrapped form records the id of the KEK that wrapped it,
so rotation can re-wrap every DEK without touching the payloads they encrypt.

`KeyProvider` is the seam for an external KMS or HSM: three operations, the
same ones a cloud KMS offers (wrap, unwrap, current key id). `LocalKeyring`,
the default, keeps KEKs as 0600 files under the data directory:

    keys/keyring.json        {"version": 1, "keys": [{"id", "created", "state"}]}
    keys/kek/<id>.key        32 raw bytes
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.files import replace_private, write_private

if TYPE_CHECKING:
    from gateway.settings import Settings

KeyState = Literal["active", "retired"]
STATE_FILE = "keyring.json"
KEK_DIR = "kek"
# The key file the audit log used before the keyring existed; imported under this id.
LEGACY_AUDIT_KEK_ID = "local-kek-1"
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_NONCE_BYTES = 12


class KeyringError(Exception):
    """Base of every keyring failure; the message never contains key material."""


class UnknownKeyError(KeyringError):
    """The wrapped key names a KEK this keyring does not hold (deleted, or another box's)."""


class KeyUnwrapError(KeyringError):
    """The wrapped key does not authenticate under its KEK (tampered, wrong KEK or AAD)."""


@dataclass(frozen=True, slots=True)
class WrappedKey:
    kek_id: str
    # nonce (12 bytes) || AES-256-GCM ciphertext and tag of the DEK.
    blob: bytes

    def to_json(self) -> dict[str, str]:
        return {"kek_id": self.kek_id, "wrapped": base64.b64encode(self.blob).decode()}

    @classmethod
    def from_json(cls, data: object) -> WrappedKey:
        if not isinstance(data, dict):
            raise KeyringError("wrapped key is not an object")
        kek_id, wrapped = data.get("kek_id"), data.get("wrapped")
        if not isinstance(kek_id, str) or not isinstance(wrapped, str):
            raise KeyringError("wrapped key needs string fields kek_id and wrapped")
        try:
            blob = base64.b64decode(wrapped, validate=True)
        except binascii.Error:
            raise KeyringError("wrapped key is not base64") from None
        return cls(kek_id, blob)


@runtime_checkable
class KeyProvider(Protocol):
    """What a KMS / HSM must offer. Implementations must be safe to call from threads."""

    def current_key_id(self) -> str: ...

    def wrap(self, dek: bytes, aad: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class KekInfo:
    id: str
    created: str
    state: KeyState


def _shred(path: Path) -> None:
    """Overwrite, then unlink: a best effort on file systems that allow it."""
    if not path.is_file():
        return
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.write(b"\0" * size)
        fh.flush()
        os.fsync(fh.fileno())
    path.unlink()


def _now_iso(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalKeyring:
    """KEKs in 0600 files; the default `KeyProvider`. Reads the state file on open."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._dir = directory
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, KekInfo] = {}
        self._aead: dict[str, AESGCM] = {}
        # Key files adopted from before the keyring; shredded with their key.
        self._legacy: dict[str, Path] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._load()

    # -- state ---------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def state_file(self) -> Path:
        return self._dir / STATE_FILE

    def _key_file(self, kek_id: str) -> Path:
        if not _KEY_ID.match(kek_id):
            raise UnknownKeyError("malformed key id")
        return self._dir / KEK_DIR / f"{kek_id}.key"

    def _state_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.state_file.stat()
        except FileNotFoundError:
            return None
        # The inode too: the state file is replaced, never edited, and two quick writes
        # can share an mtime tick and a size.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        """Re-read the state file if another process (`keys rotate`) changed it."""
        if self._state_stamp() != self._stamp:
            with self._lock:
                self._load()

    def _load(self) -> None:
        self._stamp = self._state_stamp()
        if self._stamp is None:
            self._keys = {}
            return
        try:
            raw = json.loads(self.state_file.read_text())
            entries = raw["keys"]
            keys = {e["id"]: KekInfo(str(e["id"]), str(e["created"]), e["state"]) for e in entries}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"keyring state {self.state_file} is unreadable: {exc}") from exc
        for info in keys.values():
            if info.state not in ("active", "retired") or not _KEY_ID.match(info.id):
                raise KeyringError(f"keyring state {self.state_file} has a malformed entry")
        if sum(1 for k in keys.values() if k.state == "active") > 1:
            raise KeyringError(f"keyring state {self.state_file} has more than one active key")
        self._keys = keys

    def _save(self) -> None:
        entries = [
            {"id": k.id, "created": k.created, "state": k.state} for k in self._keys.values()
        ]
        text = json.dumps({"version": 1, "keys": entries}, indent=2) + "\n"
        # Replaced in one step: a crash never leaves a half-written state.
        replace_private(self.state_file, text.encode())
        self._stamp = self._state_stamp()

    def entries(self) -> list[KekInfo]:
        return list(self._keys.values())

    def new_key_id(self) -> str:
        """A fresh KEK id, for `rotate(kek_id)`: a rotation names its new key in the audit
        log before the key exists (record before effect)."""
        stamp = datetime.fromtimestamp(self._clock(), tz=UTC).strftime("%Y%m%dT%H%M%S")
        return f"kek-{stamp}-{secrets.token_hex(3)}"

    def ensure(self) -> list[Path]:
        """Create the keyring with one active KEK if it has none; returns files created."""
        with self._lock:
            if any(k.state == "active" for k in self._keys.values()):
                return []
            return self._add_active()

    def _add_active(self, kek_id: str | None = None) -> list[Path]:
        kek_id = kek_id or self.new_key_id()
        if kek_id in self._keys:
            raise KeyringError(f"key {kek_id!r} is already in the keyring")
        path = self._key_file(kek_id)
        write_private(path, secrets.token_bytes(32))
        for old in list(self._keys.values()):
            if old.state == "active":
                self._keys[old.id] = KekInfo(old.id, old.created, "retired")
        self._keys[kek_id] = KekInfo(kek_id, _now_iso(self._clock), "active")
        self._save()
        return [path, self.state_file]

    def import_legacy(self, kek_id: str, path: Path) -> bool:
        """Adopt a key file that predates the keyring so old wraps still open.

        It becomes the active key of a keyring that has none (an old data directory
        keeps working unchanged), else a retired one that `keys rotate` re-wraps away.
        """
        with self._lock:
            self._legacy[kek_id] = path
            if kek_id in self._keys or not path.is_file():
                return False
            material = path.read_bytes()
            if len(material) != 32:
                raise KeyringError(f"legacy key {path} must be 32 bytes")
            write_private(self._key_file(kek_id), material)
            has_active = any(k.state == "active" for k in self._keys.values())
            state: KeyState = "retired" if has_active else "active"
            self._keys[kek_id] = KekInfo(kek_id, _now_iso(self._clock), state)
            self._save()
            return True

    def rotate(self, kek_id: str | None = None) -> str:
        """A new active KEK (under `kek_id` if given, see `new_key_id`); the previous one is
        retired (still unwraps until deleted)."""
        with self._lock:
            self._add_active(kek_id)
            return self._active_id()

    def delete(self, kek_id: str) -> None:
        """Destroy a retired KEK. The caller must first prove nothing references it."""
        with self._lock:
            info = self._keys.get(kek_id)
            if info is None:
                raise UnknownKeyError(f"no key {kek_id!r} in the keyring")
            if info.state == "active":
                raise KeyringError("the active key cannot be deleted; rotate first")
            for path in (self._key_file(kek_id), self._legacy.get(kek_id)):
                if path is not None:
                    _shred(path)
            del self._keys[kek_id]
            self._aead.pop(kek_id, None)
            self._save()

    # -- KeyProvider ---------------------------------------------------------------------

    def _active_id(self) -> str:
        for info in self._keys.values():
            if info.state == "active":
                return info.id
        raise UnknownKeyError("the keyring has no active key; run `gateway init`")

    def current_key_id(self) -> str:
        self.refresh()
        return self._active_id()

    def _cipher(self, kek_id: str) -> AESGCM:
        cipher = self._aead.get(kek_id)
        if cipher is not None:
            return cipher
        if kek_id not in self._keys:
            self.refresh()
        if kek_id not in self._keys:
            raise UnknownKeyError(f"key {kek_id!r} is not in the keyring")
        try:
            material = self._key_file(kek_id).read_bytes()
        except FileNotFoundError:
            raise UnknownKeyError(f"key file of {kek_id!r} is missing") from None
        except OSError as exc:
            raise KeyringError(f"key file of {kek_id!r} cannot be read: {exc.strerror}") from None
        if len(material) != 32:
            raise KeyringError(f"key file of {kek_id!r} must be 32 bytes")
        cipher = AESGCM(material)
        self._aead[kek_id] = cipher
        return cipher

    def wrap(self, dek: bytes, aad: bytes) -> WrappedKey:
        kek_id = self.current_key_id()
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return WrappedKey(kek_id, nonce + self._cipher(kek_id).encrypt(nonce, dek, aad))

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        cipher = self._cipher(wrapped.kek_id)
        blob = wrapped.blob
        if len(blob) < _NONCE_BYTES + 16:
            raise KeyUnwrapError("wrapped key is truncated")
        try:
            return cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise KeyUnwrapError(f"wrapped key does not open under {wrapped.kek_id!r}") from None


class StaticKeyProvider:
    """One fixed in-memory KEK: tests, benchmarks, and callers that hold a raw key."""

    def __init__(self, kek_id: str, kek: bytes) -> None:
        if len(kek) != 32:
            raise ValueError("a key-encryption key must be 32 bytes")
        self._id = kek_id
        self._aead = AESGCM(kek)

    def current_key_id(self) -> str:
        return self._id

    def wrap(self, dek: bytes, aad: bytes) -> WrappedKey:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return WrappedKey(self._id, nonce + self._aead.encrypt(nonce, dek, aad))

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        if wrapped.kek_id != self._id:
            raise UnknownKeyError(f"key {wrapped.kek_id!r} is not this provider's")
        try:
            return self._aead.decrypt(wrapped.blob[:_NONCE_BYTES], wrapped.blob[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise KeyUnwrapError(f"wrapped key does not open under {self._id!r}") from None


def rewrap(provider: KeyProvider, wrapped: WrappedKey, aad: bytes) -> WrappedKey:
    """The same DEK wrapped by the provider's current KEK (no payload is re-encrypted)."""
    if wrapped.kek_id == provider.current_key_id():
        return wrapped
    return provider.wrap(provider.unwrap(wrapped, aad), aad)


def open_keyring(
    directory: Path,
    *,
    legacy_audit_kek: Path | None = None,
    create: bool = False,
    clock: Callable[[], float] = time.time,
) -> LocalKeyring:
    """Open the local keyring; adopt the pre-keyring audit KEK file if one is there."""
    keyring = LocalKeyring(directory, clock=clock)
    if legacy_audit_kek is not None and legacy_audit_kek.is_file():
        keyring.import_legacy(LEGACY_AUDIT_KEK_ID, legacy_audit_kek)
    if create:
        keyring.ensure()
    return keyring


def keyring_from_settings(settings: Settings, *, require_active: bool = True) -> LocalKeyring:
    """The configured keyring; adopts the pre-keyring audit KEK file if one is there."""
    from gateway.errors import ConfigurationError

    try:
        keyring = open_keyring(
            settings.resolve(settings.keyring.directory),
            legacy_audit_kek=settings.resolve(settings.audit.kek_file),
        )
        if require_active:
            keyring.current_key_id()
    except (KeyringError, OSError) as exc:
        raise ConfigurationError(f"keyring: {exc}") from exc
    return keyring
