"""What a suite's audit log holds, read after the fact from the SQLite store: the records
per request id (to find a 2xx without its record, or one request with two), the status
each record carries, and the aggregated refusal records (audit/refusals.py) that account
for anonymous refusals past the refusal budget."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from audit.record import parse
from audit.sqlite_store import SqliteAuditStore

# audit/refusals.py's aggregate: counted anonymous refusals between two request ids.
KIND_REFUSALS = "refusals"
_MS_DIGITS = 12


@dataclass(frozen=True)
class RefusalSpan:
    first_request_id: str
    last_request_id: str
    counted: int

    def covers(self, request_id: str) -> bool:
        # Gateway request ids (gateway.transport) are 12 hex digits of milliseconds, then
        # random ones: ordered by time only to the millisecond, so compare that prefix.
        first, last = self.first_request_id[:_MS_DIGITS], self.last_request_id[:_MS_DIGITS]
        return first <= request_id[:_MS_DIGITS] <= last


@dataclass(frozen=True)
class Ledger:
    records: Counter[str]  # request id -> how many records name it
    statuses: dict[str, int]  # request id -> the status its (last) record carries
    refusals: tuple[RefusalSpan, ...]

    @classmethod
    def read(cls, db: Path) -> Ledger:
        store = SqliteAuditStore(db)
        records: Counter[str] = Counter()
        statuses: dict[str, int] = {}
        spans: list[RefusalSpan] = []
        try:
            for leaf in store.iter_leaves():
                if leaf.payload is None:
                    continue  # purged by retention: none of these suites purges
                record = parse(leaf.payload)
                if record.get("kind") == KIND_REFUSALS:
                    first, last = record.get("first_request_id"), record.get("last_request_id")
                    if isinstance(first, str) and isinstance(last, str):
                        spans.append(RefusalSpan(first, last, int(record.get("counted", 0))))
                    continue
                if leaf.request_id is None:
                    continue  # a state change (policy reload, model load, erasure...)
                records[leaf.request_id] += 1
                status = record.get("status")
                if isinstance(status, int):
                    statuses[leaf.request_id] = status
        finally:
            store.close()
        return cls(records, statuses, tuple(spans))

    def has_record(self, request_id: str) -> bool:
        return self.records[request_id] > 0

    def accounts_for(self, request_id: str) -> bool:
        """Its own record, or an aggregated refusal record whose span holds it."""
        return self.has_record(request_id) or any(s.covers(request_id) for s in self.refusals)

    def unaccounted(self, refused: list[str]) -> list[str]:
        """Of these anonymous refusals, those no record accounts for: not their own, not in
        an aggregate's span, or more of them in the aggregates' spans than they counted."""
        missing = [rid for rid in refused if not self.accounts_for(rid)]
        aggregated = [rid for rid in refused if not self.has_record(rid) and rid not in missing]
        if len(aggregated) > sum(span.counted for span in self.refusals):
            return missing + aggregated
        return missing

    def duplicates(self) -> list[str]:
        return sorted(rid for rid, n in self.records.items() if n > 1)

    def without_record(self, request_ids: list[str]) -> list[str]:
        return [rid for rid in request_ids if not self.has_record(rid)]

    def status_mismatches(self, answered: dict[str, int]) -> list[str]:
        """Request ids whose record carries another status than the client got."""
        return sorted(
            rid
            for rid, status in answered.items()
            if rid in self.statuses and self.statuses[rid] != status
        )


def verify_with_cli(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`gateway audit verify` on a stopped gateway's data directory, as an operator runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "audit",
            "verify",
            "--quiet",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
    )
