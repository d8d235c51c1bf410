"""The on-disk layout of a model package and the bytes its cryptography binds.

    models/<name>/<version>/
        manifest.json      what the package is (signed)
        model.onnx.enc     AES-256-GCM ciphertext of the ONNX bytes (signed)
        model.sig          OpenSSF model-signing signature (sigstore bundle, key-based)
        dek.json           the data key, wrapped by a keyring KEK (NOT signed: `keys
                           rotate` re-wraps it; tampering only makes unwrap fail)

The ciphertext's associated data binds the model name, version and the digest
of the manifest's core (every field except the ciphertext's own digest, which
cannot be known before encrypting), so a ciphertext never decrypts under another
package's manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

FORMAT = "gateway-model-package/1"
MANIFEST = "manifest.json"
CIPHERTEXT = "model.onnx.enc"
SIGNATURE = "model.sig"
WRAPPED_DEK = "dek.json"
SIGNED_FILES = frozenset({MANIFEST, CIPHERTEXT})
UNSIGNED_FILES = frozenset({SIGNATURE, WRAPPED_DEK})
# Names and versions become path components: keep them boring.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CIPHERTEXT_FIELD = "ciphertext"


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def core_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest without its ciphertext section, canonical JSON."""
    core = {k: v for k, v in manifest.items() if k != _CIPHERTEXT_FIELD}
    return hashlib.sha256(canonical_json(core)).hexdigest()


def payload_aad(name: str, version: str, digest_of_core: str) -> bytes:
    return b"\0".join(
        (b"gateway-model-v1", name.encode(), version.encode(), digest_of_core.encode())
    )


def dek_aad(name: str, version: str, dek_id: str) -> bytes:
    return b"\0".join((b"gateway-model-dek-v1", name.encode(), version.encode(), dek_id.encode()))


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions numerically where they are numbers ("10" > "9"), else lexically."""
    parts: list[tuple[int, int | str]] = []
    for part in re.split(r"[.\-+]", version):
        parts.append((0, int(part)) if part.isdigit() else (1, part))
    return tuple(parts)
