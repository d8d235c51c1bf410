"""gRPC over mutual TLS: the gateway's TLS settings cover its gRPC port too.

`tritonclient.grpc`, unchanged, in its own interpreter (run_triton_grpc_tls.py), with a
CA and client certificates made here; RFC 8705 thumbprints are computed by
pyca/cryptography (the oracle). The port serves TLS only: a plaintext client, a client
without a certificate or with one the CA did not issue (or expired) gets no connection,
and a certificate-bound token works only with its own certificate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from jose import jwt

from gateway.settings import Settings
from security.issuer import EmbeddedIssuer
from security.trust import open_issuer
from tests.clients._gateway import run_client
from tests.clients._grpc_gateway import GrpcGateway, grpc_gateway, ok, refused
from tests.security._certs import Issued, mtls_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    return mtls_pki(tmp_path_factory.mktemp("grpc-pki"))


def _token(settings: Settings, **claims: Any) -> str:
    key = settings.resolve(settings.issuer.signing_key_file).read_bytes()
    issuer = open_issuer(settings, time.time)
    assert isinstance(issuer, EmbeddedIssuer)
    now = int(time.time())
    body = {
        "iss": settings.issuer_url,
        "aud": settings.issuer.audience,
        "sub": "demo",
        "client_id": "demo",
        "scope": "infer infer:raw",  # the runner sends raw tensors
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": f"grpc-tls-{now}-{len(claims)}",
        **claims,
    }
    headers = {"kid": issuer.kid, "typ": "at+jwt"}
    return str(jwt.encode(body, key, algorithm="RS256", headers=headers))


@pytest.fixture(scope="module")
def report(make_settings: Callable[..., Settings], pki: dict[str, Issued]) -> dict[str, Any]:
    settings = make_settings(
        tls={
            "cert_file": str(pki["server"].cert_path),
            "key_file": str(pki["server"].key_path),
            "client_ca_file": str(pki["ca"].cert_path),
            "client_auth": "required",
        }
    )
    with grpc_gateway(settings) as (_served, app):
        spec = GrpcGateway.spec_for(settings, f"localhost:{app.state.grpc_port}")
        spec |= {
            "certs": {
                "ca": str(pki["ca"].cert_path),
                **{
                    name: {"cert": str(pki[name].cert_path), "key": str(pki[name].key_path)}
                    for name in ("a", "b", "wrong_ca", "expired")
                },
            },
            "tokens": {
                "plain": _token(settings),
                "bound_a": _token(settings, cnf={"x5t#S256": pki["a"].x5t_s256}),
                "bound_b": _token(settings, cnf={"x5t#S256": pki["b"].x5t_s256}),
            },
        }
        return run_client("run_triton_grpc_tls.py", spec)


def test_a_client_certificate_of_the_ca_gets_answers(report: dict[str, Any]) -> None:
    assert ok(report, "live") is True
    plain = ok(report, "infer_a_plain_token")
    assert np.shape(plain) == (4,)
    assert ok(report, "infer_a_bound_to_a") == plain


def test_a_bound_token_needs_its_own_certificate(report: dict[str, Any]) -> None:
    refused(report, "infer_a_bound_to_b", "UNAUTHENTICATED")
    refused(report, "infer_b_bound_to_a", "UNAUTHENTICATED")


@pytest.mark.parametrize(
    "check",
    [
        "infer_no_certificate",
        "infer_wrong_ca",
        "infer_expired_certificate",
        "infer_plaintext",
    ],
)
def test_no_connection_without_a_valid_client_certificate(
    report: dict[str, Any], check: str
) -> None:
    refused(report, check, "UNAVAILABLE")
