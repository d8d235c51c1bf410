"""Mutual TLS and RFC 8705 certificate-bound access tokens, against a real uvicorn on
127.0.0.1 with a CA and client certificates made here. Thumbprints are computed by
pyca/cryptography (the oracle), never by the gateway's own helper."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from jose import jwt

from gateway.errors import ConfigurationError
from gateway.settings import ClientConfig, Settings
from security.issuer import EmbeddedIssuer
from security.secrets import hash_secret
from security.trust import open_issuer
from tests.security._certs import Issued, client_context, mtls_pki
from tests.security._servers import serve_gateway

SECRET = "a-long-test-secret-for-mtls-clients-0123456789"
MODEL = "/v2/models/demo-ranker"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    return mtls_pki(tmp_path_factory.mktemp("mtls-pki"))


def _clients(base: Settings, pki: dict[str, Issued]) -> list[dict[str, Any]]:
    existing = [
        {**c.model_dump(), "secret_hash": c.secret_hash.get_secret_value()}
        for c in base.issuer.clients
    ]
    hashed = hash_secret(SECRET)
    return [
        *existing,
        {
            "client_id": "svc-bound",
            "secret_hash": hashed,
            "scopes": ["infer"],
            "tls_client_certificate_bound_access_tokens": True,
        },
        {
            "client_id": "svc-pinned",
            "secret_hash": hashed,
            "scopes": ["infer"],
            "tls_client_certificate_sha256": [pki["a"].x5t_s256],
        },
    ]


def _mtls_settings(
    make_settings: Callable[..., Settings], pki: dict[str, Issued], client_auth: str
) -> Settings:
    base = make_settings()
    return make_settings(
        tls={
            "cert_file": str(pki["server"].cert_path),
            "key_file": str(pki["server"].key_path),
            "client_ca_file": str(pki["ca"].cert_path),
            "client_auth": client_auth,
        },
        issuer={"clients": _clients(base, pki)},
    )


@pytest.fixture(scope="module")
def mtls_settings(make_settings: Callable[..., Settings], pki: dict[str, Issued]) -> Settings:
    return _mtls_settings(make_settings, pki, "optional")


@pytest.fixture(scope="module")
def url(mtls_settings: Settings) -> Iterator[str]:
    with serve_gateway(mtls_settings) as served:
        yield served.url


@pytest.fixture
def connect(url: str, pki: dict[str, Issued]) -> Iterator[Callable[[str | None], httpx.Client]]:
    """A client on its own connection, presenting pki[name]'s certificate (None: none)."""
    opened: list[httpx.Client] = []

    def make(name: str | None) -> httpx.Client:
        cert = pki[name] if name is not None else None
        client = httpx.Client(base_url=url, verify=client_context(pki["ca"], cert), timeout=30)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def _token(client: httpx.Client, client_id: str, secret: str) -> httpx.Response:
    return client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )


def _secret(settings: Settings, client_id: str) -> str:
    return (settings.data_dir / "clients" / f"{client_id}.secret").read_text().strip()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def _craft(settings: Settings, **claims: Any) -> str:
    """A token signed with the embedded issuer's real key: what a token minted before a
    client's binding was configured (or by a careless tool) looks like."""
    key = settings.resolve(settings.issuer.signing_key_file).read_bytes()
    issuer = open_issuer(settings, time.time)
    assert isinstance(issuer, EmbeddedIssuer)
    now = int(time.time())
    body = {
        "iss": settings.issuer_url,
        "aud": settings.issuer.audience,
        "sub": "svc-bound",
        "client_id": "svc-bound",
        "scope": "infer",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": f"crafted-{now}",
        **claims,
    }
    return str(
        jwt.encode(body, key, algorithm="RS256", headers={"kid": issuer.kid, "typ": "at+jwt"})
    )


def test_a_token_fetched_over_mtls_is_bound_to_that_certificate(
    connect: Callable[[str | None], httpx.Client],
    pki: dict[str, Issued],
    mtls_settings: Settings,
) -> None:
    with_a = connect("a")
    issued = _token(with_a, "demo", _secret(mtls_settings, "demo"))
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    assert jwt.get_unverified_claims(token)["cnf"] == {"x5t#S256": pki["a"].x5t_s256}
    assert with_a.get(MODEL, headers=_bearer(token)).status_code == 200
    # A fresh connection with the same certificate is the same holder.
    assert connect("a").get(MODEL, headers=_bearer(token)).status_code == 200


def test_a_bound_token_is_refused_with_another_certificate_or_none(
    connect: Callable[[str | None], httpx.Client], mtls_settings: Settings
) -> None:
    with_a = connect("a")
    token = _token(with_a, "demo", _secret(mtls_settings, "demo")).json()["access_token"]
    # Accepted first, so the token is in the verified-token cache: that must not help.
    assert with_a.get(MODEL, headers=_bearer(token)).status_code == 200
    _refused(connect("b").get(MODEL, headers=_bearer(token)))
    _refused(connect(None).get(MODEL, headers=_bearer(token)))
    # Outside /v2 a typed problem, the same body as for a garbage token: no hint of why.
    with_b = connect("b")
    refused = with_b.get("/v1/audit/checkpoint", headers=_bearer(token))
    garbage = with_b.get("/v1/audit/checkpoint", headers=_bearer("e30.e30.sig"))
    _refused(refused)
    assert refused.headers["content-type"].startswith("application/problem+json")
    body, expected = refused.json(), garbage.json()
    assert body.pop("instance") != expected.pop("instance")  # urn:request:<id>, per request
    assert body == expected


def test_a_refused_bound_token_is_on_record(
    connect: Callable[[str | None], httpx.Client], mtls_settings: Settings
) -> None:
    with_a = connect("a")
    token = _token(with_a, "demo", _secret(mtls_settings, "demo")).json()["access_token"]
    refused = connect("b").get(MODEL, headers=_bearer(token))
    _refused(refused)
    auditor = _token(with_a, "operator", _secret(mtls_settings, "operator")).json()
    found = with_a.get(
        f"/v1/audit/records/{refused.headers['x-request-id']}",
        headers=_bearer(auditor["access_token"]),
    )
    assert found.status_code == 200, found.text
    record = found.json()["record"]
    assert record["status"] == 401


def test_without_a_certificate_the_token_is_unbound_and_still_works(
    connect: Callable[[str | None], httpx.Client], mtls_settings: Settings
) -> None:
    plain = connect(None)
    token = _token(plain, "demo", _secret(mtls_settings, "demo")).json()["access_token"]
    assert "cnf" not in jwt.get_unverified_claims(token)
    assert plain.get(MODEL, headers=_bearer(token)).status_code == 200
    assert connect("b").get(MODEL, headers=_bearer(token)).status_code == 200


@pytest.mark.parametrize("name", ["wrong_ca", "expired", "server_only"])
def test_a_bad_client_certificate_fails_the_handshake(
    connect: Callable[[str | None], httpx.Client], name: str
) -> None:
    assert connect("a").get("/healthz").status_code == 200  # the control
    with pytest.raises(httpx.TransportError):
        connect(name).get("/healthz")


def test_a_bound_client_gets_no_token_without_its_certificate(
    connect: Callable[[str | None], httpx.Client], pki: dict[str, Issued]
) -> None:
    refused = _token(connect(None), "svc-bound", SECRET)
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    with_b = connect("b")
    issued = _token(with_b, "svc-bound", SECRET)
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    assert jwt.get_unverified_claims(token)["cnf"] == {"x5t#S256": pki["b"].x5t_s256}
    assert with_b.get(MODEL, headers=_bearer(token)).status_code == 200


def test_an_unbound_token_of_a_bound_client_is_refused(
    connect: Callable[[str | None], httpx.Client],
    pki: dict[str, Issued],
    mtls_settings: Settings,
) -> None:
    with_a = connect("a")
    # The control: the same crafted token, bound to cert A, is accepted over A.
    bound = _craft(mtls_settings, cnf={"x5t#S256": pki["a"].x5t_s256})
    assert with_a.get(MODEL, headers=_bearer(bound)).status_code == 200
    _refused(with_a.get(MODEL, headers=_bearer(_craft(mtls_settings))))


@pytest.mark.parametrize(
    "cnf",
    [
        pytest.param({"jkt": "A" * 43}, id="dpop-only"),
        pytest.param({"x5t#S256": "CERT_A", "jkt": "A" * 43}, id="x5t-plus-unchecked-jkt"),
        pytest.param({"x5t#S256": "A" * 42}, id="short-thumbprint"),
        pytest.param({"x5t#S256": ["CERT_A"]}, id="not-a-string"),
        pytest.param("CERT_A", id="cnf-not-an-object"),
    ],
)
def test_a_confirmation_the_gateway_cannot_check_is_refused(
    connect: Callable[[str | None], httpx.Client],
    pki: dict[str, Issued],
    mtls_settings: Settings,
    cnf: Any,
) -> None:
    def fill(value: Any) -> Any:
        if value == "CERT_A":
            return pki["a"].x5t_s256
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    token = _craft(mtls_settings, client_id="demo", sub="demo", cnf=fill(cnf))
    _refused(connect("a").get(MODEL, headers=_bearer(token)))


def test_a_pinned_client_gets_tokens_only_for_its_certificate(
    connect: Callable[[str | None], httpx.Client], pki: dict[str, Issued]
) -> None:
    refused = _token(connect("b"), "svc-pinned", SECRET)
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    assert _token(connect(None), "svc-pinned", SECRET).status_code == 401
    with_a = connect("a")
    issued = _token(with_a, "svc-pinned", SECRET)
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    assert jwt.get_unverified_claims(token)["cnf"] == {"x5t#S256": pki["a"].x5t_s256}
    assert with_a.get(MODEL, headers=_bearer(token)).status_code == 200


def test_a_wrong_secret_learns_nothing_about_binding(
    connect: Callable[[str | None], httpx.Client],
) -> None:
    """Binding is checked only after the secret: a caller without it gets the one answer."""
    wrong = _token(connect(None), "svc-bound", "not-the-secret").json()
    assert wrong == _token(connect(None), "no-such-client", "not-the-secret").json()


def test_metadata_advertises_bound_tokens(
    connect: Callable[[str | None], httpx.Client],
) -> None:
    metadata = connect(None).get("/.well-known/oauth-authorization-server").json()
    assert metadata["tls_client_certificate_bound_access_tokens"] is True
    assert metadata["issuer"].startswith("https://")


def test_required_client_auth_refuses_a_connection_without_a_certificate(
    make_settings: Callable[..., Settings], pki: dict[str, Issued]
) -> None:
    settings = _mtls_settings(make_settings, pki, "required")
    with serve_gateway(settings) as served:
        with httpx.Client(verify=client_context(pki["ca"], pki["a"]), timeout=30) as with_a:
            assert with_a.get(f"{served.url}/healthz").status_code == 200
        with (
            httpx.Client(verify=client_context(pki["ca"]), timeout=30) as without,
            pytest.raises(httpx.TransportError),
        ):
            without.get(f"{served.url}/healthz")


def test_a_bound_client_without_mutual_tls_refuses_to_start(
    make_settings: Callable[..., Settings], pki: dict[str, Issued]
) -> None:
    settings = make_settings(issuer={"clients": _clients(make_settings(), pki)})
    with pytest.raises(ConfigurationError, match="svc-bound, svc-pinned"):
        open_issuer(settings, time.time)


def test_the_issuer_mints_no_unbound_token_for_a_bound_client(
    mtls_settings: Settings, pki: dict[str, Issued]
) -> None:
    issuer = open_issuer(mtls_settings, time.time)
    assert isinstance(issuer, EmbeddedIssuer)
    client = issuer.client("svc-bound")
    assert isinstance(client, ClientConfig)
    with pytest.raises(ConfigurationError, match="certificate-bound"):
        issuer.mint(client)
    minted = issuer.mint(client, certificate_thumbprint=pki["b"].x5t_s256)["access_token"]
    assert jwt.get_unverified_claims(minted)["cnf"] == {"x5t#S256": pki["b"].x5t_s256}


def test_certificates_are_made_as_the_tests_intend(pki: dict[str, Issued]) -> None:
    """Guards the fixtures: distinct certificates, distinct thumbprints."""
    thumbprints = {pki[name].x5t_s256 for name in ("a", "b", "wrong_ca", "expired")}
    assert len(thumbprints) == 4
