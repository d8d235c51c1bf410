"""A JWT attack catalogue, jwt_tool's techniques included (the tag on each case is
jwt_tool's option for it, where it has one). tests/suites/jwt_runner.py runs it against
a real gateway on 127.0.0.1.

tests/security/test_authn_attacks.py already covers the basic cases through the ASGI
client (alg none/None, HS256 with the public PEM, RS384, wrong/unknown/missing kid,
expiry, nbf/iat, audience, issuer, missing claims, tampered payload or signature, jku and
jwk headers with an attacker's key, typ, ES256 with the RSA kid, malformed tokens). This
catalogue adds what it lacks, as one table: every case must get the one 401 answer
(RFC 6750 `invalid_token`, the single problem+json body), be accounted for in the audit
log, and never a 5xx. `CONTROLS` are the same constructions done right: they must get
200, so each attack is refused for what it changes, not for how it was built.

The gateway trusts, besides its embedded issuer (RS256), an external IdP whose keys
are in a JWKS file (RS256 and ES256 allowed, tenant claim `tenant`), so the ECDSA cases
(psychic signatures, r = s = 0) run against an issuer that accepts ES256, and a second
IdP behind a JWKS URL served on loopback, whose key is rotated out mid-run.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.settings import Settings
from security.issuer import public_jwk
from tests.suites.jws import b64url, ec_jwk, js, jws, pem_public, self_signed_cert, unb64url
from tests.suites.servers import issuer_of

RANK = "/v1/rank"
RANK_BODY = {"user_id": "u1", "item_ids": ["i1", "i2"]}
IDP_FILE = "https://idp-file.example.test"
IDP_URL = "https://idp-url.example.test"
ATTACKER = "https://attacker.example"


# --- the keys and facts an attack is built from ------------------------------------------


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@dataclass
class Kit:
    iss: str  # the embedded issuer
    aud: str
    kid: str
    key: rsa.RSAPrivateKey  # the embedded issuer's own key: for controls and parser cases
    jwks: dict[str, Any]
    idp_ec: ec.EllipticCurvePrivateKey = field(default_factory=_p256)
    idp_rsa: rsa.RSAPrivateKey = field(default_factory=_rsa2048)
    url_old: ec.EllipticCurvePrivateKey = field(default_factory=_p256)
    url_new: ec.EllipticCurvePrivateKey = field(default_factory=_p256)
    attacker: rsa.RSAPrivateKey = field(default_factory=_rsa2048)
    other_gateway: rsa.RSAPrivateKey = field(default_factory=_rsa2048)

    IDP_EC_KID = "idp-ec-1"
    IDP_RSA_KID = "idp-rsa-1"
    URL_OLD_KID = "url-ec-old"
    URL_NEW_KID = "url-ec-new"

    @classmethod
    def for_settings(cls, settings: Settings) -> Kit:
        issuer = issuer_of(settings)
        pem = settings.resolve(settings.issuer.signing_key_file).read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("the embedded issuer's key is not RSA")
        return cls(issuer.issuer_url, settings.issuer.audience, issuer.kid, key, issuer.jwks())

    @property
    def attacker_kid(self) -> str:
        return public_jwk(self.attacker)["kid"]

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.iss, "aud": self.aud, "sub": "demo", "client_id": "demo",
            "scope": "rank infer", "iat": now, "nbf": now, "exp": now + 300, "jti": f"c-{now}",
        }  # fmt: skip
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not _DROP}

    def idp_claims(self, iss: str = IDP_FILE, **overrides: Any) -> dict[str, Any]:
        return self.claims(iss=iss, sub="idp-app", client_id="idp-app", **overrides)

    def head(self, **overrides: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": "RS256", "kid": self.kid, "typ": "at+jwt"}
        header.update(overrides)
        return {k: v for k, v in header.items() if v is not _DROP}

    def real(self, claims: dict[str, Any] | None = None, **head: Any) -> str:
        """Signed with the embedded issuer's own key (controls and parser cases only)."""
        return jws(self.head(**head), claims or self.claims(), self.key, alg="RS256")

    def idp_es256(self, claims: dict[str, Any] | None = None, **head: Any) -> str:
        header = {"alg": "ES256", "kid": self.IDP_EC_KID, "typ": "at+jwt", **head}
        return jws(header, claims or self.idp_claims(), self.idp_ec)

    def file_jwks(self) -> dict[str, Any]:
        rsa_jwk = {**public_jwk(self.idp_rsa), "kid": self.IDP_RSA_KID}
        return {"keys": [ec_jwk(self.idp_ec, self.IDP_EC_KID), rsa_jwk]}


_DROP: Any = object()  # a claim or header member to leave out


def bearer(token: str) -> str:
    return f"Bearer {token}"


def _transplant(k: Kit) -> str:
    """An admin token's header and payload with a genuine token's signature."""
    genuine = k.real().split(".")[2]
    forged = jws(k.head(), k.claims(scope="rank infer admin"), None)
    return forged.rsplit(".", 1)[0] + "." + genuine


def _zeroed(k: Kit) -> str:
    head, body, sig = k.real().split(".")
    return f"{head}.{body}.{b64url(bytes(len(unb64url(sig))))}"


def _none_keeping_signature(k: Kit) -> str:
    sig = k.real().split(".")[2]
    return jws(k.head(alg="none"), k.claims(), None).rsplit(".", 1)[0] + "." + sig


def _public_der(k: Kit) -> bytes:
    return k.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_pkcs1(k: Kit) -> bytes:
    return k.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )


def _x5c(k: Kit) -> list[str]:
    der = self_signed_cert(k.attacker).public_bytes(serialization.Encoding.DER)
    return [base64.b64encode(der).decode()]


def _tenant_swapped(k: Kit) -> str:
    head, _, sig = k.idp_es256(k.idp_claims(tenant="t1")).split(".")
    return f"{head}.{b64url(js(k.idp_claims(tenant='t2')))}.{sig}"


def _tenant_added(k: Kit) -> str:
    head, _, sig = k.real().split(".")
    return f"{head}.{b64url(js(k.claims(tenant='t2')))}.{sig}"


def _psychic(k: Kit, value: int) -> str:
    size = 32
    token = jws({"alg": "ES256", "kid": k.IDP_EC_KID, "typ": "at+jwt"}, k.idp_claims(), None)
    return token + b64url(value.to_bytes(size, "big") * 2)


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _raw_claims(k: Kit, text: str) -> bytes:
    """The issuer's claims JSON with members appended by hand (duplicate names)."""
    base = js(k.claims())
    return base[:-1] + b"," + text.encode() + b"}"


@dataclass(frozen=True)
class Attack:
    name: str
    technique: str  # jwt_tool's name for it where it has one
    build: Callable[[Kit], str]  # the whole Authorization header value
    # A substring of the server's log line for the refusal: its own words only, never the
    # client's values, which the log may stop quoting (issue 15: no client value in logs).
    cause: str


ATTACKS: tuple[Attack, ...] = (
    # alg=none in every case variant (jwt_tool -X a), with and without the old signature.
    Attack(
        "alg-NONE",
        "-X a",
        lambda k: bearer(jws(k.head(alg="NONE"), k.claims(), None)),
        "not allowed",
    ),
    Attack(
        "alg-nOnE",
        "-X a",
        lambda k: bearer(jws(k.head(alg="nOnE"), k.claims(), None)),
        "not allowed",
    ),
    Attack(
        "alg-none-signature-kept",
        "-X a",
        lambda k: bearer(_none_keeping_signature(k)),
        "not allowed",
    ),
    Attack(
        "alg-none-no-kid",
        "-X a",
        lambda k: bearer(jws(k.head(alg="none", kid=_DROP), k.claims(), None)),
        "header lacks alg or kid",
    ),
    Attack(
        "alg-empty",
        "-X a",
        lambda k: bearer(jws(k.head(alg=""), k.claims(), None)),
        "not allowed",
    ),
    Attack(
        "alg-missing",
        "-X a",
        lambda k: bearer(jws(k.head(alg=_DROP), k.claims(), None)),
        "header lacks alg or kid",
    ),
    # Key confusion (jwt_tool -X k): HMAC keyed with the issuer's public key in every form.
    Attack(
        "hs256-public-pem-no-newline",
        "-X k",
        lambda k: bearer(jws(k.head(alg="HS256"), k.claims(), pem_public(k.key).rstrip(b"\n"))),
        "not allowed",
    ),
    Attack(
        "hs256-public-der",
        "-X k",
        lambda k: bearer(jws(k.head(alg="HS256"), k.claims(), _public_der(k))),
        "not allowed",
    ),
    Attack(
        "hs256-public-pkcs1-pem",
        "-X k",
        lambda k: bearer(jws(k.head(alg="HS256"), k.claims(), _public_pkcs1(k))),
        "not allowed",
    ),
    Attack(
        "hs256-jwks-json",
        "-X k",
        lambda k: bearer(jws(k.head(alg="HS256"), k.claims(), js(k.jwks))),
        "not allowed",
    ),
    Attack(
        "hs384-public-pem",
        "-X k",
        lambda k: bearer(jws(k.head(alg="HS384"), k.claims(), pem_public(k.key))),
        "not allowed",
    ),
    Attack(
        "hs512-public-pem",
        "-X k",
        lambda k: bearer(jws(k.head(alg="HS512"), k.claims(), pem_public(k.key))),
        "not allowed",
    ),
    Attack(
        "hs256-idp-ec-public-pem",
        "-X k",
        lambda k: bearer(
            jws(
                {"alg": "HS256", "kid": k.IDP_EC_KID, "typ": "at+jwt"},
                k.idp_claims(),
                pem_public(k.idp_ec),
            )
        ),
        "not allowed",
    ),
    # Forged signatures: blank and dictionary HMAC secrets (jwt_tool -C), transplanted
    # and zeroed signatures (-X n is the stripped one, already covered).
    Attack(
        "hs256-blank-secret",
        "-C",
        lambda k: bearer(jws(k.head(alg="HS256"), k.claims(), b"")),
        "not allowed",
    ),
    Attack(
        "hs256-dictionary-secret",
        "-C",
        lambda k: bearer(jws(k.head(alg="HS256"), k.claims(), b"secret")),
        "not allowed",
    ),
    Attack(
        "signature-transplanted",
        "-T",
        lambda k: bearer(_transplant(k)),
        "Signature verification failed",
    ),
    Attack("signature-zeroed", "-T", lambda k: bearer(_zeroed(k)), "Signature verification failed"),
    Attack(
        "es256-signed-by-attacker-idp-kid",
        "-T",
        lambda k: bearer(
            jws(
                {"alg": "ES256", "kid": k.IDP_EC_KID, "typ": "at+jwt"},
                k.idp_claims(),
                ec.generate_private_key(ec.SECP256R1()),
            )
        ),
        "Signature verification failed",
    ),
    # Issuers: look-alikes of the trusted one, and another gateway's key for the same URL.
    Attack(
        "iss-scheme-uppercase",
        "-I",
        lambda k: bearer(k.real(k.claims(iss=k.iss.replace("http", "HTTP", 1)))),
        "untrusted issuer",
    ),
    Attack(
        "iss-trailing-space",
        "-I",
        lambda k: bearer(k.real(k.claims(iss=k.iss + " "))),
        "untrusted issuer",
    ),
    Attack(
        "iss-as-list", "-I", lambda k: bearer(k.real(k.claims(iss=[k.iss]))), "untrusted issuer"
    ),
    Attack(
        "another-gateway-same-issuer-url",
        "-S",
        lambda k: bearer(
            jws(k.head(kid=public_jwk(k.other_gateway)["kid"]), k.claims(), k.other_gateway)
        ),
        "no usable key",
    ),
    # Header injection (jwt_tool -X i, -X s, -X u): the attacker's key offered in the token.
    Attack(
        "jwk-embedded-with-real-kid",
        "-X i",
        lambda k: bearer(jws(k.head(jwk=public_jwk(k.attacker)), k.claims(), k.attacker)),
        "Signature verification failed",
    ),
    Attack(
        "jku-with-real-kid",
        "-X s",
        lambda k: bearer(jws(k.head(jku=f"{ATTACKER}/jwks.json"), k.claims(), k.attacker)),
        "Signature verification failed",
    ),
    Attack(
        "x5u-attacker-kid",
        "-X u",
        lambda k: bearer(
            jws(k.head(kid=k.attacker_kid, x5u=f"{ATTACKER}/cert.pem"), k.claims(), k.attacker)
        ),
        "no usable key",
    ),
    Attack(
        "x5u-with-real-kid",
        "-X u",
        lambda k: bearer(jws(k.head(x5u=f"{ATTACKER}/cert.pem"), k.claims(), k.attacker)),
        "Signature verification failed",
    ),
    Attack(
        "x5c-self-signed-real-kid",
        "-X u",
        lambda k: bearer(jws(k.head(x5c=_x5c(k)), k.claims(), k.attacker)),
        "Signature verification failed",
    ),
    # kid injection (jwt_tool -I -hc kid): paths, SQL, shell, NUL and oversized values.
    Attack(
        "kid-traversal-dev-null-blank-hmac",
        "-I kid",
        lambda k: bearer(
            jws(k.head(alg="HS256", kid="../../../../../../../../dev/null"), k.claims(), b"")
        ),
        "not allowed",
    ),
    Attack(
        "kid-traversal-to-key-file",
        "-I kid",
        lambda k: bearer(jws(k.head(kid="../keys/issuer-signing-key.pem"), k.claims(), k.attacker)),
        "no usable key",
    ),
    Attack(
        "kid-sql-union-hmac",
        "-I kid",
        lambda k: bearer(
            jws(k.head(alg="HS256", kid="x' UNION SELECT 'attacker';--"), k.claims(), b"attacker")
        ),
        "not allowed",
    ),
    Attack(
        "kid-sql-or-true",
        "-I kid",
        lambda k: bearer(jws(k.head(kid="' OR '1'='1"), k.claims(), k.attacker)),
        "no usable key",
    ),
    Attack(
        "kid-shell-injection",
        "-I kid",
        lambda k: bearer(
            jws(k.head(kid="key|sleep 5;`sleep 5`$(sleep 5)"), k.claims(), k.attacker)
        ),
        "no usable key",
    ),
    Attack(
        "kid-nul-suffix-real-key",
        "-I kid",
        lambda k: bearer(k.real(kid=k.kid + "\u0000")),
        "no usable key",
    ),
    Attack(
        "kid-nul-then-traversal",
        "-I kid",
        lambda k: bearer(jws(k.head(kid=k.kid + "\u0000/../../dev/null"), k.claims(), k.attacker)),
        "no usable key",
    ),
    Attack(
        "kid-empty",
        "-I kid",
        lambda k: bearer(jws(k.head(kid=""), k.claims(), k.attacker)),
        "no usable key",
    ),
    Attack(
        "kid-4kb",
        "-I kid",
        lambda k: bearer(jws(k.head(kid="k" * 4096), k.claims(), k.attacker)),
        "no usable key",
    ),
    # Time, audience and required claims: what the basic table lacks.
    Attack("exp-zero", "-I exp", lambda k: bearer(k.real(k.claims(exp=0))), "token expired"),
    Attack("exp-negative", "-I exp", lambda k: bearer(k.real(k.claims(exp=-1))), "token expired"),
    Attack(
        "nbf-one-year-ahead",
        "-I nbf",
        lambda k: bearer(k.real(k.claims(nbf=int(time.time()) + 31_536_000))),
        "not yet valid (nbf)",
    ),
    Attack("aud-empty-list", "-I aud", lambda k: bearer(k.real(k.claims(aud=[]))), "not accepted"),
    Attack(
        "aud-empty-string", "-I aud", lambda k: bearer(k.real(k.claims(aud=""))), "not accepted"
    ),
    Attack(
        "aud-prefix-look-alike",
        "-I aud",
        lambda k: bearer(k.real(k.claims(aud=k.aud + "-evil"))),
        "not accepted",
    ),
    Attack(
        "aud-uppercase",
        "-I aud",
        lambda k: bearer(k.real(k.claims(aud=k.aud.upper()))),
        "not accepted",
    ),
    Attack(
        "missing-sub-and-client-id",
        "-I",
        lambda k: bearer(k.real(k.claims(sub=_DROP, client_id=_DROP))),
        "no client_id, azp or sub",
    ),
    Attack(
        "empty-claims-object",
        "-I",
        lambda k: bearer(jws(k.head(), b"{}", k.key)),
        "untrusted issuer",
    ),
    Attack(
        "claims-json-null",
        "-I",
        lambda k: bearer(jws(k.head(), b"null", k.key)),
        "must be a json object",
    ),
    # Another tenant: a genuine IdP token for tenant t1 re-labelled t2, and a tenant-less
    # token given one; both keep the original signature.
    Attack(
        "tenant-claim-swapped",
        "-T",
        lambda k: bearer(_tenant_swapped(k)),
        "Signature verification failed",
    ),
    Attack(
        "tenant-claim-added",
        "-T",
        lambda k: bearer(_tenant_added(k)),
        "Signature verification failed",
    ),
    # Huge tokens that still fit the server's header bound (larger ones: TRANSPORT_CASES).
    Attack(
        "huge-signed-claims",
        "-I",
        lambda k: bearer(k.real(k.claims(pad="p" * 9_000))),
        "token too long",
    ),
    Attack("huge-header-member", "-I", lambda k: bearer(k.real(pad="p" * 9_000)), "token too long"),
    # Duplicate names, signed by the real key: JSON's last member wins, so a verifier that
    # read the first would accept these; the gateway must read what it verifies.
    Attack(
        "duplicate-alg-last-none",
        "dup",
        lambda k: bearer(jws(js(k.head())[:-1] + b',"alg":"none"}', js(k.claims()), k.key)),
        "not allowed",
    ),
    Attack(
        "duplicate-kid-last-attacker",
        "dup",
        lambda k: bearer(
            jws(
                js(k.head())[:-1] + f',"kid":"{k.attacker_kid}"}}'.encode(),
                js(k.claims()),
                k.attacker,
            )
        ),
        "no usable key",
    ),
    Attack(
        "duplicate-aud-last-wrong",
        "dup",
        lambda k: bearer(jws(js(k.head()), _raw_claims(k, '"aud":"another-service"'), k.key)),
        "not accepted",
    ),
    Attack(
        "duplicate-exp-last-expired",
        "dup",
        lambda k: bearer(jws(js(k.head()), _raw_claims(k, '"exp":1'), k.key)),
        "token expired",
    ),
    Attack(
        "duplicate-iss-last-attacker",
        "dup",
        lambda k: bearer(jws(js(k.head()), _raw_claims(k, f'"iss":"{ATTACKER}"'), k.key)),
        "untrusted issuer",
    ),
    # NUL bytes inside the JSON (raw NUL bytes in the HTTP header: TRANSPORT_CASES).
    Attack("alg-nul-suffix", "nul", lambda k: bearer(k.real(alg="RS256\u0000")), "not allowed"),
    Attack(
        "iss-nul-suffix",
        "nul",
        lambda k: bearer(k.real(k.claims(iss=k.iss + "\u0000"))),
        "untrusted issuer",
    ),
    Attack(
        "aud-nul-suffix",
        "nul",
        lambda k: bearer(k.real(k.claims(aud=k.aud + "\u0000"))),
        "not accepted",
    ),
    Attack("typ-nul-suffix", "nul", lambda k: bearer(k.real(typ="at+jwt\u0000")), "is not at+jwt"),
    Attack(
        "payload-raw-nul-byte",
        "nul",
        lambda k: bearer(jws(k.head(), js(k.claims())[:-1] + b"\x00}", k.key)),
        "jose",
    ),
    # Psychic signatures (CVE-2022-21449): ES256 with r = s = 0 or r = s = n, against an
    # issuer that accepts ES256, and ES256 against the RS256-only embedded issuer.
    Attack(
        "es256-psychic-r-s-zero",
        "psychic",
        lambda k: bearer(_psychic(k, 0)),
        "Signature verification failed",
    ),
    Attack(
        "es256-psychic-r-s-order",
        "psychic",
        lambda k: bearer(_psychic(k, P256_ORDER)),
        "Signature verification failed",
    ),
    Attack(
        "es256-psychic-embedded-issuer",
        "psychic",
        lambda k: bearer(jws(k.head(alg="ES256"), k.claims(), None) + b64url(bytes(64))),
        "not allowed",
    ),
)

# The same constructions done right: each must be accepted (200).
CONTROLS: tuple[tuple[str, Callable[[Kit], str]], ...] = (
    ("embedded-issuer-hand-built", lambda k: bearer(k.real())),
    ("idp-es256", lambda k: bearer(k.idp_es256())),
    ("idp-es256-tenant-t1", lambda k: bearer(k.idp_es256(k.idp_claims(tenant="t1")))),
    (
        "idp-rs256",
        lambda k: bearer(
            jws({"alg": "RS256", "kid": k.IDP_RSA_KID, "typ": "at+jwt"}, k.idp_claims(), k.idp_rsa)
        ),
    ),
    (
        "duplicate-aud-last-right",
        lambda k: bearer(
            jws(js(k.head()), js(k.claims(aud="x"))[:-1] + f',"aud":"{k.aud}"}}'.encode(), k.key)
        ),
    ),
    ("signed-claims-just-under-the-limit", lambda k: bearer(k.real(k.claims(pad="p" * 5_500)))),
)


@dataclass(frozen=True)
class TransportCase:
    """Refused before the app sees it (server bounds, HTTP parsing): no 2xx, no 5xx."""

    name: str
    request: Callable[[Kit], bytes]  # the raw HTTP/1.1 request
    status: int


def _raw_rank(authorization: bytes) -> bytes:
    body = js(RANK_BODY)
    return (
        b"POST " + RANK.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Authorization: " + authorization + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


TRANSPORT_CASES: tuple[TransportCase, ...] = (
    TransportCase(
        "raw-nul-byte-in-authorization",
        lambda k: _raw_rank(b"Bearer " + k.real().encode()[:40] + b"\x00" + k.real().encode()[40:]),
        400,
    ),
    TransportCase(
        "token-over-the-header-bound",
        lambda k: _raw_rank(b"Bearer " + k.real(k.claims(pad="p" * 40_000)).encode()),
        431,
    ),
)


# --- key rotation: an IdP behind a JWKS URL, and the IdP of the JWKS file -----------------

# Once a key has left the issuer's JWKS (and the JWKS cache TTL has passed), tokens it
# signed must be refused, whether or not the gateway saw them before; new-key tokens pass.
ROTATION_EXPECTED: dict[str, int] = {
    "url-old-key-before-rotation": 200,
    "url-new-key-after-rotation": 200,
    "url-old-key-never-seen-after-rotation": 401,
    "url-old-key-seen-before-after-rotation": 401,
    "file-old-key-before-rotation": 200,
    "file-old-key-never-seen-after-rotation": 401,
}

# Cases that fail today, with the reason. The tests mark them xfail(strict): fixing one
# turns its test red until it is taken off this list. bench/harden counts them as failures.
# (Both gaps the catalogue first found, a cached token outliving its key's rotation and a
# key removed from a JWKS file, are fixed in security/authn.py and security/jwks.py.)
KNOWN_GAPS: dict[str, str] = {}
