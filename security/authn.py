"""Stage 1: bearer-token authentication (RFC 6750) of JWT access tokens.

Validation steps, each failing with the same `InvalidToken` (the cause goes to
the log only):
  1. the header parses; `alg` is on the issuer's allow-list; `kid` is present;
  2. the unverified `iss` names a trusted issuer;
  3. the key is chosen by `kid` from that issuer's key source, and its type
     matches `alg` (no HS256-with-a-public-key, no `none`);
  4. the signature verifies (python-jose, with only that algorithm allowed);
  5. `typ`, `exp`, `iat`, `nbf` (with leeway, against the injected clock),
     `aud` (one of the issuer's audiences) are checked;
  6. a confirmation (`cnf`, RFC 7800) is understood only as RFC 8705's `x5t#S256`, and a
     client the issuer binds must have one.
Verified tokens are cached until they expire, keyed by an HMAC of the token. The stage
then checks a certificate-bound token against the connection's client certificate, on
every request (the cache holds tokens, not connections).
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jose import jwt
from jose.exceptions import JOSEError

from gateway.errors import InvalidToken
from gateway.pipeline import Principal, RequestContext
from security.jwks import KeySource

log = logging.getLogger("gateway.authn")

Clock = Callable[[], float]

# RFC 6750 §2.1 b64token; a JWS compact serialisation is a subset of it.
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)$")
_MAX_TOKEN_BYTES = 8_192


@dataclass(frozen=True, slots=True)
class IssuerTrust:
    """One trusted issuer, as the validator sees it."""

    issuer: str
    audiences: frozenset[str]
    algorithms: frozenset[str]
    keys: KeySource
    required_typ: str | None = None
    tenant_claim: str | None = None
    # Clients whose tokens must be certificate-bound (RFC 8705 §3): one without `cnf` is
    # refused, however it was minted.
    bound_clients: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified token's principal, and the key that verified it (`kid`, `alg` at
    `keys`): a cache hit still needs that key to be in its issuer's JWKS."""

    principal: Principal
    keys: KeySource
    kid: str
    alg: str


class TokenCache:
    """Bounded LRU of verified tokens, keyed by an HMAC of the raw token."""

    def __init__(self, key: bytes, max_size: int, clock: Clock) -> None:
        self._key = key  # gateway.derivation.Purpose.TOKEN_CACHE
        self._max = max_size
        self._clock = clock
        self._entries: OrderedDict[bytes, Verified] = OrderedDict()

    def key(self, token: str) -> bytes:
        return hmac.digest(self._key, token.encode(), "sha256")

    def get(self, key: bytes) -> Verified | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found.principal.expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found

    def put(self, key: bytes, verified: Verified) -> None:
        if self._max == 0:
            return
        self._entries[key] = verified
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, key: bytes) -> None:
        self._entries.pop(key, None)


def _numeric(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Reject(f"claim {name} missing or not a number")
    try:
        number = float(value)
    except OverflowError:
        raise _Reject(f"claim {name} out of range") from None
    # python-jose's JSON parser accepts NaN/Infinity; a NaN exp would never expire.
    if not math.isfinite(number):
        raise _Reject(f"claim {name} is not finite")
    return number


_X5T_S256 = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of 32 bytes, unpadded
# Values a log line may quote: the JOSE algorithm registry and the JWT `typ` values, any
# case. Anything else a caller chose (kid, iss, aud, client ids) may be personal data and
# is logged as its type and size only (issue 13: no client value in any log line).
_JOSE_ALGS = frozenset(
    a.lower()
    for a in (
        *("none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"),
        *("ES512", "ES256K", "PS256", "PS384", "PS512", "EdDSA", "Ed25519", "Ed448"),
    )
)
_JWT_TYPS = frozenset(("jwt", "at+jwt", "application/at+jwt", "jose", "jose+json", "dpop+jwt"))


def _shown(value: object, vocabulary: frozenset[str] = frozenset()) -> str:
    """A value the caller chose, as a log line may quote it: verbatim only when it is a
    term of `vocabulary`, else its type and size (no log forging, no personal data)."""
    if value is None or (isinstance(value, str) and value.lower() in vocabulary):
        return repr(value)
    size = len(value) if isinstance(value, str | list) else 0
    return f"<{type(value).__name__}, {size} long>"


class _Reject(Exception):  # noqa: N818 - internal signal, always converted to InvalidToken
    pass


def _certificate_thumbprint(claims: Mapping[str, Any]) -> str | None:
    """RFC 8705 §3.1 `cnf.x5t#S256`, or None without `cnf`. A confirmation this gateway
    cannot check (another method beside it, e.g. DPoP's `jkt`) is refused, never ignored:
    ignoring it would make a sender-constrained token a bearer token again."""
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    if not isinstance(cnf, dict) or set(cnf) != {"x5t#S256"}:
        raise _Reject("cnf is not exactly an x5t#S256 confirmation")
    thumbprint = cnf["x5t#S256"]
    if not isinstance(thumbprint, str) or not _X5T_S256.fullmatch(thumbprint):
        raise _Reject("cnf x5t#S256 is not a base64url SHA-256 thumbprint")
    return thumbprint


def scopes_from(claims: Mapping[str, Any]) -> frozenset[str]:
    """`scope` (RFC 9068, space-separated) or `scp` (list or string, as some IdPs send)."""
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return frozenset(raw)
    return frozenset()


class TokenValidator:
    def __init__(
        self,
        issuers: Iterable[IssuerTrust],
        *,
        leeway_s: float,
        cache: TokenCache,
        clock: Clock = time.time,
    ) -> None:
        self._issuers = {trust.issuer: trust for trust in issuers}
        self._leeway = leeway_s
        self._cache = cache
        self._clock = clock

    async def validate(self, token: str) -> Principal:
        cache_key = self._cache.key(token)
        cached = self._cache.get(cache_key)
        if cached is not None:
            # A key rotated out of its issuer's JWKS signs nothing from then on, not even
            # a token this cache has seen: the lookup is in memory (the source refreshes
            # by its own TTL), so a hit still costs no signature check.
            if await cached.keys.key(cached.kid, cached.alg) is not None:
                return cached.principal
            self._cache.drop(cache_key)
        try:
            verified = await self._verify(token)
        except _Reject as exc:
            raise InvalidToken(log_cause=str(exc)) from None
        except JOSEError as exc:
            raise InvalidToken(log_cause=f"jose: {type(exc).__name__}: {exc}") from None
        self._cache.put(cache_key, verified)
        return verified.principal

    async def _verify(self, token: str) -> Verified:
        if len(token) > _MAX_TOKEN_BYTES:
            raise _Reject("token too long")
        header = jwt.get_unverified_header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or not isinstance(kid, str):
            raise _Reject("header lacks alg or kid")
        if "crit" in header:
            # RFC 7515 §4.1.11: we implement no extensions, so any critical one is fatal.
            raise _Reject("header lists critical extensions")
        unverified = jwt.get_unverified_claims(token)
        iss = unverified.get("iss")
        trust = self._issuers.get(iss) if isinstance(iss, str) else None
        if trust is None:
            raise _Reject(f"untrusted issuer {_shown(iss)}")
        if alg not in trust.algorithms:
            raise _Reject(f"algorithm {_shown(alg, _JOSE_ALGS)} not allowed for {iss}")
        key = await trust.keys.key(kid, alg)
        if key is None:
            raise _Reject(f"no usable key {_shown(kid)} for {alg} at {iss}")
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            issuer=trust.issuer,
            options={
                # Time and audience are checked below, against the injected clock and a set.
                "verify_aud": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_at_hash": False,
                "require_iss": True,
            },
        )
        if trust.required_typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower() not in {
                trust.required_typ.lower(),
                "application/" + trust.required_typ.lower(),
            }:
                raise _Reject(f"typ {_shown(typ, _JWT_TYPS)} is not {trust.required_typ}")
        return Verified(self._check_claims(claims, trust), trust.keys, kid, alg)

    def _check_claims(self, claims: Mapping[str, Any], trust: IssuerTrust) -> Principal:
        now = self._clock()
        exp = _numeric(claims, "exp")
        iat = _numeric(claims, "iat")
        if exp <= now - self._leeway:
            raise _Reject("token expired")
        if iat > now + self._leeway:
            raise _Reject("token issued in the future")
        if "nbf" in claims and _numeric(claims, "nbf") > now + self._leeway:
            raise _Reject("token not yet valid (nbf)")
        aud = claims.get("aud")
        if isinstance(aud, str):
            audiences = {aud}
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            audiences = set(aud)
        else:
            raise _Reject("aud missing or not a string / list of strings")
        if not audiences & trust.audiences:
            raise _Reject(f"audience {_shown(aud)} not accepted")
        sub = claims.get("sub")
        client_id = claims.get("client_id", claims.get("azp", sub))
        if not isinstance(client_id, str) or not client_id:
            raise _Reject("no client_id, azp or sub")
        tenant = claims.get(trust.tenant_claim) if trust.tenant_claim else None
        jti = claims.get("jti")
        thumbprint = _certificate_thumbprint(claims)
        if thumbprint is None and client_id in trust.bound_clients:
            raise _Reject(f"client {_shown(client_id)} needs a certificate-bound token")
        return Principal(
            issuer=trust.issuer,
            client_id=client_id,
            subject=sub if isinstance(sub, str) else None,
            scopes=scopes_from(claims),
            tenant=tenant if isinstance(tenant, str) else None,
            token_id=jti if isinstance(jti, str) else None,
            # The cache must not outlive the token, leeway included.
            expires_at=exp + self._leeway,
            certificate_thumbprint=thumbprint,
        )


class AuthenticateStage:
    """Stage 1: `Authorization: Bearer <jwt>` → `ctx.principal`."""

    name = "authenticate"

    def __init__(self, validator: TokenValidator) -> None:
        self._validator = validator

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        header = ctx.headers.get("authorization")
        if header is None:
            raise InvalidToken(log_cause="no Authorization header", token_presented=False)
        match = _BEARER.match(header)
        if match is None:
            raise InvalidToken(log_cause="Authorization is not a Bearer b64token")
        principal = await self._validator.validate(match.group(1))
        bound = principal.certificate_thumbprint
        if bound is not None and not hmac.compare_digest(bound, ctx.client_cert_thumbprint or ""):
            # RFC 8705 §3: a stolen bound token is useless without the certificate's key.
            cause = "no" if ctx.client_cert_thumbprint is None else "another"
            raise InvalidToken(
                log_cause=f"certificate-bound token on a connection with {cause} client certificate"
            )
        return ctx.evolve(principal=principal)
