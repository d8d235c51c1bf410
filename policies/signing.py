"""Ed25519 signatures over a bundle's content hash (``bundle.sig``).

Keys travel as base64 of the raw 32-byte key (public and private alike); a key id is
the first 8 hex digits of SHA-256 over the raw public key, so a signature names its
key without carrying it. The signature covers the string ``sha256:<hex>`` exactly, and
that hash covers every bundle file except the manifest and the signature itself:
manifest metadata (name, version, description) is therefore *not* signed.

``verify_bundle_signature`` steps, each failing with ``PolicyError``: (1) the bundle
is signed, (2) its key id is among the trusted keys, (3) the signature verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from policies.bundle import PolicyBundle, load_bundle
from policies.content_hash import SIGNATURE
from policies.errors import PolicyError


def _raw(b64: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(b64, validate=True)
    except binascii.Error as exc:
        raise PolicyError(f"{what} is not base64") from exc
    if len(raw) != 32:
        raise PolicyError(f"{what} must be a raw 32-byte Ed25519 key")
    return raw


def key_id(public_key: str) -> str:
    """First 8 hex digits of SHA-256 over the raw public key."""
    return hashlib.sha256(_raw(public_key, "public key")).hexdigest()[:8]


def public_key_of(private_key: str) -> str:
    """The base64 raw public key that belongs to a base64 raw private key."""
    key = Ed25519PrivateKey.from_private_bytes(_raw(private_key, "private key"))
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def sign_bundle(directory: Path, private_key: str) -> Path:
    """Load (and so validate) the bundle in ``directory``, then write its ``bundle.sig``."""
    bundle = load_bundle(directory)
    key = Ed25519PrivateKey.from_private_bytes(_raw(private_key, "private key"))
    signature = base64.b64encode(key.sign(bundle.content_hash.encode())).decode()
    out = directory / SIGNATURE
    out.write_text(
        # Quoted: an all-digit key id would otherwise load as a YAML integer.
        f'key_id: "{key_id(public_key_of(private_key))}"\nsignature: "{signature}"\n',
        encoding="utf-8",
    )
    return out


def verify_bundle_signature(bundle: PolicyBundle, trusted_public_keys: Iterable[str]) -> str:
    """The id of the trusted key that signed ``bundle``; ``PolicyError`` otherwise."""
    # 1. signed at all
    if bundle.signature is None:
        raise PolicyError("bundle is not signed", file=SIGNATURE)
    # 2. by a key we trust
    trusted = {key_id(k): k for k in trusted_public_keys}
    public = trusted.get(bundle.signature.key_id)
    if public is None:
        raise PolicyError(
            f"signed by untrusted key {bundle.signature.key_id}", file=SIGNATURE, key="key_id"
        )
    # 3. over this content hash
    try:
        signature = base64.b64decode(bundle.signature.signature, validate=True)
        Ed25519PublicKey.from_public_bytes(_raw(public, "public key")).verify(
            signature, bundle.content_hash.encode()
        )
    except (binascii.Error, InvalidSignature) as exc:
        raise PolicyError(
            "bad signature: does not verify over the bundle's content hash",
            file=SIGNATURE,
            key="signature",
        ) from exc
    return bundle.signature.key_id
