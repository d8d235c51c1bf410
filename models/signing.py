"""Package signatures in the OpenSSF model-signing format (key-based, fully offline).

A third party verifies a package with that project's own tool:

    model_signing verify key models/demo-ranker/1 \
        --signature models/demo-ranker/1/model.sig --public_key model-signing.pub

model-signing's key-based signer supports ECDSA (P-256/384/521), not Ed25519, so
model-signing keys are P-256 (PEM). The signature is a sigstore bundle holding a
DSSE envelope over an in-toto statement that lists the SHA-256 of every signed
file; `model.sig` and `dek.json` are excluded (recorded as ignore paths inside
the signed statement, so nobody can widen them afterwards).

The gateway does not verify the files on disk: it verifies the signature, then
compares the signed digests with the bytes it has already read into memory, so
a file swapped between verification and use is never served.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.files import write_private
from models.package_errors import ContentMismatchError, SignatureError, UntrustedSignerError
from models.package_format import SIGNATURE, SIGNED_FILES, UNSIGNED_FILES

_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


@dataclass(frozen=True, slots=True)
class TrustedSigner:
    name: str
    public_key: ec.EllipticCurvePublicKey

    @property
    def hint(self) -> str:
        # model-signing names the key in the bundle by SHA-256 of its PEM encoding.
        return hashlib.sha256(public_pem(self.public_key)).hexdigest()


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_public_key(pem: str | bytes, name: str = "signer") -> TrustedSigner:
    """A trusted signer from a PEM public key; ValueError for anything but P-256/384/521."""
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise ValueError("a model-signing key must be an EC P-256, P-384 or P-521 public key")
    return TrustedSigner(name, key)


def read_public_keys(path: Path, name: str) -> list[TrustedSigner]:
    """Every PEM public key in a file (a key file may hold several)."""
    text = path.read_text()
    marker = "-----END PUBLIC KEY-----"
    blocks = [b + marker for b in text.split(marker) if "BEGIN PUBLIC KEY" in b]
    return [parse_public_key(block, f"{name}#{i}") for i, block in enumerate(blocks)]


def create_signing_key(private_path: Path, public_path: Path) -> list[Path]:
    """A new P-256 model-signing key (0600) and its public half; never overwrites."""
    created: list[Path] = []
    if not private_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(private_path, pem)
        created.append(private_path)
    if not public_path.exists():
        private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{private_path} is not an EC private key")
        public_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        public_path.write_bytes(public_pem(private.public_key()))
        created.append(public_path)
    return created


def sign_package(directory: Path, private_key: Path) -> Path:
    """Write `model.sig` over the package's signed files with model-signing."""
    from model_signing import hashing, signing

    config = (
        hashing.Config()  # type: ignore[no-untyped-call]
        .use_file_serialization(hashing_algorithm="sha256")
        .set_ignored_paths(paths=sorted(UNSIGNED_FILES), ignore_git_paths=True)
    )
    out = directory / SIGNATURE
    signer = signing.Config()  # type: ignore[no-untyped-call]
    signer.use_elliptic_key_signer(private_key=private_key).set_hashing_config(config).sign(
        directory, out
    )
    return out


def verify_signature(
    signature: bytes, files: Mapping[str, bytes], trusted: Iterable[TrustedSigner]
) -> TrustedSigner:
    """Step 1: the signature is by a trusted key and covers exactly `files`, byte for byte.

    Returns the signer. Raises UntrustedSignerError, SignatureError or ContentMismatchError.
    """
    from model_signing._signing import sign_ec_key, sign_sigstore_pb
    from sigstore_models.bundle import v1 as bundle_pb

    try:
        parsed = json.loads(signature)
        material = parsed["verificationMaterial"]
        material.setdefault("tlogEntries", [])
        hint = material["publicKey"]["hint"]
        bundle = bundle_pb.Bundle.from_dict(parsed)
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        # The file is attacker-controlled: any shape error is a refused signature.
        raise SignatureError(
            f"{SIGNATURE} is not a model-signing bundle: {type(exc).__name__}"
        ) from None
    signer = next((s for s in trusted if s.hint == hint), None)
    if signer is None:
        raise UntrustedSignerError(f"{SIGNATURE} is signed by a key the gateway does not trust")

    class _Verifier(sign_ec_key.Verifier):
        # The stock verifier reads the key from a path; ours is already in memory.
        def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
            self._public_key = key

    try:
        signed = _Verifier(signer.public_key).verify(sign_sigstore_pb.Signature(bundle))
    except (ValueError, LookupError, TypeError, AttributeError, InvalidSignature) as exc:
        raise SignatureError(f"{SIGNATURE} does not verify: {type(exc).__name__}") from None
    digests = {rd.identifier: rd.digest for rd in signed.resource_descriptors()}
    if set(digests) != SIGNED_FILES:
        raise ContentMismatchError(
            f"the signature covers {sorted(digests)}, expected {sorted(SIGNED_FILES)}"
        )
    for name, digest in digests.items():
        if digest.algorithm != "sha256":
            raise SignatureError(f"{name}: unsupported digest algorithm {digest.algorithm}")
        if hashlib.sha256(files[name]).digest() != digest.digest_value:
            raise ContentMismatchError(f"{name} does not match its signed digest")
    return signer
