"""Load a model package: the numbered steps, each refusing with its own typed error.

    0. read manifest, ciphertext, signature and wrapped key into memory (size-bounded)
    1. verify the signature against the trusted signer keys, and that it covers
       exactly the bytes read (models.signing)
    2. check the manifest against the policy: allowed name, minimum version
    3. unwrap the data key with the keyring
    4. decrypt in memory (AES-256-GCM; associated data binds name, version, manifest)
    5. check the plaintext digest against the manifest
    6. create the onnxruntime session from the bytes (never from a path; never with
       optimized_model_filepath), and check its signature against the manifest

Nothing is written anywhere: the plaintext exists only as a bytes object that the
session is built from and that is dropped right after.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from models.package_errors import (
    DecryptError,
    KeyUnavailableError,
    PackageUnreadableError,
    PlaintextDigestError,
    PlaintextModelError,
    PolicyRefusedError,
    SessionError,
    UnwrapError,
)
from models.package_format import (
    CIPHERTEXT,
    FORMAT,
    MANIFEST,
    SIGNATURE,
    SIGNED_FILES,
    UNSIGNED_FILES,
    WRAPPED_DEK,
    core_digest,
    dek_aad,
    payload_aad,
    version_key,
)
from models.signing import TrustedSigner, verify_signature
from security import KeyProvider, KeyringError, UnknownKeyError, WrappedKey

NUMERIC_VERSION = re.compile(r"\d{1,9}(\.\d{1,9}){0,7}")
# A demo-sized model is ~1 MB; a package far above this is a mistake or an attack.
DEFAULT_MAX_BYTES = 2 * 1024**3


@dataclass(frozen=True, slots=True)
class PolicyView:
    """What step 2 needs from the policy bundle (None: no policy engine, dev mode)."""

    allowed_names: frozenset[str]
    min_version: Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class VerifiedPackage:
    name: str
    version: str
    manifest: dict[str, Any]
    # SHA-256 of manifest.json: names this exact package (the manifest names every byte).
    package_digest: str
    signer: str
    kek_id: str
    directory: Path


def _read(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise PackageUnreadableError(f"{path.name} is {size} bytes, over the {max_bytes} limit")
        return path.read_bytes()
    except FileNotFoundError:
        raise PackageUnreadableError(f"{path.name} is missing from {path.parent}") from None
    except IsADirectoryError:
        raise PackageUnreadableError(f"{path.name} is not a file") from None
    except OSError as exc:
        raise PackageUnreadableError(f"cannot read {path}: {exc.strerror}") from None


def _check_listing(directory: Path) -> None:
    if not directory.is_dir():
        raise PackageUnreadableError(f"no model package at {directory}")
    present = {p.name for p in directory.iterdir()}
    if "model.onnx" in present:
        raise PlaintextModelError(
            f"{directory} holds a plaintext model.onnx; packages hold only ciphertext. Remove "
            "it and run `gateway init` (demo model) or `gateway models pack`"
        )
    extra = present - SIGNED_FILES - UNSIGNED_FILES
    if extra:
        # model-signing's own verifier would refuse unsigned files too.
        raise PackageUnreadableError(
            f"{directory} holds files that are not signed: {sorted(extra)}"
        )


def _manifest(raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise PackageUnreadableError(f"{MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackageUnreadableError(f"{MANIFEST} is not a {FORMAT} manifest")
    return manifest


def _field(manifest: dict[str, Any], *path: str) -> Any:
    value: Any = manifest
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise PackageUnreadableError(f"{MANIFEST} lacks {'.'.join(path)}")
        value = value[key]
    return value


def check_policy(name: str, version: str, policy: PolicyView | None) -> None:
    """Step 2: the policy allows this model name and version (anti-rollback)."""
    if policy is None:
        return
    if name not in policy.allowed_names:
        raise PolicyRefusedError(f"model {name!r} is not in the policy bundle's models")
    minimum = policy.min_version(name)
    if minimum is None:
        return
    for checked in (version, minimum):
        # Only dotted numbers have an order an attacker cannot game ("v9" vs "v10",
        # "dev" vs "100"): anything else is refused while a floor is set.
        if not NUMERIC_VERSION.fullmatch(checked):
            raise PolicyRefusedError(
                f"model {name!r}: version {checked!r} is not dotted numbers, so it cannot "
                "be checked against the policy's min_version"
            )
    if version_key(version) < version_key(minimum):
        raise PolicyRefusedError(
            f"model {name!r} version {version!r} is below the policy's min_version {minimum!r}"
        )


def verify_package(
    directory: Path,
    *,
    trusted: Iterable[TrustedSigner],
    keyring: KeyProvider,
    policy: PolicyView | None,
    expected: tuple[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[VerifiedPackage, bytes]:
    """Steps 0-5. Returns the verified package and the plaintext model bytes (in memory)."""
    # 0. read everything once; every later step works on these bytes only.
    _check_listing(directory)
    files = {name: _read(directory / name, max_bytes) for name in sorted(SIGNED_FILES)}
    signature = _read(directory / SIGNATURE, 1024 * 1024)
    wrapped_raw = _read(directory / WRAPPED_DEK, 64 * 1024)

    # 1. signature by a trusted key over exactly these bytes.
    signer = verify_signature(signature, files, trusted)
    manifest = _manifest(files[MANIFEST])
    name, version = str(_field(manifest, "name")), str(_field(manifest, "version"))
    if expected is not None and (name, version) != expected:
        # A signed package copied under another name or version directory.
        raise PackageUnreadableError(
            f"{directory} holds {name} {version}, expected {expected[0]} {expected[1]}"
        )

    # 2. policy: allowed name, minimum version.
    check_policy(name, version, policy)

    # 3. unwrap the data key.
    dek_id = str(_field(manifest, "encryption", "dek_id"))
    try:
        wrapped = WrappedKey.from_json(json.loads(wrapped_raw))
        dek = keyring.unwrap(wrapped, dek_aad(name, version, dek_id))
    except ValueError:
        raise UnwrapError(f"{WRAPPED_DEK} is not JSON") from None
    except UnknownKeyError as exc:
        raise KeyUnavailableError(f"data key of {name} {version}: {exc}") from None
    except KeyringError as exc:
        raise UnwrapError(f"data key of {name} {version}: {exc}") from None

    # 4. decrypt in memory.
    try:
        nonce = bytes.fromhex(str(_field(manifest, "encryption", "nonce")))
        plaintext = AESGCM(dek).decrypt(
            nonce, files[CIPHERTEXT], payload_aad(name, version, core_digest(manifest))
        )
    except (InvalidTag, ValueError):
        raise DecryptError(f"{CIPHERTEXT} of {name} {version} does not decrypt") from None

    # 5. the plaintext is the model the manifest names.
    if hashlib.sha256(plaintext).hexdigest() != _field(manifest, "model", "sha256"):
        raise PlaintextDigestError(f"decrypted {name} {version} does not match its digest")
    package = VerifiedPackage(
        name=name,
        version=version,
        manifest=manifest,
        package_digest=hashlib.sha256(files[MANIFEST]).hexdigest(),
        signer=signer.name,
        kek_id=wrapped.kek_id,
        directory=directory,
    )
    return package, plaintext


def check_session_signature(
    package: VerifiedPackage, inputs: list[dict[str, object]], outputs: list[dict[str, object]]
) -> None:
    """Step 6 (after the session exists): its inputs/outputs are the manifest's."""
    declared = _field(package.manifest, "signature")
    if declared != {"inputs": inputs, "outputs": outputs}:
        raise SessionError(
            f"{package.name} {package.version}: the session's inputs/outputs differ from the "
            "manifest's signature"
        )
