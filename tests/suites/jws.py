"""JWS compact tokens built by hand, as an attacker builds them: any header, any claims
bytes (duplicate names included), signed with whatever key and primitive the case needs,
whatever the header says. A library would refuse to misbehave like this."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def js(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


def _mac(alg: str, secret: bytes, data: bytes) -> bytes:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return hmac.new(secret, data, digest).digest()


def _ecdsa_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def jws(
    header: dict[str, Any] | bytes,
    claims: dict[str, Any] | bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes | None,
    alg: str | None = None,
) -> str:
    """Compact JWS over exactly these header/claims bytes; `alg` picks the signing
    primitive (default: the header's), so a header can lie about how it was signed."""
    head = header if isinstance(header, bytes) else js(header)
    body = claims if isinstance(claims, bytes) else js(claims)
    signing_input = f"{b64url(head)}.{b64url(body)}".encode()
    how = alg or (json.loads(head).get("alg") if not isinstance(header, bytes) else "RS256")
    if key is None:
        signature = b""
    elif isinstance(key, bytes):
        signature = _mac(str(how), key, signing_input)
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PKCS1v15(), _HASHES[str(how)[-3:]]())
    else:
        signature = _ecdsa_raw(key, signing_input)
    return f"{signing_input.decode()}.{b64url(signature)}"


def self_signed_cert(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
