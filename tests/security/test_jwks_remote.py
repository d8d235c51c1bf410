"""Keys from a real identity provider over HTTP: gateway B trusts gateway A's JWKS URL.

Also `RemoteKeySource` on its own, against a tiny real JWKS server whose key set
the test changes, with an injected clock: rotation is picked up, refreshes on
unknown `kid`s are rate-limited, a failed fetch keeps the last good keys.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from jose import jwt
from jose.exceptions import JWTError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.datadir import InitReport
from gateway.settings import Settings
from security.issuer import public_jwk
from security.jwks import JwksError, KeySet, RemoteKeySource
from tests.security._servers import Served, serve
from tests.security._tokens import b64url, new_rsa, private_pem

RANK_BODY = {"user_id": "u1", "item_ids": ["i1", "i2"]}
INVALID = 'Bearer realm="gateway", error="invalid_token"'


# --- gateway B trusts gateway A over real HTTP -----------------------------------------------


@pytest.fixture(scope="module")
def gateway_a(settings: Settings) -> Iterator[Served]:
    with serve(create_app(settings)) as served:
        yield served


@pytest.fixture(scope="module")
def gateway_b(
    gateway_a: Served, settings: Settings, make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    b_settings = make_settings(
        issuer={"enabled": False},
        auth={
            "trusted_issuers": [
                {
                    "issuer": settings.issuer_url,
                    "audiences": ["gateway"],
                    "jwks_url": f"{gateway_a.url}/.well-known/jwks.json",
                    "required_typ": "at+jwt",
                }
            ]
        },
    )
    with TestClient(create_app(b_settings)) as client:
        yield client


@pytest.fixture(scope="module")
def token_from_a(gateway_a: Served, initialised: InitReport) -> str:
    """A token obtained the way a client would: client_credentials over HTTP from A."""
    secret = initialised.client_secrets["demo"].read_text(encoding="utf-8").strip()
    response = httpx.post(
        f"{gateway_a.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=("demo", secret),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def _rank(client: TestClient, token: str) -> httpx2.Response:
    response: httpx2.Response = client.post(
        "/v1/rank",
        json=RANK_BODY,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    return response


def test_a_serves_its_jwks_over_http(gateway_a: Served) -> None:
    response = httpx.get(f"{gateway_a.url}/.well-known/jwks.json", timeout=10)
    assert response.status_code == 200
    assert [key["kty"] for key in response.json()["keys"]] == ["RSA"]


def test_b_accepts_a_token_issued_by_a(gateway_b: TestClient, token_from_a: str) -> None:
    assert gateway_b.get("/.well-known/jwks.json").status_code == 404  # B issues nothing itself
    response = _rank(gateway_b, token_from_a)
    assert response.status_code == 200, response.text
    bearer = {"Authorization": f"Bearer {token_from_a}"}
    assert gateway_b.get("/v2/models/demo-ranker", headers=bearer).status_code == 200


@pytest.mark.parametrize("kid", ["rogue-kid", None], ids=["unknown-kid", "a-kid"])
def test_b_refuses_a_token_signed_by_another_key(
    gateway_b: TestClient, token_from_a: str, settings: Settings, kid: str | None
) -> None:
    a_kid = jwt.get_unverified_header(token_from_a)["kid"]
    claims = jwt.get_unverified_claims(token_from_a)
    assert claims["iss"] == settings.issuer_url
    forged = jwt.encode(
        claims,
        private_pem(new_rsa()),
        algorithm="RS256",
        headers={"kid": kid or a_kid, "typ": "at+jwt"},
    )
    response = _rank(gateway_b, forged)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID


def test_b_refuses_a_token_from_a_for_another_audience(
    gateway_b: TestClient, signing_pem: bytes, token_from_a: str
) -> None:
    header = jwt.get_unverified_header(token_from_a)
    claims = {**jwt.get_unverified_claims(token_from_a), "aud": "billing"}
    token = jwt.encode(
        claims, signing_pem, algorithm="RS256", headers={"kid": header["kid"], "typ": "at+jwt"}
    )
    assert _rank(gateway_b, token).status_code == 401


# --- RemoteKeySource against a JWKS server the test controls --------------------------------


class JwksServer:
    """A tiny IdP key endpoint: the test sets the key set, the status, or a raw body."""

    def __init__(self) -> None:
        self.app = Starlette(routes=[Route("/jwks.json", self._endpoint)])
        self.reset()

    def reset(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.status = 200
        self.raw: bytes | None = None
        self.hits = 0

    async def _endpoint(self, request: Request) -> Response:
        self.hits += 1
        if self.status != 200:
            return Response(b"upstream failure", status_code=self.status)
        if self.raw is not None:
            return Response(self.raw, media_type="application/json")
        return JSONResponse(self.jwks)


class FakeClock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


TTL = 300.0
INTERVAL = 30.0


@pytest.fixture(scope="module")
def jwks_http() -> Iterator[tuple[JwksServer, Served]]:
    idp = JwksServer()
    with serve(idp.app) as served:
        yield idp, served


@pytest.fixture
def idp(jwks_http: tuple[JwksServer, Served]) -> JwksServer:
    jwks_http[0].reset()
    return jwks_http[0]


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return new_rsa(), new_rsa()


def _n_of(key: Any) -> str:
    n: str = key.to_dict()["n"]
    return n


def _source(url: str, http: httpx.AsyncClient, clock: FakeClock) -> RemoteKeySource:
    return RemoteKeySource(
        url, client=http, ttl_s=TTL, min_refresh_interval_s=INTERVAL, clock=clock
    )


@pytest.mark.asyncio
async def test_rotation_is_picked_up_on_the_next_allowed_refresh(
    idp: JwksServer,
    jwks_http: tuple[JwksServer, Served],
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    old, new = (public_jwk(k) for k in rsa_keys)
    idp.jwks = {"keys": [old]}
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        source = _source(f"{jwks_http[1].url}/jwks.json", http, clock)
        found = await source.key(old["kid"], "RS256")
        assert found is not None
        assert _n_of(found) == old["n"]
        assert (source.fetches, idp.hits) == (1, 1)

        idp.jwks = {"keys": [old, new]}  # the IdP rotates in a new key
        # Within min_refresh_interval_s of the last fetch: no fetch, the new kid is not known yet.
        clock.now += INTERVAL - 1
        assert await source.key(new["kid"], "RS256") is None
        assert (source.fetches, idp.hits) == (1, 1)

        clock.now += 2
        found = await source.key(new["kid"], "RS256")
        assert found is not None
        assert _n_of(found) == new["n"]
        assert (source.fetches, idp.hits) == (2, 2)
        # Known kids are served from the cache.
        assert await source.key(old["kid"], "RS256") is not None
        assert await source.key(new["kid"], "RS256") is not None
        assert (source.fetches, idp.hits) == (2, 2)


@pytest.mark.asyncio
async def test_unknown_kids_cannot_turn_the_gateway_into_a_jwks_hammer(
    idp: JwksServer,
    jwks_http: tuple[JwksServer, Served],
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    known = public_jwk(rsa_keys[0])
    idp.jwks = {"keys": [known]}
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        source = _source(f"{jwks_http[1].url}/jwks.json", http, clock)
        assert await source.key(known["kid"], "RS256") is not None
        assert source.fetches == 1

        clock.now += INTERVAL + 1
        for n in range(25):
            assert await source.key(f"random-{n}", "RS256") is None
        assert (source.fetches, idp.hits) == (2, 2)  # one refresh for the whole burst

        clock.now += INTERVAL - 1
        assert await source.key("random-again", "RS256") is None
        assert (source.fetches, idp.hits) == (2, 2)

        clock.now += 2
        assert await source.key("random-later", "RS256") is None
        assert (source.fetches, idp.hits) == (3, 3)
        assert await source.key(known["kid"], "RS256") is not None  # still served


@pytest.mark.asyncio
async def test_the_cache_is_refetched_after_its_ttl(
    idp: JwksServer,
    jwks_http: tuple[JwksServer, Served],
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    old, new = (public_jwk(k) for k in rsa_keys)
    idp.jwks = {"keys": [old]}
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        source = _source(f"{jwks_http[1].url}/jwks.json", http, clock)
        assert await source.key(old["kid"], "RS256") is not None
        idp.jwks = {"keys": [new]}  # the old key is retired at the IdP
        clock.now += TTL - 1
        assert await source.key(old["kid"], "RS256") is not None
        assert source.fetches == 1
        clock.now += 1
        assert await source.key(old["kid"], "RS256") is None  # retired keys stop verifying
        assert await source.key(new["kid"], "RS256") is not None
        assert source.fetches == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "failure",
    ["http-500", "http-404", "not-json", "no-keys-array", "private-key-material"],
)
async def test_a_failed_fetch_keeps_the_last_good_keys(
    idp: JwksServer,
    jwks_http: tuple[JwksServer, Served],
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    failure: str,
) -> None:
    good = public_jwk(rsa_keys[0])
    idp.jwks = {"keys": [good]}
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False) as http:
        source = _source(f"{jwks_http[1].url}/jwks.json", http, clock)
        assert await source.key(good["kid"], "RS256") is not None
        if failure == "http-500":
            idp.status = 500
        elif failure == "http-404":
            idp.status = 404
        elif failure == "not-json":
            idp.raw = b"<html>maintenance</html>"
        elif failure == "no-keys-array":
            idp.raw = b'{"keys": {}}'
        else:
            other = public_jwk(rsa_keys[1])
            idp.jwks = {"keys": [{**other, "d": b64url(b"\x01" * 256)}]}
        clock.now += TTL + 1  # the cache is stale: the next lookup must try to refetch
        found = await source.key(good["kid"], "RS256")
        assert (source.fetches, idp.hits) == (2, 2)
        assert found is not None
        assert _n_of(found) == good["n"]
        # An unknown kid is simply unknown; no exception escapes to the request.
        clock.now += INTERVAL + 1
        assert await source.key("unknown", "RS256") is None
        assert source.fetches == 3


@pytest.mark.asyncio
async def test_a_stopped_idp_keeps_the_last_good_keys(
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    good = public_jwk(rsa_keys[0])
    idp = JwksServer()
    idp.jwks = {"keys": [good]}
    clock = FakeClock()
    with serve(idp.app) as served:
        url = f"{served.url}/jwks.json"
        async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
            source = _source(url, http, clock)
            assert await source.key(good["kid"], "RS256") is not None
            served.stop()
            with pytest.raises(httpx.ConnectError):
                await http.get(url)  # the IdP is really gone
            clock.now += TTL + 1
            found = await source.key(good["kid"], "RS256")
            assert found is not None
            assert source.fetches == 2
            assert idp.hits == 1


@pytest.mark.asyncio
async def test_an_idp_unreachable_from_the_start_yields_no_key(
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    idp = JwksServer()
    with serve(idp.app) as served:
        url = f"{served.url}/jwks.json"
        served.stop()
    clock = FakeClock()
    async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
        source = _source(url, http, clock)
        assert await source.key(public_jwk(rsa_keys[0])["kid"], "RS256") is None
        assert source.fetches == 1
        assert await source.key("other", "RS256") is None
        assert source.fetches == 1  # the failed attempt still counts against the interval


# --- KeySet: what a JWKS may contain ------------------------------------------------------


def _private_rsa_members(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.private_numbers()

    def enc(value: int) -> str:
        return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {"d": enc(numbers.d), "p": enc(numbers.p), "q": enc(numbers.q)}


@pytest.mark.parametrize("member", ["d", "p", "q"])
def test_keyset_refuses_private_key_material(
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], member: str
) -> None:
    public = public_jwk(rsa_keys[0])
    assert KeySet({"keys": [public]}).kids == {public["kid"]}
    leaked = {**public, member: _private_rsa_members(rsa_keys[0])[member]}
    with pytest.raises(JwksError, match="private"):
        KeySet({"keys": [leaked]})


def test_keyset_refuses_a_symmetric_key() -> None:
    oct_key = {"kty": "oct", "kid": "hmac", "k": base64.urlsafe_b64encode(b"s" * 32).decode()}
    with pytest.raises(JwksError):
        KeySet({"keys": [oct_key]})


@pytest.mark.parametrize("jwks", [{}, {"keys": "nope"}, {"keys": {"kid": "x"}}])
def test_keyset_needs_a_keys_array(jwks: dict[str, Any]) -> None:
    with pytest.raises(JwksError):
        KeySet(jwks)


def test_keyset_matches_key_type_to_algorithm(
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    rsa_jwk = public_jwk(rsa_keys[0])
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    ec_jwk = {
        "kty": "EC",
        "crv": "P-256",
        "kid": "ec-1",
        "x": b64url(ec_public.x.to_bytes(32, "big")),
        "y": b64url(ec_public.y.to_bytes(32, "big")),
    }
    encryption_only = {**public_jwk(rsa_keys[1]), "use": "enc"}
    no_kid = {k: v for k, v in public_jwk(rsa_keys[1]).items() if k != "kid"}
    keys = KeySet({"keys": [rsa_jwk, ec_jwk, encryption_only, no_kid]})
    assert keys.kids == {rsa_jwk["kid"], "ec-1"}
    assert keys.key(rsa_jwk["kid"], "RS256") is not None
    assert keys.key(rsa_jwk["kid"], "ES256") is None  # an RSA key never verifies ES256
    assert keys.key(rsa_jwk["kid"], "RS384") is None  # the JWK pins alg RS256
    assert keys.key(rsa_jwk["kid"], "HS256") is None
    assert keys.key("ec-1", "ES256") is not None
    assert keys.key("ec-1", "RS256") is None
    assert keys.key("ec-1", "ES384") is None  # curve P-256 is for ES256 only
    assert keys.key("missing", "RS256") is None


def test_a_key_from_the_keyset_verifies_real_tokens(
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    jwk_ = public_jwk(rsa_keys[0])
    key = KeySet({"keys": [jwk_]}).key(jwk_["kid"], "RS256")
    now = int(time.time())
    good = jwt.encode({"sub": "x", "iat": now}, private_pem(rsa_keys[0]), algorithm="RS256")
    bad = jwt.encode({"sub": "x", "iat": now}, private_pem(rsa_keys[1]), algorithm="RS256")
    assert jwt.decode(good, key, algorithms=["RS256"])["sub"] == "x"
    with pytest.raises(JWTError):
        jwt.decode(bad, key, algorithms=["RS256"])
