"""Per-subject data keys: pseudonyms and sealed personal fields that erasure can destroy.

Each data subject gets a random 256-bit key, stored only wrapped (AES-256-GCM) by
a key-encryption key of the keyring (security/keyring.py), with the subject's
handle as associated data; `gateway keys rotate` re-wraps them. The store
finds it by a handle, HMAC(handle key, tenant || subject id), that never appears
in the log. From the subject key come:
- the pseudonym written in records: HMAC(subject key, "pseudonym"), stable while
  the key lives, unlinkable to the subject once it is destroyed;
- sealed fields: AES-256-GCM under the subject key, bound to the request id.
Erasure deletes the wrapped key (crypto-shredding); the log's bytes, and so
every proof, stay as they were.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audit.store import AuditStore
from gateway.randomness import POOL
from security import (
    LEGACY_AUDIT_KEK_ID,
    KeyProvider,
    KeyringError,
    StaticKeyProvider,
    WrappedKey,
)

LOCAL_KEK_ID = LEGACY_AUDIT_KEK_ID
_SEAL_AAD = b"gateway-audit-sealed-v1|"


class SubjectKeyError(Exception):
    """A subject key cannot be unwrapped (wrong or missing KEK)."""


@dataclass(frozen=True)
class SubjectKey:
    key_id: str
    key: bytes

    @cached_property
    def pseudonym(self) -> str:
        return hmac.new(self.key, b"pseudonym", hashlib.sha256).hexdigest()[:32]

    @cached_property
    def aead(self) -> AESGCM:
        return AESGCM(self.key)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class SubjectKeys:
    def __init__(
        self,
        store: AuditStore,
        *,
        handle_key: bytes,
        keyring: KeyProvider | None = None,
        kek: bytes | None = None,
        cache_size: int = 50_000,
    ) -> None:
        if keyring is None:
            if kek is None:
                raise ValueError("give a keyring or a raw key-encryption key")
            keyring = StaticKeyProvider(LOCAL_KEK_ID, kek)
        self._store = store
        self._keyring = keyring
        self._handle_key = handle_key
        self._cache: OrderedDict[bytes, SubjectKey] = OrderedDict()
        self._cache_size = cache_size

    def handle(self, tenant: str | None, subject_id: str) -> bytes:
        message = (tenant or "").encode() + b"\x00" + subject_id.encode()
        return hmac.digest(self._handle_key, message, "sha256")

    def cached(self, handle: bytes) -> SubjectKey | None:
        found = self._cache.get(handle)
        if found is not None:
            self._cache.move_to_end(handle)
        return found

    def _remember(self, handle: bytes, key: SubjectKey) -> SubjectKey:
        self._cache[handle] = key
        self._cache.move_to_end(handle)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return key

    def _unwrap(self, handle: bytes, key_id: str, wrapped: bytes) -> SubjectKey:
        try:
            key = self._keyring.unwrap(WrappedKey(key_id, wrapped), handle)
        except KeyringError as exc:
            raise SubjectKeyError(f"subject key does not unwrap: {exc}") from None
        return SubjectKey(key_id, key)

    def get_or_create(self, handle: bytes) -> SubjectKey:
        """Blocking (a durable write for a new subject): call off the event loop."""
        found = self.cached(handle)
        if found is not None:
            return found
        try:
            wrapped = self._keyring.wrap(AESGCM.generate_key(bit_length=256), handle)
        except KeyringError as exc:
            raise SubjectKeyError(f"cannot wrap a new subject key: {exc}") from None
        fresh = self._unwrap(handle, wrapped.kek_id, wrapped.blob)
        # Another writer may have created this subject's key first; its key wins.
        key_id, stored = self._store.get_or_create_subject_key(
            handle, fresh.pseudonym, wrapped.kek_id, wrapped.blob
        )
        return self._remember(handle, self._unwrap(handle, key_id, stored))

    def lookup(self, handle: bytes) -> SubjectKey | None:
        found = self.cached(handle)
        if found is not None:
            return found
        row = self._store.subject_key(handle)
        return None if row is None else self._remember(handle, self._unwrap(handle, *row))

    def by_pseudonym(self, pseudonym: str) -> SubjectKey | None:
        """The key behind a pseudonym found in a record; None once erased."""
        row = self._store.subject_key_by_pseudonym(pseudonym)
        return None if row is None else self._unwrap(*row)

    def rewrap_all(self, batch: int = 1000) -> tuple[int, int]:
        """Re-wrap every subject key not under the current KEK; returns (rewrapped, total).

        Only the wrapping changes: subject keys, pseudonyms and sealed fields stay as
        they are. A key erased meanwhile stays erased (the update matches the old KEK).
        """
        current = self._keyring.current_key_id()
        after, done, total = b"", 0, 0
        while True:
            rows = self._store.subject_keys_after(after, batch)
            if not rows:
                return done, total
            for handle, key_id, blob in rows:
                total += 1
                if key_id == current:
                    continue
                key = self._unwrap(handle, key_id, blob).key
                wrapped = self._keyring.wrap(key, handle)
                if self._store.rewrap_subject_key(handle, key_id, wrapped.kek_id, wrapped.blob):
                    done += 1
            after = rows[-1][0]

    def destroy(self, handle: bytes) -> bool:
        self._cache.pop(handle, None)
        return self._store.delete_subject_key(handle)

    @staticmethod
    def seal(key: SubjectKey, request_id: str, fields: dict[str, Any]) -> dict[str, str]:
        nonce = POOL.take(12)
        plaintext = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
        ciphertext = key.aead.encrypt(nonce, plaintext, _SEAL_AAD + request_id.encode())
        return {"key_id": key.pseudonym, "nonce": _b64(nonce), "ct": _b64(ciphertext)}

    @staticmethod
    def unseal(key: SubjectKey, request_id: str, sealed: dict[str, str]) -> dict[str, Any]:
        try:
            plaintext = key.aead.decrypt(
                base64.b64decode(sealed["nonce"]),
                base64.b64decode(sealed["ct"]),
                _SEAL_AAD + request_id.encode(),
            )
        except (InvalidTag, KeyError, ValueError):
            raise SubjectKeyError("sealed fields do not open with this subject key") from None
        opened: dict[str, Any] = orjson.loads(plaintext)
        return opened
