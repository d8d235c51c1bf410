"""No client-supplied value reaches a log line, from the attacker's side.

A real gateway (production server config, real uvicorn and its gRPC server on
127.0.0.1, log level debug)
gets distinctive personal data in every field of every endpoint, in valid and invalid
requests: bodies, path and query parameters, headers, token endpoint form fields and
forged tokens' claims. Every record of every logger is captured (message, arguments
and traceback, formatted as the CLI's plain formatter writes them) with whatever the
process wrote to stdout/stderr, and no canary may appear in any of it.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.datadir import InitReport
from gateway.grpc import grpc_predict_v2_pb2 as pb
from gateway.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from gateway.settings import Settings
from models.features import FeatureStore
from tests.clients._grpc_gateway import grpc_gateway
from tests.privacy.tcf import encode_core

# The test's own HTTP client logs the URLs it requests; those lines are not the gateway's.
CLIENT_SIDE = {"httpx", "httpcore"}
PLAIN = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
_serial = itertools.count(1)
CANARIES: dict[str, str] = {}  # canary -> the field it was sent in


def canary(where: str) -> str:
    """A distinctive personal value for one field; its `cnryNNNN` token names the field."""
    n = next(_serial)
    token = f"cnry{n:04d}"
    shapes = [
        f"{token}.zelda.unique@example.net",
        f"+44 20 7946 {n:04d} {token}",
        f"Xanthippe Vorobyeva-{token}",
        f"DE89 3704 0044 0532 {n:04d} 00 {token}",
        f"{token}-7f3a9c1e5b2d",
    ]
    value = shapes[n % len(shapes)]
    CANARIES[value] = where
    CANARIES[token] = where
    return value


def ascii_canary(where: str) -> str:
    """A canary fit for a path segment, an identifier or a header that forbids spaces."""
    return canary(where).replace(" ", "-").replace("+", "p")


def path_canary(where: str) -> str:
    """A canary that is also a valid model name or version (models.package_format)."""
    token = f"cnry{next(_serial):04d}"
    CANARIES[token] = where
    return f"{token}-zelda-unique"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in CLIENT_SIDE:
            return
        self.lines.append(PLAIN.format(record))
        self.lines.append(repr(record.args))
        self.lines.append(repr(getattr(record, "__dict__", {})))


@pytest.fixture
def captured() -> Iterator[Capture]:
    """Every logger at DEBUG into one handler, including those that do not propagate."""
    handler = Capture()
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [
        lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.level) for lg in loggers]
    # Handlers an earlier test installed (gateway.logs via an in-process `serve`) would
    # write this process's own client libraries' DEBUG lines (httpcore quoting the
    # headers it sent) to stderr: the scan is of what the gateway logs.
    root_handlers = loggers[0].handlers[:]
    loggers[0].handlers.clear()
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        if lg is loggers[0] or not lg.propagate:
            lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg, level in saved:
            lg.setLevel(level)
            lg.removeHandler(handler)
        loggers[0].handlers[:] = root_handlers


def _wrong_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part(header)}.{part(claims)}."


def client_headers(where: str) -> dict[str, str]:
    return {
        "X-Request-Id": ascii_canary(f"{where} X-Request-Id"),
        "User-Agent": canary(f"{where} User-Agent"),
        "X-Forwarded-For": f"203.0.113.9, {canary(f'{where} X-Forwarded-For')}",
        "Forwarded": f"for={ascii_canary(f'{where} Forwarded')}",
        "Referer": f"https://example.net/{ascii_canary(f'{where} Referer')}",
        "Cookie": f"session={ascii_canary(f'{where} Cookie')}",
        "Data-Jurisdiction": canary(f"{where} Data-Jurisdiction"),
        "Sec-GPC": canary(f"{where} Sec-GPC"),
        "X-Custom": canary(f"{where} X-Custom"),
    }


def exercise(
    http: httpx.Client,
    mint: Callable[..., str],
    forge: Callable[..., str],
    secret: Callable[[str], str],
    items: list[str],
    tensors: list[dict[str, Any]],
) -> dict[str, int]:
    """Every endpoint, valid and invalid requests; returns the status of the key ones."""
    statuses: dict[str, int] = {}
    demo = {"Authorization": f"Bearer {mint('demo')}"}
    operator = {"Authorization": f"Bearer {mint('operator')}"}

    def send(name: str, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = {**client_headers(name), **kw.pop("headers", {})}
        response = http.request(method, url, headers=headers, **kw)
        statuses[name] = response.status_code
        return response

    # -- token endpoint: unknown client, wrong secret, bad scope, bad grant, valid --------
    form_fields = ("client_id", "client_secret", "scope", "resource", "audience")
    send(
        "token unknown client",
        "POST",
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            **{f: ascii_canary(f"token form {f}") for f in form_fields},
        },
    )
    send(
        "token wrong secret",
        "POST",
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "demo",
            "client_secret": ascii_canary("token wrong secret"),
            "scope": ascii_canary("token wrong-secret scope"),
        },
    )
    send(
        "token bad scope",
        "POST",
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "demo",
            "client_secret": secret("demo"),
            "scope": f"rank {ascii_canary('token bad scope')}",
        },
    )
    send(
        "token bad grant",
        "POST",
        "/oauth/token",
        data={
            "grant_type": ascii_canary("token grant_type"),
            "client_id": "demo",
            "client_secret": secret("demo"),
        },
    )
    basic = base64.b64encode(
        f"{ascii_canary('basic user')}:{ascii_canary('basic password')}".encode()
    ).decode()
    send(
        "token basic",
        "POST",
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    send(
        "token valid",
        "POST",
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "demo",
            "client_secret": secret("demo"),
            "scope": "rank",
        },
    )
    send(
        "token malformed",
        "POST",
        "/oauth/token",
        content=f"grant_type=%ZZ{ascii_canary('token raw body')}&&==",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    # -- forged and broken tokens ----------------------------------------------------------
    claims = {
        c: ascii_canary(f"forged claim {c}")
        for c in ("sub", "client_id", "scope", "jti", "tenant", "name", "email")
    }
    tokens = {
        "bearer garbage": ascii_canary("bearer garbage"),
        "forged claims": forge(claims),
        "forged iss": forge({"iss": ascii_canary("forged iss")}),
        "forged aud": forge({"aud": ascii_canary("forged aud")}),
        "forged kid": forge(headers={"kid": ascii_canary("forged kid")}),
        "forged typ": forge(headers={"typ": ascii_canary("forged typ")}),
        "forged expired": forge(
            {"exp": int(time.time()) - 600, "sub": ascii_canary("expired sub")}
        ),
        "wrong key": forge({"sub": ascii_canary("wrong key sub")}, key=_wrong_key_pem()),
        "alg none": _unsigned(
            {"sub": ascii_canary("alg none sub"), "iss": ascii_canary("alg none iss")},
            {"alg": "none", "kid": ascii_canary("alg none kid")},
        ),
        "bad alg": _unsigned({"sub": "x"}, {"alg": ascii_canary("bad alg"), "typ": "at+jwt"}),
    }
    for name, token in tokens.items():
        send(
            f"rank with {name}",
            "POST",
            "/v1/rank",
            json={"user_id": ascii_canary(f"{name} user_id"), "item_ids": items[:3]},
            headers={"Authorization": f"Bearer {token}"},
        )

    # -- rank: valid, unknown items, bad bodies ---------------------------------------------
    tcf = {"TCF-Consent": encode_core(purposes={1, 3, 4})}
    send(
        "rank valid",
        "POST",
        f"/v1/rank?{ascii_canary('rank query key')}={ascii_canary('rank query')}",
        json={
            "user_id": ascii_canary("rank user_id"),
            "item_ids": items[:5],
            "top_k": 3,
            "context": {
                "query": f"call me on {canary('rank context.query')}",
                "device": ascii_canary("rank device")[:32],
            },
        },
        headers={**demo, **tcf},
    )
    send(
        "rank tcf garbage",
        "POST",
        "/v1/rank",
        json={"user_id": ascii_canary("rank tcf user"), "item_ids": items[:2]},
        headers={**demo, "TCF-Consent": ascii_canary("TCF-Consent")},
    )
    send(
        "rank unknown items",
        "POST",
        "/v1/rank",
        json={
            "user_id": ascii_canary("unknown user"),
            "item_ids": [ascii_canary(f"item id {i}") for i in range(3)],
        },
        headers=demo,
    )
    send(
        "rank extra field",
        "POST",
        "/v1/rank",
        json={"user_id": "u1", "item_ids": items[:2], ascii_canary("extra key"): canary("extra")},
        headers=demo,
    )
    send(
        "rank wrong types",
        "POST",
        "/v1/rank",
        json={
            "user_id": [canary("user_id list")],
            "item_ids": canary("item_ids str"),
            "top_k": canary("top_k"),
            "context": {"locale": canary("locale")},
        },
        headers=demo,
    )
    send(
        "rank long id",
        "POST",
        "/v1/rank",
        json={"user_id": ascii_canary("long user") * 20, "item_ids": items[:2]},
        headers=demo,
    )
    send(
        "rank bad json",
        "POST",
        "/v1/rank",
        content=f'{{"user_id": "{ascii_canary("bad json")}", ',
        headers={**demo, "Content-Type": "application/json"},
    )
    send(
        "rank bad content type",
        "POST",
        "/v1/rank",
        content=canary("text body"),
        headers={**demo, "Content-Type": f"text/{ascii_canary('content type')}"},
    )

    # -- subjects and consent ------------------------------------------------------------------
    subject = ascii_canary("subject id")
    send(
        "consent put",
        "PUT",
        f"/v1/subjects/{subject}/consent",
        json={"jurisdiction": "eu", "consents": [{"purpose": "personalization", "granted": True}]},
        headers=operator,
    )
    send(
        "consent put invalid",
        "PUT",
        f"/v1/subjects/{ascii_canary('subject 2')}/consent",
        json={
            "jurisdiction": canary("jurisdiction"),
            "consents": [
                {
                    "purpose": canary("purpose"),
                    "granted": canary("granted"),
                    "lawful_basis": canary("lawful_basis"),
                }
            ],
        },
        headers=operator,
    )
    send("consent get", "GET", f"/v1/subjects/{subject}/consent", headers=operator)
    send("subject export", "GET", f"/v1/subjects/{subject}/export", headers=operator)
    send("consent demo", "GET", f"/v1/subjects/{ascii_canary('subject 3')}/consent", headers=demo)
    send(
        "rank consented",
        "POST",
        "/v1/rank",
        json={"user_id": subject, "item_ids": items[:4]},
        headers=demo,
    )
    send("subject erase", "DELETE", f"/v1/subjects/{subject}", headers=operator)

    # -- Open Inference Protocol ------------------------------------------------------------------
    send(
        "oip unknown model",
        "POST",
        f"/v2/models/{ascii_canary('oip model')}/infer",
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        headers=demo,
    )
    send(
        "oip bad tensors",
        "POST",
        "/v2/models/demo-ranker/infer",
        json={
            "id": ascii_canary("oip id"),
            "parameters": {canary("param key"): canary("param")},
            "inputs": [
                {
                    "name": ascii_canary("input name"),
                    "shape": [1],
                    "datatype": ascii_canary("datatype"),
                    "data": [canary("tensor data")],
                }
            ],
            "outputs": [{"name": ascii_canary("output name")}],
        },
        headers=demo,
    )
    send(
        "oip bytes",
        "POST",
        "/v2/models/demo-ranker/infer",
        json={
            "inputs": [
                {
                    "name": "user_idx",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [canary("bytes data")],
                }
            ]
        },
        headers=demo,
    )
    send(
        "oip valid",
        "POST",
        "/v2/models/demo-ranker/infer",
        json={"id": ascii_canary("oip valid id"), "inputs": tensors},
        headers=demo,
    )
    for where, path in {
        "oip infer name": f"/v2/models/{path_canary('oip infer name')}/infer",
        "oip infer version": f"/v2/models/demo-ranker/versions/{path_canary('oip ver')}/infer",
        "oip ready name": f"/v2/models/{path_canary('oip ready name')}/ready",
        "admin load name": f"/v1/admin/models/{path_canary('admin name')}/versions/1/load",
        "audit record id": f"/v1/audit/records/{path_canary('audit id')}",
    }.items():
        method = "GET" if "ready" in where or "audit" in where else "POST"
        body = {"inputs": tensors} if "infer" in where else None
        send(where, method, path, json=body, headers=operator if "infer" not in where else demo)
    send("oip metadata", "GET", f"/v2/models/{ascii_canary('oip meta')}", headers=demo)
    send(
        "oip version",
        "GET",
        f"/v2/models/demo-ranker/versions/{ascii_canary('oip v')}/ready",
        headers=demo,
    )
    send("oip stats", "GET", f"/v2/models/{ascii_canary('oip stats')}/stats", headers=operator)

    # -- audit and admin ------------------------------------------------------------------------
    send(
        "audit record", "GET", f"/v1/audit/records/{ascii_canary('audit record')}", headers=operator
    )
    send(
        "audit inclusion",
        "GET",
        f"/v1/audit/proofs/inclusion?request_id={ascii_canary('inclusion id')}",
        headers=operator,
    )
    send(
        "audit consistency",
        "GET",
        f"/v1/audit/proofs/consistency?first={ascii_canary('first')}&second={ascii_canary('second')}",
        headers=operator,
    )
    send(
        "audit export",
        "GET",
        f"/v1/audit/export?subject={ascii_canary('export subject')}",
        headers=operator,
    )
    send(
        "model load",
        "POST",
        f"/v1/admin/models/{ascii_canary('load name')}/versions/"
        f"{ascii_canary('load version')}/load",
        headers=operator,
    )
    send(
        "model load version",
        "POST",
        f"/v1/admin/models/demo-ranker/versions/{ascii_canary('load version 2')}/load",
        headers=operator,
    )
    send(
        "policy reload",
        "POST",
        "/v1/admin/policy/reload",
        json={"path": canary("reload path")},
        headers=operator,
    )

    # -- anything else ----------------------------------------------------------------------------
    send("unknown path", "GET", f"/{ascii_canary('unknown path')}?q={ascii_canary('q')}")
    send("wrong method", "DELETE", "/v1/rank")
    send("health", "GET", f"/healthz?{ascii_canary('health query')}")
    send("jwks", "GET", "/.well-known/jwks.json")
    return statuses


def exercise_grpc(target: str, mint: Callable[..., str], feeds: dict[str, Any]) -> list[str]:
    """The OIP gRPC surface: valid and refused calls with canaries in every field and in
    the call metadata; returns each call's status code name."""
    codes: list[str] = []
    demo = mint("demo")
    with grpc.insecure_channel(target) as channel:
        stub = GRPCInferenceServiceStub(channel)

        def call(method: Callable[..., Any], request: Any, token: str, where: str) -> None:
            metadata = [
                ("authorization", f"Bearer {token}"),
                ("x-request-id", ascii_canary(f"grpc {where} x-request-id")),
                ("user-agent", ascii_canary(f"grpc {where} user-agent")),
                ("x-custom", ascii_canary(f"grpc {where} x-custom")),
            ]
            try:
                method(request, metadata=metadata, timeout=30)
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)

        def infer(where: str, **fields: Any) -> pb.ModelInferRequest:
            request = pb.ModelInferRequest(
                model_name=fields.pop("model_name", "demo-ranker"),
                id=ascii_canary(f"grpc {where} id"),
                **fields,
            )
            request.parameters[ascii_canary(f"grpc {where} param key")].string_param = canary(
                f"grpc {where} param"
            )
            return request

        valid = infer("valid")
        for name, array in feeds.items():
            tensor = valid.inputs.add(name=name, datatype=array["datatype"], shape=array["shape"])
            tensor.contents.bytes_contents.extend(v.encode() for v in array["data"])
        call(stub.ModelInfer, valid, demo, "valid")
        bad = infer("bad tensors")
        bad.inputs.add(name=ascii_canary("grpc input name"), datatype="BYTES", shape=[1])
        bad.inputs[0].contents.bytes_contents.append(canary("grpc bytes").encode())
        call(stub.ModelInfer, bad, demo, "bad tensors")
        call(stub.ModelInfer, infer("model", model_name=path_canary("grpc model")), demo, "model")
        call(stub.ModelInfer, infer("token"), ascii_canary("grpc bearer"), "token")
        meta = pb.ModelMetadataRequest(name=path_canary("grpc meta"), version=path_canary("v"))
        call(stub.ModelMetadata, meta, demo, "metadata")
        ready = pb.ModelReadyRequest(name="demo-ranker", version=path_canary("grpc ready"))
        call(stub.ModelReady, ready, demo, "ready")
    return codes


def test_no_client_value_in_any_log_line(
    settings: Settings,
    initialised: InitReport,
    mint: Callable[..., str],
    forge: Callable[..., str],
    captured: Capture,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    items = list(store.item_ids[:10])
    # OIP's id path (feature provenance), as a default client sends it: the user id a canary
    # (registered by hand: drawing it would shift every later canary's serial and shape).
    user = "Xanthippe Vorobyeva-cnryuser"
    CANARIES[user] = CANARIES["cnryuser"] = "oip user id"
    tensors = [
        {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": [user]},
        {"name": "item_id", "shape": [4], "datatype": "BYTES", "data": items[:4]},
    ]

    def secret(client_id: str) -> str:
        return initialised.client_secrets[client_id].read_text(encoding="utf-8").strip()

    debug = settings.model_copy(update={"log_level": "debug"})
    with grpc_gateway(debug) as (served, app):
        with httpx.Client(base_url=served.url, timeout=30) as http:
            statuses = exercise(http, mint, forge, secret, items, tensors)
        grpc_codes = exercise_grpc(
            f"127.0.0.1:{app.state.grpc_port}", mint, {t["name"]: t for t in tensors}
        )
    out, err = capfd.readouterr()

    # The valid requests went through: the scan covers the success paths too.
    assert statuses["token valid"] == 200
    assert statuses["rank valid"] == 200
    assert statuses["consent put"] == 200
    assert statuses["rank unknown items"] == 422
    assert statuses["oip valid"] == 200
    assert statuses["subject erase"] == 200
    assert grpc_codes[0] == "OK"
    assert "UNAUTHENTICATED" in grpc_codes
    assert statuses["rank with wrong key"] == 401
    assert len(captured.lines) > 30, "the log capture saw (almost) nothing"

    pytest_records = [
        PLAIN.format(r) for r in caplog.records if r.name.split(".")[0] not in CLIENT_SIDE
    ]
    text = "\n".join([*captured.lines, *pytest_records, out, err])
    leaks = sorted({where for value, where in CANARIES.items() if value in text})
    lines = [line for line in text.splitlines() if any(v in line for v in CANARIES)]
    assert not leaks, (
        "client values logged from: " + "; ".join(leaks) + "\n" + "\n".join(lines[:20])
    )
