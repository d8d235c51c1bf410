"""Shared fixtures: a real initialised data directory, real keys, the real app."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jose import jwt

from gateway.app import create_app
from gateway.datadir import InitReport, init_data_dir
from gateway.settings import Settings, load_settings
from security.issuer import EmbeddedIssuer, load_signing_key

# Tests must not inherit an operator's configuration.
for _name in [n for n in os.environ if n.startswith("GATEWAY_")]:
    del os.environ[_name]


@pytest.fixture(scope="session")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> InitReport:
    return init_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def settings(initialised: InitReport) -> Settings:
    return load_settings(data_dir=initialised.data_dir, config_file=initialised.config)


@pytest.fixture(scope="session")
def make_settings(initialised: InitReport) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return load_settings(
            data_dir=initialised.data_dir, config_file=initialised.config, **overrides
        )

    return make


@pytest.fixture(scope="session")
def issuer(settings: Settings) -> EmbeddedIssuer:
    return EmbeddedIssuer(
        settings.issuer,
        issuer_url=settings.issuer_url,
        signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
    )


@pytest.fixture(scope="session")
def signing_pem(settings: Settings) -> bytes:
    return settings.resolve(settings.issuer.signing_key_file).read_bytes()


@pytest.fixture(scope="session")
def mint(issuer: EmbeddedIssuer) -> Callable[..., str]:
    """A real token from the embedded issuer for the given client and scopes."""

    def make(client_id: str = "demo", scopes: tuple[str, ...] | None = None) -> str:
        client = issuer.client(client_id)
        assert client is not None
        token: str = issuer.mint(client, scopes)["access_token"]
        return token

    return make


@pytest.fixture(scope="session")
def forge(settings: Settings, issuer: EmbeddedIssuer, signing_pem: bytes) -> Callable[..., str]:
    """Sign arbitrary claims/headers with the real issuer key (for attacker-side tests)."""

    def make(
        claims: dict[str, Any] | None = None,
        *,
        drop: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
        key: bytes | str | None = None,
        algorithm: str = "RS256",
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": settings.issuer_url,
            "aud": settings.issuer.audience,
            "sub": "demo",
            "client_id": "demo",
            "scope": "rank infer",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": f"forged-{now}",
        }
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        head = {"kid": issuer.kid, "typ": "at+jwt", **(headers or {})}
        return str(jwt.encode(body, key or signing_pem, algorithm=algorithm, headers=head))

    return make


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def auth(mint: Callable[..., str]) -> Callable[..., dict[str, str]]:
    def headers(scopes: tuple[str, ...] | None = None, client_id: str = "demo") -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(client_id, scopes)}"}

    return headers


@pytest.fixture(scope="session")
def grant_consent(settings: Settings) -> Callable[..., None]:
    """Store personalisation consent for users, as `PUT /v1/subjects/{id}/consent` would.

    The default bundle ranks without personalisation when there is no consent signal;
    tests of the personalised path consent first, like a real client's users would.
    """
    from privacy.components import open_consent_store
    from privacy.consent_store import ConsentEntry

    def grant(*user_ids: str, granted: bool = True, tenant: str | None = None) -> None:
        store = open_consent_store(settings)
        try:
            for user_id in user_ids:
                entry = ConsentEntry(
                    "personalization", granted, "consent", "default", "test", 0, "test"
                )
                store.record(tenant, user_id, [entry])
        finally:
            store.close()

    return grant


def data_dir_of(settings: Settings) -> Path:
    return settings.data_dir
