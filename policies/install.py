"""`gateway init`'s part: install the default bundle, signed by a key made for this box."""

from __future__ import annotations

import base64
import shutil
from importlib import resources
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.files import write_private
from policies.signing import public_key_of, sign_bundle

SIGNATURE = "bundle.sig"


def default_bundle_dir() -> Path:
    return Path(str(resources.files("policies").joinpath("bundles", "default")))


def install_default_bundle(target: Path, signing_key: Path, public_key: Path) -> list[Path]:
    """Create what is missing (key, bundle, signature); never overwrite an operator's bundle."""
    created: list[Path] = []
    if not signing_key.exists():
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        write_private(signing_key, base64.b64encode(raw) + b"\n")
        created.append(signing_key)
    private = signing_key.read_text().strip()
    if not public_key.exists():
        write_private(public_key, public_key_of(private).encode() + b"\n")
        created.append(public_key)
    if not target.exists():
        shutil.copytree(default_bundle_dir(), target, ignore=shutil.ignore_patterns(SIGNATURE))
        created.append(target)
    if not (target / SIGNATURE).exists():
        sign_bundle(target, private)
        created.append(target / SIGNATURE)
    return created
