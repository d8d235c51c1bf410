"""A gateway with two A/B arms of the demo ranker (versions 1 and 2), on its own data dir."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.derivation import Purpose
from gateway.settings import ClientConfig
from models.variants import assign, variant_label
from policies.data_policy import Variant
from security.issuer import EmbeddedIssuer, load_signing_key
from tests.models.conftest import Box, box, pristine  # noqa: F401 - fixtures used here

SPLIT = """    variants:
      - {version: "1", weight: 1.0}"""
TWO_ARMS = """    variants:
      - {version: "1", weight: 0.5}
      - {version: "2", weight: 0.5}"""
ITEMS = ["i1", "i2", "i3", "i4"]
JSON = {"Content-Type": "application/json"}


@dataclass
class Lab:
    box: Box
    api: TestClient

    def token(self, client_id: str, tenant: str | None, *scopes: str) -> dict[str, str]:
        settings = self.box.settings()
        issuer = EmbeddedIssuer(
            settings.issuer,
            issuer_url=settings.issuer_url,
            signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
        )
        client = ClientConfig(
            client_id=client_id, secret_hash=SecretStr("unused"), scopes=scopes, tenant=tenant
        )
        return {"Authorization": f"Bearer {issuer.mint(client)['access_token']}"}

    def app_token(self, tenant: str | None = None) -> dict[str, str]:
        """A recommender service: ranks, sends events, records its users' consent."""
        return self.token(f"app-{tenant}", tenant, "rank", "events", "consent:write")

    def admin(self) -> dict[str, str]:
        return self.token("ops", None, "admin", "subject:erase", "audit:read")

    def arm_of(self, user: str) -> str:
        salt = self.box.settings().derived_keys[Purpose.AB_ASSIGNMENT]
        arms = (Variant(version="1", weight=0.5), Variant(version="2", weight=0.5))
        return variant_label(assign(salt, "demo-ranker", user, arms))

    def user_in(self, arm: str, start: int = 1) -> str:
        return next(f"u{i}" for i in range(start, 3000) if self.arm_of(f"u{i}") == arm)

    def consent(self, user: str, granted: bool = True, tenant: str | None = None) -> None:
        body = {"consents": [{"purpose": "analytics", "granted": granted}]}
        response = self.api.put(
            f"/v1/subjects/{user}/consent", json=body, headers=self.app_token(tenant)
        )
        assert response.status_code == 200, response.text

    def rank(self, user: str, tenant: str | None = None, items: list[str] = ITEMS) -> Any:
        response = self.api.post(
            "/v1/rank", json={"user_id": user, "item_ids": items}, headers=self.app_token(tenant)
        )
        assert response.status_code == 200, response.text
        return response.json()

    def events(
        self,
        user: str,
        ranking: str,
        events: list[tuple[str, str]],
        *,
        tenant: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        body = {
            "request_id": ranking,
            "user_id": user,
            "events": [{"type": kind, "item_id": item} for kind, item in events],
        }
        return self.api.post("/v1/events", json=body, headers=headers or self.app_token(tenant))

    def report(self) -> Any:
        response = self.api.get("/v1/admin/experiments/demo-ranker", headers=self.admin())
        assert response.status_code == 200, response.text
        return response.json()

    def enforce(self) -> Any:
        """What each replica's guardrail loop does, now."""
        response = self.api.post(
            "/v1/admin/experiments/demo-ranker/guardrails", headers=self.admin()
        )
        assert response.status_code == 200, response.text
        return response.json()


def two_arms(target: Box, *edits: tuple[str, str]) -> None:
    target.pack("2")
    for old, new in ((SPLIT, TWO_ARMS), *edits):
        target.edit_data_policy(old, new)


@pytest.fixture
def lab(box: Box) -> Iterator[Lab]:  # noqa: F811 - the imported fixture
    two_arms(box)
    with TestClient(create_app(box.settings())) as api:
        yield Lab(box, api)
