"""Security: authentication (JWT/JWKS), the embedded OAuth2 issuer, the keyring (KEK/DEK,
rotation, the KMS seam), and stage 5's input inspection (security.inspection).

The names below are the package's interface to the other concern packages.
"""

from security.keyring import (
    LEGACY_AUDIT_KEK_ID,
    KeyProvider,
    KeyringError,
    LocalKeyring,
    StaticKeyProvider,
    UnknownKeyError,
    WrappedKey,
    keyring_from_settings,
    rewrap,
)

__all__ = [
    "LEGACY_AUDIT_KEK_ID",
    "KeyProvider",
    "KeyringError",
    "LocalKeyring",
    "StaticKeyProvider",
    "UnknownKeyError",
    "WrappedKey",
    "keyring_from_settings",
    "rewrap",
]
