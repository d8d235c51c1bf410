"""Stage 1 from the attacker's side: every forged or broken token gets the same 401.

RFC 6750 §3.1: `invalid_token` in `WWW-Authenticate`, and (DESIGN.md) one
problem+json body for every cause, so a client cannot probe which check failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from jose import jwt

from gateway.app import create_app
from gateway.errors import InvalidToken
from gateway.pipeline import Principal
from gateway.settings import Settings
from security.authn import IssuerTrust, TokenCache, TokenValidator, Verified, scopes_from
from security.issuer import EmbeddedIssuer, public_jwk
from security.jwks import StaticKeySource
from tests.security._tokens import (
    b64url,
    claims_of,
    header_of,
    hs256,
    new_rsa,
    private_pem,
    public_pem,
    rs256,
    segment,
    unb64url,
    unsigned,
)

RANK = "/v1/rank"
RANK_BODY = {"user_id": "u1", "item_ids": ["i1", "i2"]}
INVALID = 'Bearer realm="gateway", error="invalid_token"'
NO_CREDENTIALS = 'Bearer realm="gateway"'


@dataclass(frozen=True)
class Kit:
    """Everything an attack case needs: the real issuer's public facts and foreign keys."""

    forge: Callable[..., str]
    mint: Callable[..., str]
    kid: str
    iss: str
    aud: str
    issuer_private_pem: bytes
    issuer_public_pem: bytes
    other_rsa_pem: bytes
    other_kid: str
    ec_pem: bytes

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.iss, "aud": self.aud, "sub": "demo", "client_id": "demo",
            "scope": "rank infer", "iat": now, "nbf": now, "exp": now + 300,
        }  # fmt: skip
        body.update(overrides)
        return body


@pytest.fixture(scope="module")
def kit(
    forge: Callable[..., str],
    mint: Callable[..., str],
    issuer: EmbeddedIssuer,
    settings: Settings,
    signing_pem: bytes,
) -> Kit:
    key = serialization.load_pem_private_key(signing_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    other = new_rsa()
    return Kit(
        forge=forge,
        mint=mint,
        kid=issuer.kid,
        iss=settings.issuer_url,
        aud=settings.issuer.audience,
        issuer_private_pem=signing_pem,
        issuer_public_pem=public_pem(key),
        other_rsa_pem=private_pem(other),
        other_kid=public_jwk(other)["kid"],
        ec_pem=private_pem(ec.generate_private_key(ec.SECP256R1())),
    )


def _tamper_payload(k: Kit) -> str:
    token = k.mint()
    head, _, sig = token.split(".")
    claims = claims_of(token)  # the same token's claims: only the scope differs
    claims["scope"] = claims["scope"] + " admin"
    return f"{head}.{segment(claims)}.{sig}"


def _tamper_signature(k: Kit) -> str:
    head, payload, sig = k.mint().split(".")
    raw = bytearray(unb64url(sig))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


def _bearer(token: str) -> str:
    return f"Bearer {token}"


# Each case builds the whole Authorization header value from the kit.
ATTACKS: dict[str, Callable[[Kit], str]] = {
    "alg-none": lambda k: _bearer(
        unsigned({"alg": "none", "typ": "at+jwt", "kid": k.kid}, k.claims())
    ),
    "alg-None-capitalised": lambda k: _bearer(
        unsigned({"alg": "None", "typ": "at+jwt", "kid": k.kid}, k.claims())
    ),
    "hs256-with-public-key-pem": lambda k: _bearer(
        hs256({"alg": "HS256", "typ": "at+jwt", "kid": k.kid}, k.claims(), k.issuer_public_pem)
    ),
    "rs384-with-the-real-key": lambda k: _bearer(k.forge(algorithm="RS384")),
    "wrong-kid": lambda k: _bearer(k.forge(headers={"kid": k.other_kid})),
    "unknown-kid": lambda k: _bearer(k.forge(headers={"kid": "no-such-key"})),
    "non-string-kid": lambda k: _bearer(k.forge(headers={"kid": 1})),
    "missing-kid": lambda k: _bearer(
        jwt.encode(k.claims(), k.issuer_private_pem, algorithm="RS256", headers={"typ": "at+jwt"})
    ),
    "expired-beyond-leeway": lambda k: _bearer(
        k.forge(
            {
                "iat": int(time.time()) - 600,
                "nbf": int(time.time()) - 600,
                "exp": int(time.time()) - 60,
            }
        )
    ),
    "nbf-in-future": lambda k: _bearer(k.forge({"nbf": int(time.time()) + 120})),
    "iat-in-future": lambda k: _bearer(k.forge({"iat": int(time.time()) + 120})),
    "wrong-aud": lambda k: _bearer(k.forge({"aud": "another-service"})),
    "wrong-aud-list": lambda k: _bearer(k.forge({"aud": ["another-service", "third"]})),
    "wrong-iss": lambda k: _bearer(k.forge({"iss": k.iss + "/"})),
    "missing-exp": lambda k: _bearer(k.forge(drop=("exp",))),
    "missing-iat": lambda k: _bearer(k.forge(drop=("iat",))),
    "missing-iss": lambda k: _bearer(k.forge(drop=("iss",))),
    "missing-aud": lambda k: _bearer(k.forge(drop=("aud",))),
    "string-exp": lambda k: _bearer(k.forge({"exp": str(int(time.time()) + 300)})),
    "boolean-exp": lambda k: _bearer(k.forge({"exp": True})),
    "tampered-payload-adds-admin": lambda k: _bearer(_tamper_payload(k)),
    "tampered-signature": lambda k: _bearer(_tamper_signature(k)),
    "signature-stripped": lambda k: _bearer(k.mint().rsplit(".", 1)[0] + "."),
    "untrusted-key-right-kid-and-iss": lambda k: _bearer(k.forge(key=k.other_rsa_pem)),
    "untrusted-key-with-jku-header": lambda k: _bearer(
        k.forge(
            key=k.other_rsa_pem,
            headers={"kid": k.other_kid, "jku": "https://attacker.example/jwks.json"},
        )
    ),
    "untrusted-key-embedded-as-jwk-header": lambda k: _bearer(
        k.forge(
            key=k.other_rsa_pem,
            headers={"kid": k.other_kid, "jwk": _other_jwk(k)},
        )
    ),
    "untrusted-issuer": lambda k: _bearer(
        k.forge(
            {"iss": "https://attacker.example"}, key=k.other_rsa_pem, headers={"kid": k.other_kid}
        )
    ),
    "untrusted-issuer-real-key": lambda k: _bearer(k.forge({"iss": "https://attacker.example"})),
    "typ-JWT": lambda k: _bearer(k.forge(headers={"typ": "JWT"})),
    "typ-missing": lambda k: _bearer(_without_typ(k)),
    "es256-with-rsa-kid": lambda k: _bearer(k.forge(key=k.ec_pem, algorithm="ES256")),
    "empty-bearer": lambda k: "Bearer ",
    "bare-bearer-scheme": lambda k: "Bearer",
    "basic-scheme": lambda k: "Basic ZGVtbzpub3QtdGhlLXNlY3JldA==",
    "valid-token-basic-scheme": lambda k: f"Basic {k.mint()}",
    "two-tokens": lambda k: f"Bearer {k.mint()} {k.mint()}",
    "oversized-token": lambda k: _bearer("a" * 9_000 + "." + "b" * 100 + ".c"),
    "two-segments": lambda k: _bearer(".".join(k.mint().split(".")[:2])),
    "non-object-header": lambda k: _bearer(f"{segment([1])}.{segment(k.claims())}.c2ln"),
    "non-object-payload": lambda k: _bearer(k.forge().split(".")[0] + ".WzFd.c2ln"),
}

# Why each case must be refused: a substring of the server's log line (never shown to clients).
CAUSES: dict[str, str] = {
    "alg-none": "algorithm 'none' not allowed",
    "alg-None-capitalised": "algorithm 'None' not allowed",
    "hs256-with-public-key-pem": "algorithm 'HS256' not allowed",
    "rs384-with-the-real-key": "algorithm 'RS384' not allowed",
    "wrong-kid": "no usable key",
    "unknown-kid": "no usable key <str, 11 long>",
    "non-string-kid": "header lacks alg or kid",
    "missing-kid": "header lacks alg or kid",
    "expired-beyond-leeway": "token expired",
    "nbf-in-future": "not yet valid (nbf)",
    "iat-in-future": "issued in the future",
    "wrong-aud": "audience <str, 15 long> not accepted",
    "wrong-aud-list": "audience <list, 2 long> not accepted",
    "wrong-iss": "untrusted issuer <str, ",
    "missing-exp": "claim exp missing or not a number",
    "missing-iat": "claim iat missing or not a number",
    "missing-iss": "untrusted issuer None",
    "missing-aud": "aud missing or not a string",
    "string-exp": "claim exp missing or not a number",
    "boolean-exp": "claim exp missing or not a number",
    "tampered-payload-adds-admin": "Signature verification failed",
    "tampered-signature": "Signature verification failed",
    "signature-stripped": "Signature verification failed",
    "untrusted-key-right-kid-and-iss": "Signature verification failed",
    "untrusted-key-with-jku-header": "no usable key",
    "untrusted-key-embedded-as-jwk-header": "no usable key",
    "untrusted-issuer": "untrusted issuer <str, 24 long>",
    "untrusted-issuer-real-key": "untrusted issuer <str, 24 long>",
    "typ-JWT": "typ 'JWT' is not at+jwt",
    "typ-missing": "is not at+jwt",
    "es256-with-rsa-kid": "algorithm 'ES256' not allowed",
    "empty-bearer": "not a Bearer b64token",
    "bare-bearer-scheme": "not a Bearer b64token",
    "basic-scheme": "not a Bearer b64token",
    "valid-token-basic-scheme": "not a Bearer b64token",
    "two-tokens": "not a Bearer b64token",
    "oversized-token": "token too long",
    "two-segments": "Error decoding token",
    "non-object-header": "Error decoding token headers",
    "non-object-payload": "must be a json object",
}


def _other_jwk(k: Kit) -> dict[str, str]:
    key = serialization.load_pem_private_key(k.other_rsa_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return public_jwk(key)


def _without_typ(k: Kit) -> str:
    key = serialization.load_pem_private_key(k.issuer_private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return rs256({"alg": "RS256", "kid": k.kid}, k.claims(), key)


def _rank(client: TestClient, authorization: str | None) -> httpx2.Response:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response: httpx2.Response = client.post(RANK, json=RANK_BODY, headers=headers)
    return response


def _without_instance(response: httpx2.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert body.pop("instance", "").startswith("urn:request:")
    return body


@pytest.fixture(scope="module")
def garbage_body(client: TestClient) -> dict[str, Any]:
    response = _rank(client, "Bearer garbage")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID
    body = _without_instance(response)
    assert body == {
        "type": "urn:gateway:problem:invalid-token",
        "title": "Missing or invalid bearer token",
        "status": 401,
    }
    return body


def test_a_valid_token_is_accepted(client: TestClient, auth: Callable[..., dict[str, str]]) -> None:
    response = client.post(RANK, json=RANK_BODY, headers=auth())
    assert response.status_code == 200, response.text
    assert [item["item_id"] for item in response.json()["items"]] != []


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_attack_is_refused_with_the_one_invalid_token_answer(
    attack: str,
    kit: Kit,
    client: TestClient,
    garbage_body: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    authorization = ATTACKS[attack](kit)
    with caplog.at_level(logging.INFO, logger="gateway.errors"):
        response = _rank(client, authorization)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == INVALID
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert _without_instance(response) == garbage_body
    # Refused for the reason the case is about, not by accident of how it was built.
    request_id = response.headers["x-request-id"]
    causes = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert len(causes) == 1
    assert CAUSES[attack] in causes[0]


def test_every_attack_names_its_cause() -> None:
    assert set(CAUSES) == set(ATTACKS)


def test_the_hand_built_attack_tokens_are_what_they_claim(kit: Kit) -> None:
    """Guards the cases above against testing something weaker than intended."""
    none_token = ATTACKS["alg-none"](kit).removeprefix("Bearer ")
    assert header_of(none_token)["alg"] == "none"
    assert none_token.endswith(".")
    hs_token = ATTACKS["hs256-with-public-key-pem"](kit).removeprefix("Bearer ")
    assert header_of(hs_token) == {"alg": "HS256", "typ": "at+jwt", "kid": kit.kid}
    assert b"PUBLIC KEY" in kit.issuer_public_pem
    assert "typ" not in header_of(ATTACKS["typ-missing"](kit).removeprefix("Bearer "))
    missing = ATTACKS["missing-kid"](kit).removeprefix("Bearer ")
    assert "kid" not in header_of(missing)
    tampered = ATTACKS["tampered-payload-adds-admin"](kit).removeprefix("Bearer ")
    assert "admin" in claims_of(tampered)["scope"].split()
    assert header_of(ATTACKS["es256-with-rsa-kid"](kit).removeprefix("Bearer ")) == {
        "alg": "ES256",
        "kid": kit.kid,
        "typ": "at+jwt",
    }


def test_the_same_signed_claims_with_the_real_key_are_accepted(
    kit: Kit, client: TestClient
) -> None:
    """The negative cases differ from an accepted token only in the attacked property."""
    assert _rank(client, _bearer(kit.forge())).status_code == 200
    key = serialization.load_pem_private_key(kit.issuer_private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    by_hand = rs256({"alg": "RS256", "kid": kit.kid, "typ": "at+jwt"}, kit.claims(), key)
    assert _rank(client, _bearer(by_hand)).status_code == 200
    assert (
        _rank(client, _bearer(kit.forge({"aud": ["another-service", kit.aud]}))).status_code == 200
    )
    assert (
        _rank(client, _bearer(kit.forge(headers={"typ": "application/at+jwt"}))).status_code == 200
    )


def test_no_authorization_header_gets_a_challenge_without_error(
    client: TestClient, garbage_body: dict[str, Any]
) -> None:
    response = _rank(client, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == NO_CREDENTIALS
    assert _without_instance(response) == garbage_body


@pytest.mark.parametrize(
    "header",
    [None, "Bearer garbage"],
    ids=["no-header", "garbage"],
)
def test_oip_endpoint_answers_401_with_the_same_challenge(
    client: TestClient, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = client.get("/v2/models/demo-ranker", headers=headers)
    assert response.status_code == 401
    expected = NO_CREDENTIALS if header is None else INVALID
    assert response.headers["www-authenticate"] == expected
    assert response.json() == {"error": "Missing or invalid bearer token"}


def test_a_token_without_the_rank_scope_gets_403_insufficient_scope(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    response = client.post(RANK, json=RANK_BODY, headers=auth(scopes=("infer",)))
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="gateway"')
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="rank"' in challenge
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:gateway:problem:insufficient-scope"
    assert body["status"] == 403


def test_a_token_without_the_infer_scope_gets_403_on_oip(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    assert client.get("/v2/models/demo-ranker", headers=auth()).status_code == 200
    response = client.get("/v2/models/demo-ranker", headers=auth(scopes=("rank",)))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert 'scope="infer"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(("expired_ago", "status"), [(10, 200), (60, 401)])
def test_expiry_leeway_is_30_seconds(
    kit: Kit, client: TestClient, expired_ago: int, status: int
) -> None:
    now = int(time.time())
    token = kit.forge({"iat": now - 600, "nbf": now - 600, "exp": now - expired_ago})
    assert _rank(client, _bearer(token)).status_code == status


@pytest.mark.parametrize(("ahead", "status"), [(10, 200), (60, 401)])
def test_iat_and_nbf_leeway_is_30_seconds(
    kit: Kit, client: TestClient, ahead: int, status: int
) -> None:
    now = int(time.time())
    assert _rank(client, _bearer(kit.forge({"iat": now + ahead}))).status_code == status
    assert _rank(client, _bearer(kit.forge({"nbf": now + ahead}))).status_code == status


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked(settings: Settings) -> Iterator[tuple[TestClient, FakeClock]]:
    clock = FakeClock(float(int(time.time())))
    with TestClient(create_app(settings, clock=clock)) as test_client:
        yield test_client, clock


def test_cached_token_is_refused_once_the_clock_passes_its_exp(
    kit: Kit, clocked: tuple[TestClient, FakeClock]
) -> None:
    client, clock = clocked
    start = clock.now
    token = kit.forge({"iat": int(start), "nbf": int(start), "exp": int(start) + 120})
    assert _rank(client, _bearer(token)).status_code == 200
    clock.now = start + 120 + 25  # past exp, inside the 30 s leeway: still good (from cache)
    assert _rank(client, _bearer(token)).status_code == 200
    clock.now = start + 120 + 31
    response = _rank(client, _bearer(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID


def test_the_injected_clock_also_governs_fresh_tokens(
    kit: Kit, clocked: tuple[TestClient, FakeClock]
) -> None:
    client, clock = clocked
    # A token that is valid by the wall clock is refused when the app's clock is far ahead.
    clock.now += 3_600
    assert _rank(client, _bearer(kit.forge())).status_code == 401


# --- unit level: the validator, its cache, and where scopes come from -----------------------


class CountingKeySource:
    """A real key source that records how often the validator asks it for a key."""

    def __init__(self, inner: StaticKeySource) -> None:
        self._inner = inner
        self.calls = 0

    async def key(self, kid: str, alg: str) -> Any | None:
        self.calls += 1
        return await self._inner.key(kid, alg)


def _validator(
    issuer: EmbeddedIssuer, clock: FakeClock, keys: Any | None = None, cache_size: int = 16
) -> TokenValidator:
    trust = IssuerTrust(
        issuer=issuer.issuer_url,
        audiences=frozenset({issuer.settings.audience}),
        algorithms=frozenset({"RS256"}),
        keys=keys if keys is not None else StaticKeySource(issuer.jwks()),
        required_typ="at+jwt",
    )
    return TokenValidator(
        [trust], leeway_s=30, cache=TokenCache(b"k" * 32, cache_size, clock), clock=clock
    )


@pytest.mark.asyncio
async def test_validator_caches_and_drops_the_principal_at_exp_plus_leeway(
    issuer: EmbeddedIssuer, forge: Callable[..., str]
) -> None:
    clock = FakeClock(float(int(time.time())))
    keys = CountingKeySource(StaticKeySource(issuer.jwks()))
    validator = _validator(issuer, clock, keys)
    exp = int(clock.now) + 60
    token = forge({"iat": int(clock.now), "nbf": int(clock.now), "exp": exp})
    principal = await validator.validate(token)
    assert principal.expires_at == exp + 30
    assert await validator.validate(token) == principal
    # The second call was served from the cache, which still asks whether the key is
    # there (a key rotated out signs nothing, even a token seen before).
    assert keys.calls == 2
    clock.now = exp + 30
    with pytest.raises(InvalidToken):
        await validator.validate(token)
    assert keys.calls == 3  # the cache did not answer for an expired token


@pytest.mark.asyncio
async def test_a_refused_token_is_not_cached(
    issuer: EmbeddedIssuer, forge: Callable[..., str]
) -> None:
    clock = FakeClock(time.time())
    keys = CountingKeySource(StaticKeySource(issuer.jwks()))
    validator = _validator(issuer, clock, keys)
    token = forge({"aud": "elsewhere"})
    for _ in range(2):
        with pytest.raises(InvalidToken):
            await validator.validate(token)
    assert keys.calls == 2


def test_token_cache_evicts_least_recently_used() -> None:
    clock = FakeClock(1_000.0)
    cache = TokenCache(b"s" * 32, 2, clock)

    def principal(name: str) -> Verified:
        found = Principal(
            issuer="i",
            client_id=name,
            subject=None,
            scopes=frozenset(),
            tenant=None,
            token_id=None,
            expires_at=2_000.0,
        )
        return Verified(found, StaticKeySource({"keys": []}), "k", "RS256")

    keys = [cache.key(f"token-{n}") for n in range(3)]
    assert len(set(keys)) == 3
    cache.put(keys[0], principal("a"))
    cache.put(keys[1], principal("b"))
    assert cache.get(keys[0]) is not None  # touch a: b is now least recently used
    cache.put(keys[2], principal("c"))
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None
    assert cache.get(keys[2]) is not None
    clock.now = 2_000.0
    assert cache.get(keys[0]) is None


def test_token_cache_key_depends_on_the_secret() -> None:
    clock = FakeClock(0.0)
    assert TokenCache(b"a" * 32, 1, clock).key("t") != TokenCache(b"b" * 32, 1, clock).key("t")


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"scope": "rank infer"}, {"rank", "infer"}),
        ({"scope": "  rank   infer "}, {"rank", "infer"}),
        ({"scp": ["rank", "infer"]}, {"rank", "infer"}),
        ({"scp": "rank infer"}, {"rank", "infer"}),
        ({"scope": "rank", "scp": ["admin"]}, {"rank"}),
        ({"scp": ["rank", 7]}, set()),
        ({"scope": 5}, set()),
        ({}, set()),
    ],
    ids=[
        "scope-string",
        "scope-extra-spaces",
        "scp-list",
        "scp-string",
        "scope-wins-over-scp",
        "scp-list-with-non-string",
        "scope-number",
        "none",
    ],
)
def test_scopes_from(claims: dict[str, Any], expected: set[str]) -> None:
    assert scopes_from(claims) == frozenset(expected)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("claims", "drop", "expected"),
    [
        ({"scope": "rank infer"}, (), {"rank", "infer"}),
        ({"scp": ["rank", "infer"]}, ("scope",), {"rank", "infer"}),
        ({"scp": "infer"}, ("scope",), {"infer"}),
        ({}, ("scope",), set()),
    ],
    ids=["scope-string", "scp-list", "scp-string", "no-scope"],
)
async def test_validator_reads_scopes_from_scope_or_scp(
    issuer: EmbeddedIssuer,
    forge: Callable[..., str],
    claims: dict[str, Any],
    drop: tuple[str, ...],
    expected: set[str],
) -> None:
    validator = _validator(issuer, FakeClock(time.time()))
    principal = await validator.validate(forge(claims, drop=drop))
    assert principal.scopes == frozenset(expected)
    assert principal.client_id == "demo"
    assert principal.issuer == issuer.issuer_url


@pytest.mark.asyncio
async def test_validator_falls_back_to_azp_then_sub_for_the_client_id(
    issuer: EmbeddedIssuer, forge: Callable[..., str]
) -> None:
    validator = _validator(issuer, FakeClock(time.time()))
    with_azp = await validator.validate(forge({"azp": "svc-a"}, drop=("client_id",)))
    assert with_azp.client_id == "svc-a"
    only_sub = await validator.validate(forge({"sub": "svc-b"}, drop=("client_id",)))
    assert only_sub.client_id == "svc-b"
    with pytest.raises(InvalidToken):
        await validator.validate(forge(drop=("client_id", "sub")))


# --- regressions: defects found by these tests, fixed in security/authn.py ---


@pytest.mark.parametrize("aud", [[["gateway"]], [{"a": 1}]], ids=["nested-list", "list-of-dict"])
def test_unhashable_aud_members_get_401_not_500(
    kit: Kit, client: TestClient, aud: list[Any]
) -> None:
    assert _rank(client, _bearer(kit.forge({"aud": aud}))).status_code == 401


def test_an_enormous_integer_exp_gets_401_not_500(kit: Kit, client: TestClient) -> None:
    assert _rank(client, _bearer(kit.forge({"exp": 10**400}))).status_code == 401


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_non_finite_time_claims_are_refused(kit: Kit, client: TestClient, claim: str) -> None:
    assert _rank(client, _bearer(kit.forge({claim: float("nan")}))).status_code == 401


def test_critical_header_extensions_are_refused(kit: Kit, client: TestClient) -> None:
    token = kit.forge(headers={"crit": ["exp"]})
    assert _rank(client, _bearer(token)).status_code == 401


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("claims", "headers"),
    [
        ({}, {"kid": "k\nERROR forged log line " + "x" * 4000}),
        ({"iss": "https://evil.example/\n" + "x" * 500}, {}),
        ({"aud": ["jo@example.com private", "y" * 300]}, {}),
    ],
)
async def test_a_refusal_cause_never_quotes_a_long_or_unprintable_value(
    issuer: EmbeddedIssuer,
    forge: Callable[..., str],
    claims: dict[str, Any],
    headers: dict[str, Any],
) -> None:
    validator = _validator(issuer, FakeClock(time.time()))
    with pytest.raises(InvalidToken) as refused:
        await validator.validate(forge(claims, headers=headers))
    cause = str(refused.value.log_cause)
    assert "\n" not in cause
    assert "forged" not in cause
    assert "evil.example" not in cause
    assert "jo@example.com" not in cause
    assert len(cause) < 200
