"""A bundle's summary (summary.json, summary.txt): counts over its records.

The exporter writes it and the verifier recomputes it with this one class, so
the two count with one definition.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["Summary", "render_summary"]

_NONE = "(none)"


class Summary:
    """Counts over a bundle's records; the exporter writes them, the verifier recomputes them."""

    def __init__(self) -> None:
        self.records = 0
        self.purged = 0
        self.erased = 0
        self.unopened = 0
        self.first_ts_ms: int | None = None
        self.last_ts_ms: int | None = None
        self.by_kind: Counter[str] = Counter()
        self.by_decision: Counter[str] = Counter()
        self.by_route: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_client: Counter[str] = Counter()
        self.by_refusal: Counter[str] = Counter()
        self.by_pii_type: Counter[str] = Counter()

    def add_purged(self, count: int = 1) -> None:
        self.records += count
        self.purged += count

    def add_unopened(self, count: int) -> None:
        self.unopened += count

    def add(self, record: dict[str, Any], personal: object) -> None:
        # Called once per opened record by exporter and verifier alike: kept lean.
        self.records += 1
        if personal == "erased":
            self.erased += 1
        ts = record.get("ts_ms")
        if type(ts) is int:
            self._stamped(ts)
        kind = str(record.get("kind"))
        self.by_kind[kind] += 1
        if kind == "request":
            self._request(record)

    def _stamped(self, ts: int) -> None:
        if self.first_ts_ms is None or ts < self.first_ts_ms:
            self.first_ts_ms = ts
        if self.last_ts_ms is None or ts > self.last_ts_ms:
            self.last_ts_ms = ts

    def _request(self, record: dict[str, Any]) -> None:
        decision = str(record.get("decision"))
        self.by_decision[decision] += 1
        self.by_route[_name(record.get("route"))] += 1
        self.by_client[_name(record.get("client_id"))] += 1
        model = record.get("model")
        if type(model) is dict:
            self.by_model[f"{model.get('name')}@{model.get('version')}"] += 1
        else:
            self.by_model[_NONE] += 1
        if decision != "allow":
            self.by_refusal[_name(record.get("outcome"))] += 1
        self._pii(record.get("pii"))

    def _pii(self, pii: object) -> None:
        # "pii" stays null until the redaction stage fills it with counts per
        # entity type; a list of entity names counts one each.
        if isinstance(pii, dict):
            for entity, count in pii.items():
                if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                    self.by_pii_type[str(entity)] += count
        elif isinstance(pii, list):
            for entity in pii:
                self.by_pii_type[str(entity)] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "purged": self.purged,
            "erased": self.erased,
            "unopened": self.unopened,
            "time_range": {"first_ts_ms": self.first_ts_ms, "last_ts_ms": self.last_ts_ms},
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_decision": dict(sorted(self.by_decision.items())),
            "by_route": dict(sorted(self.by_route.items())),
            "by_model": dict(sorted(self.by_model.items())),
            "by_client": dict(sorted(self.by_client.items())),
            "by_refusal": dict(sorted(self.by_refusal.items())),
            "by_pii_type": dict(sorted(self.by_pii_type.items())),
        }


def _name(value: object) -> str:
    if type(value) is str:
        return value
    return _NONE if value is None else str(value)


_SECTIONS = (
    ("by_kind", "Records by kind"),
    ("by_decision", "Requests by decision"),
    ("by_route", "Requests by route"),
    ("by_model", "Requests by model"),
    ("by_client", "Requests by client"),
    ("by_refusal", "Refused requests by reason"),
    ("by_pii_type", "Personal data by entity type"),
)


def render_summary(
    summary: dict[str, Any],
    *,
    origin: str,
    checkpoint_size: int,
    filter_: dict[str, Any],
    start: int,
    end: int,
) -> str:
    """summary.txt: the same counts for a human; deterministic, so the verifier compares bytes."""
    span = f"records {start}..{end - 1}" if end > start else f"none (empty range at {start})"
    tenant = filter_["tenant"] or ("(none)" if filter_["tenant_scoped"] else "any")
    lines = [
        "Audit export summary",
        f"Log origin:        {origin}",
        f"Checkpoint size:   {checkpoint_size}",
        f"Range (complete):  {span}; every leaf of it is in this bundle",
        f"Filter:            ts_ms in [{filter_['from_ms']}, {filter_['to_ms']})"
        f", client {filter_['client_id'] or 'any'}, subject {filter_['subject'] or 'any'}"
        f", tenant {tenant}",
        f"Records:           {summary['records']}",
        f"  purged (hash only, payload deleted by retention): {summary['purged']}",
        f"  erased subject (personal fields destroyed):        {summary['erased']}",
        f"Not selected by the filter (hash only):              {summary['unopened']}",
        f"First record ts_ms: {summary['time_range']['first_ts_ms']}",
        f"Last record ts_ms:  {summary['time_range']['last_ts_ms']}",
    ]
    for key, title in _SECTIONS:
        lines.append("")
        lines.append(f"{title}:")
        counts: dict[str, int] = summary[key]
        if not counts:
            lines.append("  (none)")
        width = max((len(name) for name in counts), default=0)
        lines.extend(f"  {name.ljust(width)}  {count}" for name, count in counts.items())
    return "\n".join(lines) + "\n"
