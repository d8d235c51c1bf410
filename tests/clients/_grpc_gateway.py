"""A real gateway (uvicorn and its gRPC server, one process) on 127.0.0.1 for the stock
gRPC clients, with real tokens of each kind an attacker might try.

The clients run in their own interpreters (run_triton_grpc.py, run_kserve_grpc.py,
through `_gateway.run_client`): `tritonclient.grpc` and `kserve` register the same
`inference.*` protobuf symbols in protobuf's default pool. The gateway's own stubs live
in a private pool (scripts/gen_grpc.sh), so it can run in the test process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from jose import jwt

from gateway.app import create_app
from gateway.datadir import init_data_dir
from gateway.server import server_config
from gateway.settings import Settings, load_settings
from models.features import FeatureStore
from security.issuer import EmbeddedIssuer, load_signing_key
from tests.security._servers import Served, _serve
from tests.served_scores import served_scores

MODEL = "demo-ranker"
DATATYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


@dataclass
class GrpcGateway:
    http: Served
    app: FastAPI
    settings: Settings
    target: str  # host:port of the gRPC service
    tokens: dict[str, str]
    feeds: dict[str, np.ndarray]
    # What the gateway serves for `feeds` before stage 7's perturbation and rounding:
    # onnxruntime's scores with the default bundle's watermark (tests/served_scores.py).
    expected: list[float]
    # The id path (feature provenance): the same for `IDS` from the store, without
    # personalisation (no consent signal for the user in a fresh data directory).
    ids_expected: list[float]

    def spec(self) -> dict[str, Any]:
        """What a runner script reads on stdin."""
        return _spec(self.settings, self.target, self.tokens, self.feeds)

    @staticmethod
    def spec_for(settings: Settings, target: str) -> dict[str, Any]:
        """A runner's spec for a gateway started apart (other settings), fresh tokens."""
        return _spec(settings, target, _tokens(settings), demo_feeds(settings)[0])

    def audit_record(self, request_id: str) -> dict[str, Any]:
        """The audit record of a request, through the audit API (scope audit:read)."""
        response = httpx.get(
            f"{self.http.url}/v1/audit/records/{request_id}",
            headers={"Authorization": f"Bearer {self.tokens['auditor']}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()["record"]
        return record


def _spec(
    settings: Settings, target: str, tokens: dict[str, str], feeds: dict[str, np.ndarray]
) -> dict[str, Any]:
    return {
        "target": target,
        "model": MODEL,
        "tokens": tokens,
        "feeds": {
            name: {
                "datatype": DATATYPES[array.dtype],
                "shape": list(array.shape),
                "data": array.reshape(-1).tolist(),
            }
            for name, array in feeds.items()
        },
        # Past the message limit once the tensor is on the wire.
        "oversize_elements": settings.limits.max_body_bytes // 4 + 1024,
        "ids": ids_of(settings),
    }


def ids_of(settings: Settings) -> dict[str, Any]:
    """An id-path request: one user, four catalogue items (strings, sent as BYTES)."""
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    return {"user_id": "u3", "item_ids": list(store.item_ids[10:14])}


def ids_expected(settings: Settings) -> list[float]:
    """What the id path answers for `ids_of` without consent: the store's cold-start row
    (marked, before perturbation and rounding: compare with `assert_served`)."""
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    feeds = store.inputs_for("", ids_of(settings)["item_ids"])
    return served_scores(settings, feeds).tolist()


def demo_feeds(settings: Settings) -> tuple[dict[str, np.ndarray], list[float]]:
    """Real model inputs for 4 candidates, and what the gateway serves for them before
    perturbation and rounding (onnxruntime marked by the bundle's watermark)."""
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    feeds = store.inputs_for("u3", list(store.item_ids[10:14]))
    return feeds, served_scores(settings, feeds).tolist()


@contextmanager
def grpc_gateway(settings: Settings) -> Iterator[tuple[Served, FastAPI]]:
    """The real app behind the production server config, with gRPC on a free port."""
    app = create_app(settings.model_copy(update={"grpc_port": 0}))

    def config(port: int) -> Any:
        return server_config(settings.model_copy(update={"port": port}), app)

    with _serve(config, start_timeout_s=60.0) as served:
        yield served, app


def _tokens(settings: Settings) -> dict[str, str]:
    key_file = settings.resolve(settings.issuer.signing_key_file)
    issuer = EmbeddedIssuer(
        settings.issuer, issuer_url=settings.issuer_url, signing_key=load_signing_key(key_file)
    )

    def mint(client_id: str, scopes: tuple[str, ...]) -> str:
        client = issuer.client(client_id)
        assert client is not None
        token: str = issuer.mint(client, scopes)["access_token"]
        return token

    def sign(key: bytes, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": settings.issuer_url,
            "aud": settings.issuer.audience,
            "sub": "demo",
            "client_id": "demo",
            "scope": "infer",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": f"attacker-{now}",
            **claims,
        }
        headers = {"kid": issuer.kid, "typ": "at+jwt"}
        return str(jwt.encode(body, key, algorithm="RS256", headers=headers))

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    now = int(time.time())
    return {
        # Raw tensors (every model input) need the trusted scope; `ids` is a default client's.
        "good": mint("demo", ("infer", "infer:raw")),
        "ids": mint("demo", ("infer",)),
        "rank_only": mint("demo", ("rank",)),
        "auditor": mint("operator", ("audit:read",)),
        # The issuer's kid, another key: the signature cannot verify.
        "forged": sign(other_key),
        # The real key, expired well past the leeway.
        "expired": sign(key_file.read_bytes(), iat=now - 7200, nbf=now - 7200, exp=now - 3600),
    }


@pytest.fixture(scope="module")
def grpc_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcGateway]:
    # Its own data directory: an audit log has one writer.
    report = init_data_dir(tmp_path_factory.mktemp("grpc-data"))
    settings = load_settings(data_dir=report.data_dir, config_file=report.config)
    feeds, expected = demo_feeds(settings)
    with grpc_gateway(settings) as (served, app):
        port = app.state.grpc_port
        assert isinstance(port, int)
        assert port > 0
        yield GrpcGateway(
            http=served,
            app=app,
            settings=settings,
            target=f"127.0.0.1:{port}",
            tokens=_tokens(settings),
            feeds=feeds,
            expected=expected,
            ids_expected=ids_expected(settings),
        )


def ok(report: dict[str, Any], check: str) -> Any:
    outcome = report[check]
    assert outcome["ok"], f"{check}: {outcome}"
    return outcome["value"]


def refused(report: dict[str, Any], check: str, code: str) -> dict[str, Any]:
    outcome: dict[str, Any] = report[check]
    assert not outcome["ok"], f"{check} was not refused: {outcome}"
    assert outcome["code"] == code, f"{check}: {outcome}"
    return outcome
