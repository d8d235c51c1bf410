"""Runs the JWT attack catalogue (tests/suites/jwt_catalogue.py) against a real gateway
on 127.0.0.1 (the production server config, real keys, a real audit log), then stops it
(flushing aggregated refusal records) and reads its log: what each case was answered,
why the server refused it (its log line, never shown to the client), and whether a
record accounts for it."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.security._servers import serve
from tests.suites.jws import ec_jwk, jws
from tests.suites.jwt_catalogue import (
    ATTACKS,
    CONTROLS,
    IDP_FILE,
    IDP_URL,
    RANK,
    RANK_BODY,
    ROTATION_EXPECTED,
    TRANSPORT_CASES,
    Kit,
    bearer,
)
from tests.suites.ledger import Ledger
from tests.suites.servers import DataDir, HealthProbe, threaded_gateway

INVALID_CHALLENGE = 'Bearer realm="gateway", error="invalid_token"'
THE_401_BODY = {
    "type": "urn:gateway:problem:invalid-token",
    "title": "Missing or invalid bearer token",
    "status": 401,
}
# A case answered in more than this is a finding too (kid "|sleep 5", huge tokens).
SLOW_S = 2.0


# --- running it ----------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    request_id: str | None
    challenge: str | None
    content_type: str | None
    cache_control: str | None
    body: Any
    seconds: float
    causes: list[str] = field(default_factory=list)


@dataclass
class CatalogueRun:
    attacks: dict[str, Answer]
    controls: dict[str, Answer]
    transport: dict[str, int]
    rotation: dict[str, Answer]
    ledger: Ledger
    health_worst_ms: float
    health_p99_ms: float

    def failures(self) -> dict[str, str]:
        """Every case that did not get what it must, with why (empty: all held)."""
        found: dict[str, str] = {}
        for attack in ATTACKS:
            problem = refusal_problem(self.attacks[attack.name], attack.cause, self.ledger)
            if problem:
                found[attack.name] = problem
        for name, answer in self.controls.items():
            if answer.status != 200:
                found[f"control:{name}"] = f"status {answer.status}"
        for case in TRANSPORT_CASES:
            if self.transport[case.name] != case.status:
                found[case.name] = f"status {self.transport[case.name]}, expected {case.status}"
        for name, expected in ROTATION_EXPECTED.items():
            answer = self.rotation[name]
            if answer.status != expected:
                found[f"rotation:{name}"] = f"status {answer.status}, expected {expected}"
            elif expected == 401:
                problem = refusal_problem(answer, "", self.ledger)
                if problem:
                    found[f"rotation:{name}"] = problem
        unaccounted = self.ledger.unaccounted(self.refused_ids())
        if unaccounted:
            found["audit:refusals"] = f"{len(unaccounted)} refusals no record accounts for"
        return found

    def refused_ids(self) -> list[str]:
        answers = [*self.attacks.values(), *self.controls.values(), *self.rotation.values()]
        return [a.request_id for a in answers if a.status == 401 and a.request_id is not None]

    @property
    def cases(self) -> int:
        return len(self.attacks) + len(self.controls) + len(self.transport) + len(self.rotation)

    @property
    def server_errors(self) -> int:
        answers = [*self.attacks.values(), *self.controls.values(), *self.rotation.values()]
        statuses = [a.status for a in answers] + list(self.transport.values())
        return sum(1 for s in statuses if s >= 500)


def refusal_problem(answer: Answer, cause: str, ledger: Ledger) -> str | None:
    """Why `answer` is not the one 401 answer of RFC 6750, on record; None if it is."""
    if answer.status != 401:
        return f"status {answer.status}"
    if answer.challenge != INVALID_CHALLENGE:
        return f"WWW-Authenticate {answer.challenge!r}"
    if answer.content_type != "application/problem+json" or answer.cache_control != "no-store":
        return f"headers {answer.content_type!r} {answer.cache_control!r}"
    body = dict(answer.body) if isinstance(answer.body, dict) else answer.body
    if (
        not isinstance(body, dict)
        or body.pop("instance", None) != f"urn:request:{answer.request_id}"
    ):
        return f"body {answer.body!r}"
    if body != THE_401_BODY:
        return f"body {answer.body!r}"
    if answer.request_id is None or not ledger.accounts_for(answer.request_id):
        return "no audit record accounts for it"
    if len(answer.causes) != 1 or cause not in answer.causes[0]:
        return f"refused for another reason: {answer.causes!r}"
    if answer.seconds > SLOW_S:
        return f"answered in {answer.seconds:.1f} s"
    return None


class _Causes(logging.Handler):
    """The server's refusal log lines, by request id (never shown to the client)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lock_lines = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_lines:
            self.lines.append(record.getMessage())

    def about(self, request_id: str | None) -> list[str]:
        if request_id is None:
            return []
        with self._lock_lines:
            return [line for line in self.lines if request_id in line]


@contextmanager
def _capturing_causes() -> Iterator[_Causes]:
    handler = _Causes()
    logger = logging.getLogger("gateway.errors")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _ask(client: httpx.Client, authorization: str) -> Answer:
    started = time.perf_counter()
    response = client.post(RANK, json=RANK_BODY, headers={"Authorization": authorization})
    seconds = time.perf_counter() - started
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return Answer(
        status=response.status_code,
        request_id=response.headers.get("x-request-id"),
        challenge=response.headers.get("www-authenticate"),
        content_type=response.headers.get("content-type"),
        cache_control=response.headers.get("cache-control"),
        body=body,
        seconds=seconds,
    )


def _raw_status(base_url: str, request: bytes) -> int:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return 0  # closed without an answer
            head += chunk
    return int(head.split(b" ", 2)[1])


class _JwksServer:
    def __init__(self, keys: list[dict[str, str]]) -> None:
        self.keys = keys

    async def jwks(self, request: Request) -> JSONResponse:
        return JSONResponse({"keys": self.keys})


def _es256(k: Kit, key: ec.EllipticCurvePrivateKey, kid: str, jti: str) -> str:
    head = {"alg": "ES256", "kid": kid, "typ": "at+jwt"}
    return bearer(jws(head, k.idp_claims(iss=IDP_URL, jti=jti), key))


def _rotation(
    client: httpx.Client, k: Kit, jwks: _JwksServer, jwks_file: Path, ttl_s: float
) -> dict[str, Answer]:
    seen = _es256(k, k.url_old, k.URL_OLD_KID, "seen")
    answers = {"url-old-key-before-rotation": _ask(client, seen)}
    jwks.keys = [ec_jwk(k.url_new, k.URL_NEW_KID)]
    time.sleep(ttl_s + 0.2)  # the gateway's JWKS cache may keep the old set this long
    answers["url-new-key-after-rotation"] = _ask(client, _es256(k, k.url_new, k.URL_NEW_KID, "new"))
    answers["url-old-key-never-seen-after-rotation"] = _ask(
        client, _es256(k, k.url_old, k.URL_OLD_KID, "fresh")
    )
    answers["url-old-key-seen-before-after-rotation"] = _ask(client, seen)

    def rsa_token(jti: str) -> str:
        head = {"alg": "RS256", "kid": k.IDP_RSA_KID, "typ": "at+jwt"}
        return bearer(jws(head, k.idp_claims(jti=jti), k.idp_rsa))

    answers["file-old-key-before-rotation"] = _ask(client, rsa_token("file-seen"))
    # The operator takes the RSA key out of the file; the EC key stays.
    rotated = {"keys": [key for key in k.file_jwks()["keys"] if key["kid"] != k.IDP_RSA_KID]}
    jwks_file.write_text(json.dumps(rotated))
    time.sleep(0.05)
    answers["file-old-key-never-seen-after-rotation"] = _ask(client, rsa_token("file-fresh"))
    return answers


def run_catalogue(data_dir: DataDir, *, rounds: int = 1) -> CatalogueRun:
    """Serve a gateway on `data_dir`, send every case `rounds` times (the last round's
    answers are kept), stop it (flushing aggregated refusal records), read its log."""
    base = data_dir.settings()
    kit = Kit.for_settings(base)
    jwks_file = data_dir.path / "idp-jwks.json"
    jwks_file.write_text(json.dumps(kit.file_jwks()))
    jwks = _JwksServer([ec_jwk(kit.url_old, kit.URL_OLD_KID)])
    ttl_s = 1.0
    with serve(Starlette(routes=[Route("/jwks.json", jwks.jwks)])) as idp:
        settings = data_dir.settings(
            auth={
                "jwks_cache_ttl_s": ttl_s,
                "jwks_min_refresh_interval_s": 0,
                "trusted_issuers": [
                    {
                        "issuer": IDP_FILE,
                        "audiences": [kit.aud],
                        "jwks_file": str(jwks_file),
                        "algorithms": ["RS256", "ES256"],
                        "required_typ": "at+jwt",
                        "tenant_claim": "tenant",
                    },
                    {
                        "issuer": IDP_URL,
                        "audiences": [kit.aud],
                        "jwks_url": f"{idp.url}/jwks.json",
                        "algorithms": ["ES256"],
                        "required_typ": "at+jwt",
                    },
                ],
            }
        )
        with (
            _capturing_causes() as causes,
            threaded_gateway(settings) as url,
            HealthProbe(url) as probe,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            attacks: dict[str, Answer] = {}
            controls: dict[str, Answer] = {}
            for _ in range(rounds):
                for name, build in CONTROLS:
                    controls[name] = _ask(client, build(kit))
                for attack in ATTACKS:
                    attacks[attack.name] = _ask(client, attack.build(kit))
            transport = {case.name: _raw_status(url, case.request(kit)) for case in TRANSPORT_CASES}
            rotation = _rotation(client, kit, jwks, jwks_file, ttl_s)
            for answer in [*attacks.values(), *rotation.values()]:
                answer.causes = causes.about(answer.request_id)
    return CatalogueRun(
        attacks=attacks,
        controls=controls,
        transport=transport,
        rotation=rotation,
        ledger=Ledger.read(data_dir.audit_db),
        health_worst_ms=probe.worst_ms,
        health_p99_ms=probe.p99_ms,
    )
