"""Guardrails per arm: error rate, p99 latency and detector flag rate of its rankings.

The counts come from the audit log, which has one record per ranking with its status,
latency, stage 5's verdict and the arm (model version and variant). They are folded in
incrementally: the event store keeps, per model, the audit index read up to and each
arm's counts, so a report reads only the records appended since the last one. A
ranking that failed before stage 6 named its arm cannot be put on an arm, and is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from audit import AuditLog, RecordError, parse
from models.experiments.store import ArmHealth, ArmKey, EventStore
from policies import Guardrails

# Verdicts of stage 5 that count as a detector flag.
FLAGGED = frozenset({"flag", "throttle", "block"})


def fold_audit(store: EventStore, audit_log: AuditLog, model: str) -> dict[ArmKey, ArmHealth]:
    """Read the audit records appended since the last call into the arms' counts. Blocking."""
    start, arms = store.health(model)
    end = audit_log.store.size()
    if end <= start:
        return arms
    for leaf in audit_log.store.iter_leaves(start, end):
        if leaf.payload is None:
            continue  # purged past retention
        try:
            record = parse(leaf.payload)
        except RecordError:
            continue
        arm = _arm_of(record, model)
        if arm is None:
            continue
        inspection = record.get("inspection") or {}
        verdict = inspection.get("verdict") if isinstance(inspection, dict) else None
        arms.setdefault(arm, ArmHealth()).observe(
            error=int(record.get("status") or 0) >= 500,
            flagged=verdict in FLAGGED,
            latency_ms=int(record.get("latency_us") or 0) / 1000.0,
        )
    store.save_health(model, end, arms)
    return arms


def _arm_of(record: Mapping[str, Any], model: str) -> ArmKey | None:
    served = record.get("model")
    if record.get("kind") != "request" or record.get("action") != "rank":
        return None
    if not isinstance(served, dict) or served.get("name") != model:
        return None
    return ArmKey(model, str(served.get("version")), str(served.get("variant") or "-"))


@dataclass(frozen=True, slots=True)
class GuardrailCheck:
    name: str  # error_rate | p99_ms | flag_rate
    value: float | None
    limit: float | None
    breached: bool


def check(health: ArmHealth, limits: Guardrails) -> list[GuardrailCheck]:
    """Each guardrail of one arm; none is breached before `min_requests` rankings."""
    judged = health.served >= limits.min_requests
    served = max(1, health.served)
    values: list[tuple[str, float | None, float | None]] = [
        ("error_rate", health.errors / served if health.served else None, limits.max_error_rate),
        ("p99_ms", health.p99_ms(), limits.max_p99_ms),
        ("flag_rate", health.flagged / served if health.served else None, limits.max_flag_rate),
    ]
    return [
        GuardrailCheck(
            name,
            value,
            limit,
            judged and value is not None and limit is not None and value > limit,
        )
        for name, value, limit in values
    ]
