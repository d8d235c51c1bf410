"""Per-subject data keys: pseudonyms and sealed personal fields that erasure can destroy.

Each data subject gets a random 256-bit key, stored only wrapped (AES-256-GCM) by
a key-encryption key (a local key file until the keyring exists). The store
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
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audit.store import AuditStore
from gateway.randomness import POOL

LOCAL_KEK_ID = "local-kek-1"
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
        self, store: AuditStore, *, kek: bytes, handle_key: bytes, cache_size: int = 50_000
    ) -> None:
        if len(kek) != 32:
            raise ValueError("the key-encryption key must be 32 bytes")
        self._store = store
        self._kek = AESGCM(kek)
        self._handle_key = handle_key
        self._cache: OrderedDict[bytes, SubjectKey] = OrderedDict()
        self._cache_size = cache_size

    def handle(self, tenant: str | None, subject_id: str) -> bytes:
        message = (tenant or "").encode() + b"\x00" + subject_id.encode()
        return hmac.new(self._handle_key, message, hashlib.sha256).digest()

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
        if key_id != LOCAL_KEK_ID:
            raise SubjectKeyError(f"subject key wrapped by unknown KEK {key_id!r}")
        try:
            key = self._kek.decrypt(wrapped[:12], wrapped[12:], handle)
        except InvalidTag:
            raise SubjectKeyError("subject key does not unwrap with this KEK") from None
        return SubjectKey(key_id, key)

    def get_or_create(self, handle: bytes) -> SubjectKey:
        """Blocking (a durable write for a new subject): call off the event loop."""
        found = self.cached(handle)
        if found is not None:
            return found
        fresh = SubjectKey(LOCAL_KEK_ID, AESGCM.generate_key(bit_length=256))
        nonce = os.urandom(12)
        wrapped = nonce + self._kek.encrypt(nonce, fresh.key, handle)
        # Another writer may have created this subject's key first; its key wins.
        key_id, stored = self._store.get_or_create_subject_key(
            handle, fresh.pseudonym, LOCAL_KEK_ID, wrapped
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
