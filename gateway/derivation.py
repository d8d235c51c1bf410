"""Every key the gateway derives from its one secret (`secret_key`), by named purpose.

One function, `derive`, and one table, `Purpose`: a purpose names what the key is
for and how it is derived, so two uses never share a key and no module invents its
own idiom. New purposes use HKDF-SHA256 (RFC 5869) with the purpose as `info`.
Three purposes predate this module and key values that are already stored (consent
handles, feature-erasure markers, PII pseudonyms in sealed audit records): they keep
their derivation, HMAC-SHA256 keyed by the secret over the purpose (a PRF, as sound
a derivation as HKDF-Expand), because changing it would orphan that data.
`Settings.derived_keys` derives each key once per settings object.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_HKDF = "hkdf-sha256"
_STORED_HMAC = "hmac-sha256"


class Purpose(Enum):
    """(info, scheme) of each derived key. Changing a stored purpose loses data."""

    # Keys whose values are stored or shared: their derivations are fixed.
    AUDIT_SUBJECT_HANDLE = (b"gateway-audit-subject-handle", _HKDF)
    AB_ASSIGNMENT = (b"gateway-ab-assignment", _HKDF)  # users keep their arm across restarts
    CONSENT_HANDLE = (b"gateway-consent-handle-v1", _STORED_HMAC)
    FEATURE_ERASURE = (b"gateway-feature-erasure-v1", _STORED_HMAC)
    PII_PSEUDONYM = (b"gateway-pii-pseudonym-v1\x00", _STORED_HMAC)
    # Served scores carry it; a later check regenerates it (models.watermark).
    MODEL_WATERMARK = (b"gateway-model-watermark-v1", _HKDF)
    # Keys of in-memory (or TTL-bound Redis) state only.
    PII_CACHE = (b"gateway-pii-cache-v2", _HKDF)
    TOKEN_CACHE = (b"gateway-token-cache-v1", _HKDF)
    INSPECTION = (b"gateway-inspection-v1", _HKDF)

    @property
    def info(self) -> bytes:
        info: bytes = self.value[0]
        return info


def derive(secret: bytes, purpose: Purpose) -> bytes:
    """The 32-byte key for `purpose`."""
    info, scheme = purpose.value
    if scheme == _STORED_HMAC:
        return hmac.new(secret, info, hashlib.sha256).digest()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


class DerivedKeys:
    """All purposes' keys, derived once; the secret itself is not kept."""

    def __init__(self, secret: bytes) -> None:
        self._keys = {purpose: derive(secret, purpose) for purpose in Purpose}

    def __getitem__(self, purpose: Purpose) -> bytes:
        return self._keys[purpose]
