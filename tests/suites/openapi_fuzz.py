"""schemathesis' own CLI (`st run --checks all`) against the OpenAPI document the real
gateway serves (/openapi.json), once per token plan (`token_plans`): no token; a token of
every scope; each operation with a token of exactly its own scope (which must suffice);
each operation with a token of every scope but its own (which must be refused: any 2xx
of a secured operation in that run is a failure, counted from the wire).

Every check runs: not_a_server_error, the conformance checks (status code, content type,
response headers, response schema), negative_data_rejection, positive_data_acceptance,
missing_required_header, unsupported_method and allow_header_conformance (405 with a
complete `Allow`, OPTIONS), ignored_auth (each 2xx is replayed without and with a bad
token), use_after_free, ensure_resource_availability, object_level_authorization.

One documented exception (`STATE_DEPENDENT`, written to the run's schemathesis.toml):
positive_data_acceptance may see 422 (400 for OIP tensors) on the operations whose
acceptance of a schema-valid request depends on server state or a cross-field rule no
JSON Schema states (an item id must be in the catalogue, a proof's size must not exceed
the log's). Every other check still applies to those operations, and to every status.

The statuses of every request come from schemathesis' HAR report, so "no 5xx" is counted
from what went over the wire, not only from the checks' verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.pipeline import ACTION_SCOPES
from gateway.settings import Settings
from tests.suites.servers import HealthProbe, mint

SCOPES = tuple(sorted(set(ACTION_SCOPES.values())))
ALL_PHASES = ("examples", "coverage", "fuzzing", "stateful")
# The statuses schemathesis accepts for schema-valid data by default.
_POSITIVE = ("2xx", "3xx", "401", "403", "404", "409", "429")
STATE_DEPENDENT: Mapping[str, tuple[tuple[int, ...], str]] = {
    "POST /v1/rank": ((422,), "item ids must be in the served catalogue"),
    "POST /v2/models/{name}/infer": (
        (400, 422),
        "tensors must fit the model's signature; data or binary_data_size",
    ),
    "POST /v2/models/{name}/versions/{version}/infer": (
        (400, 422),
        "tensors must fit the model's signature; data or binary_data_size",
    ),
    "GET /v1/audit/proofs/inclusion": ((422,), "exactly one of request_id and index"),
    "GET /v1/audit/proofs/consistency": ((422,), "first <= second <= the log's size"),
    "GET /v1/audit/export": ((422,), "from must not be after to"),
    "POST /v1/admin/models/{name}/versions/{version}/load": (
        (422,),
        "only a package on disk that passes every loader check loads",
    ),
    "PUT /v1/subjects/{subject_id}/consent": ((422,), "each purpose at most once"),
}


@dataclass(frozen=True)
class TokenPlan:
    """Which bearer token each operation is called with in one `st run`: `default` for
    all, or per operation (`per_operation`, by schemathesis label; None: no token)."""

    name: str
    default: str | None = None
    per_operation: Mapping[str, str | None] = field(default_factory=dict)
    # Any 2xx of a secured operation in this run is a failure: the token lacks the scope.
    must_refuse: bool = False


def _scope_of(operation: Mapping[str, Any]) -> str | None:
    security = operation.get("security") or []
    return security[0]["oauth2"][0] if security else None


def token_plans(settings: Settings, document: Mapping[str, Any]) -> list[TokenPlan]:
    """No token; every scope; each operation with a token of exactly its own scope (it must
    suffice); each with a token of every scope but its own (it must be refused, 403)."""
    every = mint(settings, "operator", SCOPES)
    own = {scope: mint(settings, "operator", (scope,)) for scope in SCOPES}
    others = {
        scope: mint(settings, "operator", tuple(s for s in SCOPES if s != scope))
        for scope in SCOPES
    }
    own_plan: dict[str, str | None] = {}
    other_plan: dict[str, str | None] = {}
    for label, operation in operations_of(document).items():
        scope = _scope_of(operation)
        own_plan[label] = own[scope] if scope else None
        other_plan[label] = others[scope] if scope else None
    return [
        TokenPlan("anonymous"),
        TokenPlan("every-scope", default=every),
        TokenPlan("own-scope", per_operation=own_plan),
        TokenPlan("other-scopes", per_operation=other_plan, must_refuse=True),
    ]


def operations_of(document: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """schemathesis' label ("METHOD /path") -> the operation, for every operation."""
    return {
        f"{method.upper()} {path}": operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def config_toml(document: Mapping[str, Any], plan: TokenPlan) -> str:
    """One run's schemathesis.toml: per operation, its token (`plan`) and, for
    `STATE_DEPENDENT` operations, the statuses positive_data_acceptance accepts."""
    lines: list[str] = []
    for label in operations_of(document):
        entry: list[str] = []
        if label in plan.per_operation and plan.per_operation[label] is not None:
            token = f"Bearer {plan.per_operation[label]}"
            entry.append(f"headers = {{ Authorization = {_toml(token)} }}")
        if label in STATE_DEPENDENT:
            statuses, reason = STATE_DEPENDENT[label]
            expected = ", ".join(_toml(s) for s in (*_POSITIVE, *map(str, statuses)))
            entry += [
                f"# {reason}",
                f"checks.positive_data_acceptance.expected-statuses = [{expected}]",
            ]
        if entry:
            lines += ["[[operations]]", f"include-name = {_toml(label)}", *entry, ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Failure:
    token: str
    code: str
    title: str
    operations: tuple[str, ...]


@dataclass
class FuzzRun:
    operations: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)  # token -> st's exit status
    health_worst_ms: float = float("nan")
    health_p99_ms: float = float("nan")

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def _st_command(
    config: Path, url: str, out: Path, token: str | None, *, max_examples: int,
    seed_value: int, phases: Sequence[str],
) -> list[str]:  # fmt: skip
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{url}/openapi.json", "--checks", "all", "--phases", ",".join(phases),
        "--max-examples", str(max_examples), "--seed", str(seed_value), "--workers", "1",
        "--warnings", "off", "--generation-database", "none", "--request-timeout", "30",
        "--report", "json,har", "--report-json-path", str(out / "report.json"),
        "--report-har-path", str(out / "requests.har"),
    ]  # fmt: skip
    if token is not None:
        command += ["--header", f"Authorization: Bearer {token}"]
    return command


def _read_run(run: FuzzRun, plan: TokenPlan, out: Path, open_paths: set[str]) -> None:
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    run.operations = max(run.operations, int(report["operations"]["tested"]))
    for failure in report["failures"]:
        run.failures.append(
            Failure(plan.name, failure["code"], failure["title"], tuple(failure["operations"]))
        )
    run.errors += [f"{plan.name}: {error}" for error in report["errors"]]
    har: dict[str, Any] = json.loads((out / "requests.har").read_text())
    served: set[str] = set()
    for entry in har["log"]["entries"]:
        status = int(entry["response"]["status"])
        run.requests += 1
        run.statuses[status] += 1
        path = urlsplit(entry["request"]["url"]).path
        method = entry["request"]["method"]
        # OPTIONS (the Allow probe) names the path's methods to anyone; it serves nothing.
        secured = path not in open_paths and method != "OPTIONS"
        if plan.must_refuse and secured and 200 <= status < 300:
            served.add(f"{method} {path}")
    if served:
        run.failures.append(
            Failure(plan.name, "scope", "served without its scope", tuple(sorted(served)))
        )


def run_fuzz(
    base_url: str,
    plans: Sequence[TokenPlan],
    work: Path,
    *,
    max_examples: int,
    seed_value: int = 0,
    phases: Mapping[str, Sequence[str]] | None = None,
) -> FuzzRun:
    """`st run --checks all` once per token plan (`phases[plan]`, else every phase), each
    operation `max_examples` generated cases per phase, seeded (the same cases for one
    seed). Reports and each run's config land under `work`."""
    run = FuzzRun()
    document = served_document(base_url)
    open_paths = {
        path
        for path, operations in document["paths"].items()
        if all(not op.get("security") for op in operations.values())
    }
    with HealthProbe(base_url) as probe:
        for plan in plans:
            out = work / plan.name
            out.mkdir(parents=True, exist_ok=True)
            config = out / "schemathesis.toml"
            config.write_text(config_toml(document, plan))
            command = _st_command(
                config, base_url, out, plan.default, max_examples=max_examples,
                seed_value=seed_value, phases=(phases or {}).get(plan.name, ALL_PHASES),
            )  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            run.runs[plan.name] = done.returncode
            if not (out / "report.json").exists():
                run.errors.append(
                    f"{plan.name}: st exited {done.returncode}: {done.stderr[-2000:]}"
                )
                continue
            _read_run(run, plan, out, open_paths)
    run.health_worst_ms = probe.worst_ms
    run.health_p99_ms = probe.p99_ms
    return run


def served_document(base_url: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{base_url}/openapi.json", timeout=10).json()
    return document
