"""The gateways under test, the attacker's credentials and its HTTP view (`Oracle`).

Two kinds of gateway, one client API (an `httpx.Client`):
- real uvicorn processes (`bench.servers`), for everything that needs no clock;
- the same app in process behind Starlette's `TestClient`, built with a clock the
  bench owns (`create_app(settings, clock=...)`, the seam the tests use), for what
  runs over compressed hours: paced attacks and the benign populations.

Bundles are edited structurally (YAML in, YAML out, then rehashed and signed), so
that new fields other helpers add to the default bundle do not break the bench.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from numpy.typing import NDArray

from bench.adversarial.space import Space
from bench.servers import free_port, gateway_command, gateway_env, wait_ready
from gateway.settings import ClientConfig, Settings, load_settings
from security.issuer import EmbeddedIssuer, load_signing_key

INFER = "/v2/models/demo-ranker/infer"
RANK = "/v1/rank"
# The attacker is granted raw-feature access (issue 16: "to measure the detector itself").
ATTACKER_SCOPES = ("infer", "infer:raw", "rank")
LIFTED_RATE = 1_000_000
LIFTED_ROWS = 1_000_000_000


class RefusedError(Exception):
    """The gateway refused a request (403 block or 429 throttle/budget)."""

    def __init__(self, status: int, kind: str = "") -> None:
        super().__init__(f"{status} {kind}")
        self.status = status
        self.kind = kind


class ExhaustedError(Exception):
    """The attacker's tenant has spent its query allowance (the bench's cap)."""


# -- bundles -----------------------------------------------------------------------------


Edit = Callable[[dict[str, Any]], None]


def lift_limits(data: dict[str, Any]) -> None:
    """Rate limits and query budgets out of the way, whatever their shape: the detector
    alone decides (the bench caps the attacker at its own row allowance per tenant)."""

    def walk(node: Any, kind: str) -> None:
        if isinstance(node, list):
            for entry in node:
                walk(entry, kind)
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if isinstance(value, dict | list):
                walk(value, kind)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                name = str(key)
                if kind == "rate" and ("rps" in name or "rate" in name):
                    node[key] = LIFTED_RATE
                elif kind == "rate" and "burst" in name:
                    node[key] = LIFTED_RATE * 10
                elif kind == "budget" and name.startswith("max"):
                    node[key] = LIFTED_ROWS

    walk(data.get("rate_limits"), "rate")
    walk(data.get("query_budgets"), "budget")


def action(name: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data.setdefault("detection", {})["action"] = name

    return edit


def perturbation(enabled: bool) -> Edit:
    """The keyed score perturbation on or off, where the bundle has the switch."""

    def edit(data: dict[str, Any]) -> None:
        found = data.get("detection", {}).get("perturbation")
        if isinstance(found, dict):
            found["enabled"] = enabled

    return edit


def watermark(enabled: bool) -> Edit:
    """The keyed watermark on or off, where the bundle has it (extraction runs measure it;
    off: the control, a surrogate that must not be accused)."""

    def edit(data: dict[str, Any]) -> None:
        found = data["models"]["demo-ranker"].get("watermark")
        if isinstance(found, dict):
            found["enabled"] = enabled

    return edit


watermark_on = watermark(True)


def has_watermark(data_dir: Path) -> bool:
    data = yaml.safe_load((data_dir / "policy" / "data.yaml").read_text())
    return isinstance(data["models"]["demo-ranker"].get("watermark"), dict)


def has_perturbation(data_dir: Path) -> bool:
    data = yaml.safe_load((data_dir / "policy" / "data.yaml").read_text())
    return isinstance(data.get("detection", {}).get("perturbation"), dict)


def output(**mode: Any) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data["models"]["demo-ranker"]["output"] = dict(mode)

    return edit


def model_setting(key: str, value: Any) -> Edit:
    """Set (or, with None, remove) one field of the demo ranker's model policy."""

    def edit(data: dict[str, Any]) -> None:
        model = data["models"]["demo-ranker"]
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value

    return edit


def make_bundle(data_dir: Path, name: str, edits: list[Edit]) -> Path:
    """A copy of the data dir's bundle with `edits` applied to data.yaml, rehashed, signed."""
    from policies.bundle import rehash
    from policies.signing import sign_bundle

    target = data_dir / f"policy-{name}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(data_dir / "policy", target)
    path = target / "data.yaml"
    data = yaml.safe_load(path.read_text())
    for edit in edits:
        edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (target / "bundle.sig").unlink(missing_ok=True)
    rehash(target)
    key = (data_dir / "keys" / "policy-signing.key").read_text().strip()
    sign_bundle(target, key)
    return target


def shipped_summary(data_dir: Path) -> dict[str, Any]:
    """What the shipped bundle sets that the table depends on."""
    data = yaml.safe_load((data_dir / "policy" / "data.yaml").read_text())
    model = data["models"]["demo-ranker"]
    detection = data.get("detection", {})
    return {
        "output": model.get("output"),
        "inputs": model.get("inputs", "undeclared"),
        "watermark": model.get("watermark", "absent"),
        "perturbation": detection.get("perturbation", "absent"),
        "detection window_seconds": detection.get("window_seconds", "default"),
    }


# -- credentials ---------------------------------------------------------------------------


@dataclass
class Credentials:
    """Mints tokens for made-up clients with the issuer's key: no secret is ever checked,
    and every client may be put in a tenant (the `tenant` claim of the embedded issuer)."""

    issuer: EmbeddedIssuer
    clock: Callable[[], float]
    counter: int = 0

    def token(
        self, tenant: str | None = None, scopes: tuple[str, ...] = ATTACKER_SCOPES
    ) -> Callable[[], str]:
        self.counter += 1
        client = ClientConfig(
            client_id=f"bench-{self.counter}",
            secret_hash="unused",  # noqa: S106
            scopes=scopes,
            tenant=tenant,
        )
        issuer, clock = self.issuer, self.clock
        state: dict[str, Any] = {}

        def current() -> str:
            # Re-minted before it expires: compressed hours outlive a token's 15 minutes.
            now = clock()
            if state.get("until", -1.0) < now + 30:
                state["token"] = issuer.mint(client, scopes)["access_token"]
                state["until"] = now + issuer.settings.token_ttl_s
            token: str = state["token"]
            return token

        return current


# -- the attacker's view -----------------------------------------------------------------


@dataclass
class Tally:
    """One attack run's (one tenant's) account: rows sent, flags, refusals, the cap."""

    cap: int
    rows: int = 0
    requests: int = 0
    first_flag: int | None = None
    flagged_requests: int = 0
    refused: int = 0

    def spend(self, n: int) -> None:
        if self.rows + n > self.cap:
            raise ExhaustedError
        self.rows += n
        self.requests += 1

    def flag(self) -> None:
        self.flagged_requests += 1
        if self.first_flag is None:
            self.first_flag = self.rows


def infer_body(space: Space, x: NDArray[np.float32]) -> dict[str, Any]:
    feeds = space.feeds(x)
    n = len(x)
    return {
        "inputs": [
            {
                "name": "user_id",
                "datatype": "INT64",
                "shape": [n],
                "data": feeds["user_id"].tolist(),
            },
            {
                "name": "item_id",
                "datatype": "INT64",
                "shape": [n],
                "data": feeds["item_id"].tolist(),
            },
            {
                "name": "user_features",
                "datatype": "FP32",
                "shape": [n, 20],
                "data": feeds["user_features"].reshape(-1).tolist(),
            },
            {
                "name": "item_features",
                "datatype": "FP32",
                "shape": [n, 20],
                "data": feeds["item_features"].reshape(-1).tolist(),
            },
        ]
    }


def refusal_kind(response: httpx.Response) -> str:
    try:
        kind = str(response.json().get("type", ""))
    except ValueError:
        kind = ""
    return kind.rsplit(":", 1)[-1] or str(response.status_code)


@dataclass
class Oracle:
    """One credential's view: OIP v2 infer (raw tensors) and /v1/rank over HTTP.

    `sticky`: the first refusal ends the attack (ART attacks cannot go on without an
    answer); otherwise each refused request raises and the caller decides."""

    base: str
    token: Callable[[], str]
    space: Space
    http: httpx.Client
    tally: Tally
    sticky: bool = True
    refused: bool = False
    sent: list[NDArray[np.float32]] | None = None  # every query row, when recording
    stop: Callable[[], None] | None = None  # called before each request (the budget)

    @property
    def queries(self) -> int:
        return self.tally.rows

    @property
    def first_flag(self) -> int | None:
        return self.tally.first_flag

    def scores(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        x = np.atleast_2d(np.clip(x, self.space.lo, self.space.hi)).astype(np.float32)
        return np.concatenate([self._infer(x[i : i + 1000]) for i in range(0, len(x), 1000)])

    def _infer(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        if self.refused:
            raise RefusedError(0, "burned")
        self.tally.spend(len(x))
        if self.sent is not None:
            self.sent.append(x.copy())
        response = self.http.post(
            self.base + INFER,
            json=infer_body(self.space, x),
            headers={"Authorization": f"Bearer {self.token()}"},
        )
        self._verdict(response)
        return np.asarray(response.json()["outputs"][0]["data"], dtype=np.float64)

    def rank(self, user: int, items: list[int]) -> dict[str, Any]:
        """/v1/rank with the demo's string ids: what a service backend calls."""
        self.tally.spend(len(items))
        response = self.http.post(
            self.base + RANK,
            json={"user_id": f"u{user}", "item_ids": [f"i{i}" for i in items]},
            headers={"Authorization": f"Bearer {self.token()}"},
        )
        self._verdict(response)
        body: dict[str, Any] = response.json()
        return body

    def _verdict(self, response: httpx.Response) -> None:
        if response.status_code in (403, 429):
            self.tally.refused += 1
            self.tally.flag()
            self.refused = self.sticky
            raise RefusedError(response.status_code, refusal_kind(response))
        if response.status_code != 200:
            raise SystemExit(f"gateway answered {response.status_code}: {response.text[:300]}")
        if response.headers.get("x-inspection-verdict", "allow") != "allow":
            self.tally.flag()


# -- gateways ------------------------------------------------------------------------------

START_TIMEOUT_S = 300.0  # several gateways starting at once on a busy 2-core machine


@contextmanager
def running(servers: list[tuple[list[str], dict[str, str], str]]) -> Iterator[None]:
    """Start each (command, env, readiness URL); stop them all however the block ends."""
    procs = [subprocess.Popen(command, env=env) for command, env, _ in servers]
    try:
        for _, _, ready_url in servers:
            wait_ready(ready_url, timeout=START_TIMEOUT_S)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


@dataclass
class Fleet:
    """Named gateways (base URLs on one or two HTTP clients) and how to get credentials."""

    space: Space
    bases: dict[str, str] = field(default_factory=dict)
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    credentials: dict[str, Credentials] = field(default_factory=dict)
    clocks: dict[str, list[float]] = field(default_factory=dict)  # in-process only

    def oracle(
        self,
        name: str,
        *,
        tally: Tally | None = None,
        tenant: str | None = None,
        cap: int = LIFTED_ROWS,
        scopes: tuple[str, ...] = ATTACKER_SCOPES,
        **kw: Any,
    ) -> Oracle:
        return Oracle(
            self.bases[name],
            self.credentials[name].token(tenant, scopes),
            self.space,
            self.clients[name],
            tally if tally is not None else Tally(cap),
            **kw,
        )

    def clock(self, name: str) -> list[float]:
        """The in-process gateway's clock (a one-element list the bench advances)."""
        return self.clocks[name]


def settings_for(data_dir: Path, config: Path, bundle: Path, audit_db: Path) -> Settings:
    return load_settings(
        data_dir=data_dir,
        config_file=config,
        dev_mode=True,
        log_level="error",
        policy={"bundle": str(bundle), "watch_interval_s": 0},
        audit={"sqlite_path": str(audit_db)},
        inspection={"expose_verdict": True},
    )


@contextmanager
def fleet(
    space: Space,
    data_dir: Path,
    config: Path,
    processes: dict[str, Path],
    in_process: dict[str, Path],
    start: float,
) -> Iterator[Fleet]:
    """Start `processes` (real uvicorn) and `in_process` apps (clock from `start`)."""
    from fastapi.testclient import TestClient

    from gateway.app import create_app

    settings = load_settings(data_dir=data_dir, config_file=config)
    issuer = EmbeddedIssuer(
        settings.issuer,
        issuer_url=settings.issuer_url,
        signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
    )
    ports = {name: free_port() for name in processes}
    servers = []
    for name, bundle in processes.items():
        env = gateway_env(
            GATEWAY_DEV_MODE="true",
            GATEWAY_LOG_LEVEL="error",  # every flag is a warning line
            GATEWAY_INSPECTION__EXPOSE_VERDICT="true",
            GATEWAY_POLICY__BUNDLE=str(bundle),
            GATEWAY_POLICY__WATCH_INTERVAL_S="0",
            GATEWAY_AUDIT__SQLITE_PATH=str(data_dir / f"audit-{name}.db"),
        )
        # Tokens minted here must validate there: one issuer URL for all.
        env["GATEWAY_ISSUER__ISSUER_URL"] = settings.issuer_url
        servers.append(
            (gateway_command(data_dir, ports[name]), env, f"http://127.0.0.1:{ports[name]}/readyz")
        )
    out = Fleet(space)
    if in_process:
        # In process, the gateway's warnings (one per flagged request) would reach the
        # bench's stderr through logging's last-resort handler: only errors, as served.
        logging.getLogger("gateway").setLevel(logging.ERROR)
    with ExitStack() as stack:
        if servers:
            stack.enter_context(running(servers))
        http = stack.enter_context(httpx.Client(timeout=60))
        for name in processes:
            out.bases[name] = f"http://127.0.0.1:{ports[name]}"
            out.clients[name] = http
            out.credentials[name] = Credentials(issuer, time.time)
        for name, bundle in in_process.items():
            now = [start]
            clock = _reader(now)
            app = create_app(
                settings_for(data_dir, config, bundle, data_dir / f"audit-{name}.db"), clock=clock
            )
            client: Any = stack.enter_context(TestClient(app))
            out.bases[name] = ""
            out.clients[name] = client
            out.credentials[name] = Credentials(app.state.components.issuer, clock)
            out.clocks[name] = now
        yield out


def _reader(now: list[float]) -> Callable[[], float]:
    """The clock of an in-process gateway: whatever time the bench has set."""
    return lambda: now[0]


def detector_quantiles(fleet: Fleet, name: str) -> dict[str, float]:
    """From the gateway's own histogram (`gateway_inspection_detector_seconds`): requests
    inspected, the bucket holding the median (seconds) and the share within 0.2 ms."""
    text = fleet.clients[name].get(fleet.bases[name] + "/metrics").text
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("gateway_inspection_detector_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return {}
    p50 = next(le for le, n in buckets if n >= total / 2)
    within = max((n for le, n in buckets if le <= 0.0002 + 1e-12), default=0.0)
    return {"requests": total, "p50_bucket_s": p50, "within_0.2ms": within / total}
