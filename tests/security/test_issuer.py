"""The embedded OAuth2 issuer: RFC 6749 client_credentials, RFC 9068 tokens, RFC 8414 metadata."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from jose import jwt
from jose.exceptions import JWTError

from gateway.app import create_app
from gateway.datadir import InitReport
from gateway.settings import Settings
from security.issuer import public_jwk
from security.secrets import hash_secret, verify_secret
from tests.security._tokens import b64url, header_of, new_rsa, private_pem

TOKEN = "/oauth/token"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
RANK_BODY = {"user_id": "u1", "item_ids": ["i1", "i2"]}
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _secret(initialised: InitReport, client_id: str = "demo") -> str:
    return initialised.client_secrets[client_id].read_text(encoding="utf-8").strip()


def _basic(client_id: str, secret: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def _token_request(
    client: TestClient, data: dict[str, str], headers: dict[str, str] | None = None
) -> httpx2.Response:
    response: httpx2.Response = client.post(TOKEN, data=data, headers={**FORM, **(headers or {})})
    return response


def _oauth_error(response: httpx2.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert set(body) == {"error", "error_description"}


@pytest.fixture(scope="module")
def basic_response(client: TestClient, initialised: InitReport) -> httpx2.Response:
    """One token from client_secret_basic, shared (scrypt makes every request ~50 ms)."""
    return _token_request(
        client, {"grant_type": "client_credentials"}, _basic("demo", _secret(initialised))
    )


@pytest.fixture(scope="module")
def jwks(client: TestClient) -> dict[str, Any]:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def metadata(client: TestClient) -> dict[str, Any]:
    response = client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_client_secret_basic_issues_a_bearer_token(basic_response: httpx2.Response) -> None:
    assert basic_response.status_code == 200, basic_response.text
    assert basic_response.headers["cache-control"] == "no-store"
    assert basic_response.headers["pragma"] == "no-cache"
    body = basic_response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["scope"] == "rank infer"
    assert body["access_token"].count(".") == 2


def test_the_issued_token_works_at_rank(
    client: TestClient, basic_response: httpx2.Response
) -> None:
    token = basic_response.json()["access_token"]
    response = client.post(
        "/v1/rank",
        json=RANK_BODY,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text


def test_the_issued_token_is_an_rfc9068_access_token(
    basic_response: httpx2.Response, jwks: dict[str, Any], metadata: dict[str, Any]
) -> None:
    token = basic_response.json()["access_token"]
    header = header_of(token)
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": jwks["keys"][0]["kid"]}
    claims = jwt.decode(
        token, jwks, algorithms=["RS256"], audience="gateway", issuer=metadata["issuer"]
    )
    assert set(claims) >= {"iss", "aud", "sub", "client_id", "scope", "exp", "iat", "jti"}
    assert claims["iss"] == metadata["issuer"]
    assert claims["aud"] == "gateway"
    assert claims["sub"] == claims["client_id"] == "demo"
    assert claims["scope"] == "rank infer"
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 60
    assert len(claims["jti"]) >= 16


def test_the_token_does_not_verify_against_another_key(
    basic_response: httpx2.Response, jwks: dict[str, Any]
) -> None:
    other = public_jwk(new_rsa())
    other["kid"] = jwks["keys"][0]["kid"]
    with pytest.raises(JWTError):
        jwt.decode(
            basic_response.json()["access_token"],
            {"keys": [other]},
            algorithms=["RS256"],
            audience="gateway",
        )


def test_client_secret_post_works_and_narrows_scope(
    client: TestClient, initialised: InitReport
) -> None:
    response = _token_request(
        client,
        {
            "grant_type": "client_credentials",
            "client_id": "demo",
            "client_secret": _secret(initialised),
            "scope": "infer",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["scope"] == "infer"
    token = response.json()["access_token"]
    assert jwt.get_unverified_claims(token)["scope"] == "infer"
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/v2/models/demo-ranker", headers=bearer).status_code == 200
    refused = client.post("/v1/rank", json=RANK_BODY, headers=bearer)
    assert refused.status_code == 403
    assert 'scope="rank"' in refused.headers["www-authenticate"]


def test_wrong_secret_is_invalid_client(client: TestClient) -> None:
    response = _token_request(
        client, {"grant_type": "client_credentials"}, _basic("demo", "not-the-secret")
    )
    _oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic")


def test_unknown_client_is_invalid_client(client: TestClient, initialised: InitReport) -> None:
    # The real demo secret under an unknown id: the id is what is wrong.
    response = _token_request(
        client,
        {"grant_type": "client_credentials"},
        _basic("no-such-client", _secret(initialised)),
    )
    _oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic")


def test_no_client_authentication_is_invalid_client(client: TestClient) -> None:
    response = _token_request(client, {"grant_type": "client_credentials"})
    _oauth_error(response, 401, "invalid_client")


def test_basic_and_body_secret_together_is_invalid_request(
    client: TestClient, initialised: InitReport
) -> None:
    secret = _secret(initialised)
    response = _token_request(
        client,
        {"grant_type": "client_credentials", "client_id": "demo", "client_secret": secret},
        _basic("demo", secret),
    )
    _oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "invalid_request"),
        ({"scope": "rank"}, "invalid_request"),
        ({"grant_type": "password", "username": "demo", "password": "x"}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": "x"}, "unsupported_grant_type"),
    ],
    ids=["empty", "missing-grant-type", "password", "authorization-code"],
)
def test_grant_type_errors(
    client: TestClient, initialised: InitReport, data: dict[str, str], error: str
) -> None:
    response = _token_request(client, data, _basic("demo", _secret(initialised)))
    _oauth_error(response, 400, error)


def test_repeated_parameter_is_invalid_request(client: TestClient) -> None:
    response = client.post(
        TOKEN,
        content=b"grant_type=client_credentials&grant_type=client_credentials",
        headers=FORM,
    )
    _oauth_error(response, 400, "invalid_request")


def test_scope_the_client_may_not_have_is_invalid_scope(
    client: TestClient, initialised: InitReport
) -> None:
    response = _token_request(
        client,
        {"grant_type": "client_credentials", "scope": "rank admin"},
        _basic("demo", _secret(initialised)),
    )
    _oauth_error(response, 400, "invalid_scope")


def test_json_body_is_invalid_request(client: TestClient, initialised: InitReport) -> None:
    response = client.post(
        TOKEN,
        json={"grant_type": "client_credentials"},
        headers=_basic("demo", _secret(initialised)),
    )
    _oauth_error(response, 400, "invalid_request")


def test_authorization_server_metadata(
    metadata: dict[str, Any], basic_response: httpx2.Response, settings: Settings
) -> None:
    issuer = metadata["issuer"]
    assert issuer == jwt.get_unverified_claims(basic_response.json()["access_token"])["iss"]
    assert issuer == settings.issuer_url
    assert metadata["token_endpoint"] == f"{issuer}/oauth/token"
    assert metadata["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert set(metadata["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
    }
    assert set(metadata["scopes_supported"]) == {
        "rank",
        "infer",
        "admin",
        "audit:read",
        "audit:export",
        "consent:write",
        "consent:read",
        "subject:read",
        "subject:erase",
    }


def test_jwks_holds_only_public_members(jwks: dict[str, Any]) -> None:
    assert len(jwks["keys"]) == 1
    key = jwks["keys"][0]
    assert not set(PRIVATE_JWK_MEMBERS) & set(key)
    assert set(key) == {"kty", "n", "e", "kid", "alg", "use"}
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")


def test_jwks_kid_is_the_rfc7638_thumbprint(jwks: dict[str, Any]) -> None:
    key = jwks["keys"][0]
    canonical = json.dumps(
        {"e": key["e"], "kty": key["kty"], "n": key["n"]}, separators=(",", ":"), sort_keys=True
    )
    assert key["kid"] == b64url(hashlib.sha256(canonical.encode()).digest())


def test_config_stores_scrypt_hashes_never_the_plaintext(initialised: InitReport) -> None:
    text = initialised.config.read_text(encoding="utf-8")
    clients = {c["client_id"]: c for c in tomllib.loads(text)["issuer"]["clients"]}
    assert set(clients) == set(initialised.client_secrets) == {"demo", "operator"}
    for client_id in clients:
        secret = _secret(initialised, client_id)
        assert len(secret) >= 32
        assert secret not in text
        stored = clients[client_id]["secret_hash"]
        assert stored.startswith("scrypt$")
        assert verify_secret(secret, stored)


def test_secret_files_are_owner_only(initialised: InitReport) -> None:
    for path in initialised.client_secrets.values():
        assert path.stat().st_mode & 0o077 == 0


def test_verify_secret_rejects_a_wrong_secret() -> None:
    stored = hash_secret("correct horse battery staple")
    assert verify_secret("correct horse battery staple", stored)
    assert not verify_secret("correct horse battery stapl", stored)
    assert not verify_secret("", stored)


def test_hash_secret_is_salted() -> None:
    assert hash_secret("same") != hash_secret("same")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext-secret",
        "scrypt$16384$8$1$c2FsdA",
        "bcrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA$ZGlnZXN0",
        "scrypt$lots$8$1$c2FsdHNhbHRzYWx0c2FsdA$ZGlnZXN0",
        "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA$",
        "scrypt$3$8$1$c2FsdHNhbHRzYWx0c2FsdA$ZGlnZXN0",
        "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA$ZGlnZXN0$extra",
        "scrypt$16384$8$1$!!!$ZGlnZXN0",
    ],
    ids=[
        "empty",
        "plaintext",
        "too-few-fields",
        "other-prefix",
        "non-numeric-n",
        "empty-digest",
        "n-not-power-of-two",
        "too-many-fields",
        "bad-base64-salt",
    ],
)
def test_verify_secret_rejects_a_malformed_hash(stored: str) -> None:
    assert verify_secret("plaintext-secret", stored) is False


def test_verify_secret_rejects_a_hash_with_a_changed_prefix() -> None:
    stored = hash_secret("s3cret")
    assert verify_secret("s3cret", stored)
    assert not verify_secret("s3cret", "Scrypt" + stored.removeprefix("scrypt"))


# --- issuer disabled, an external issuer trusted through a JWKS file ------------------------

EXTERNAL = "https://idp.example.test"


@pytest.fixture(scope="module")
def external_key() -> rsa.RSAPrivateKey:
    return new_rsa()


@pytest.fixture(scope="module")
def external_client(
    make_settings: Any, external_key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    path: Path = tmp_path_factory.mktemp("idp") / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(external_key)]}), encoding="utf-8")
    settings = make_settings(
        issuer={"enabled": False},
        auth={
            "trusted_issuers": [
                {
                    "issuer": EXTERNAL,
                    "audiences": ["gateway"],
                    "jwks_file": str(path),
                    "required_typ": "at+jwt",
                }
            ]
        },
    )
    assert settings.issuer.enabled is False
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", TOKEN),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/.well-known/oauth-authorization-server"),
    ],
)
def test_issuer_endpoints_are_404_when_disabled(
    external_client: TestClient, method: str, path: str
) -> None:
    response = external_client.request(
        method,
        path,
        data={"grant_type": "client_credentials"} if method == "POST" else None,
        headers={**FORM, **_basic("demo", "whatever")} if method == "POST" else None,
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:gateway:problem:not-found"
    assert body["status"] == 404


def test_with_the_issuer_disabled_external_tokens_work_and_embedded_ones_do_not(
    external_client: TestClient,
    external_key: rsa.RSAPrivateKey,
    mint: Any,
) -> None:
    now = int(time.time())
    claims = {
        "iss": EXTERNAL,
        "aud": "gateway",
        "sub": "svc",
        "client_id": "svc",
        "scope": "rank",
        "iat": now,
        "exp": now + 300,
    }
    external = jwt.encode(
        claims,
        private_pem(external_key),
        algorithm="RS256",
        headers={"kid": public_jwk(external_key)["kid"], "typ": "at+jwt"},
    )
    headers = {"Content-Type": "application/json"}
    ok = external_client.post(
        "/v1/rank", json=RANK_BODY, headers={**headers, "Authorization": f"Bearer {external}"}
    )
    assert ok.status_code == 200, ok.text
    embedded = external_client.post(
        "/v1/rank", json=RANK_BODY, headers={**headers, "Authorization": f"Bearer {mint()}"}
    )
    assert embedded.status_code == 401
    assert embedded.headers["www-authenticate"] == 'Bearer realm="gateway", error="invalid_token"'
