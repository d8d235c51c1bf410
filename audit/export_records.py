"""records.jsonl as the exporter writes it: every leaf of the range, in order.

An opened record travels whole, with its personal fields opened (or marked
"erased" or "unreadable"); consecutive leaves the filter does not open, or whose
payload retention deleted, travel as runs of at most RUN_LEAVES hashes, one line
per run. The summary is counted on the way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from audit.bundle_format import RUN_LEAVES, b64_text, json_line
from audit.bundle_summary import Summary
from audit.export_damage import AuditDamaged
from audit.export_filter import ExportFilter
from audit.export_plan import Plan
from audit.log import AuditLog
from audit.store import StoredLeaf
from audit.subjects import SubjectKey, SubjectKeyError, SubjectKeys

__all__ = ["leaf_lines"]


def leaf_lines(
    audit_log: AuditLog, flt: ExportFilter, plan: Plan, summary: Summary
) -> Iterator[bytes]:
    """records.jsonl: every leaf of [start, end) in order; consecutive leaves not opened
    (or purged) as runs of at most RUN_LEAVES hashes, one line each."""
    run = _Run(summary)
    opener = _Opener(audit_log.subjects)
    expected = plan.start
    for leaf in audit_log.store.iter_leaves(plan.start, plan.end):
        if leaf.index != expected:
            # The first pass saw it: the log changed while it was being exported.
            raise AuditDamaged(expected, "missing record", "it vanished during the export")
        expected += 1
        payload = leaf.payload
        key = "purged"
        if payload is not None:
            record: dict[str, Any] = orjson.loads(payload)
            if not flt.narrows or flt.opens(record):
                if run.hashes:
                    yield run.flush()
                personal = opener.personal(record)
                summary.add(record, personal)
                yield json_line(
                    {
                        "index": leaf.index,
                        "leaf_hash": b64_text(leaf.leaf_hash),
                        "record": payload.decode("utf-8"),
                        "personal": personal,
                    }
                )
                continue
            key = "hashes"
        if run.ends_before(key):
            yield run.flush()
        run.add(key, leaf)
    if run.hashes:
        yield run.flush()
    if expected != plan.end:
        raise AuditDamaged(expected, "missing record", "it vanished during the export")


class _Run:
    """Consecutive leaves of one kind ("hashes": not opened, "purged") on their way
    to one line."""

    def __init__(self, summary: Summary) -> None:
        self._summary = summary
        self.hashes: list[bytes] = []
        self._key = ""
        self._start = 0

    def ends_before(self, key: str) -> bool:
        """A leaf of this kind starts a new run: the kind changes, or the run is full."""
        return bool(self.hashes) and (key != self._key or len(self.hashes) == RUN_LEAVES)

    def add(self, key: str, leaf: StoredLeaf) -> None:
        if not self.hashes:
            self._key, self._start = key, leaf.index
        self.hashes.append(leaf.leaf_hash)

    def flush(self) -> bytes:
        """The run's line; the run is empty after it (and counted in the summary)."""
        if self._key == "purged":
            self._summary.add_purged(len(self.hashes))
        else:
            self._summary.add_unopened(len(self.hashes))
        line = json_line({"index": self._start, self._key: b64_text(b"".join(self.hashes))})
        self.hashes.clear()
        return line


class _Opener:
    """The personal fields of sealed records, as `AuditLog.open_record` opens them, with
    each subject's key looked up once per export instead of once per record.

    The export is a snapshot at its checkpoint: an erasure logged while it streams is
    after that checkpoint, and shows in the next export.
    """

    _MAX_KEYS = 4096  # bounded: a log of many subjects only costs a look-up per record

    def __init__(self, subjects: SubjectKeys) -> None:
        self._subjects = subjects
        self._keys: dict[str, SubjectKey | None] = {}

    def personal(self, record: dict[str, Any]) -> object:
        """None (nothing sealed), the opened fields, "erased" or "unreadable"."""
        sealed = record.get("sealed")
        if not isinstance(sealed, dict):
            return None
        pseudonym = str(record.get("subject"))
        if pseudonym in self._keys:
            key = self._keys[pseudonym]
        else:
            try:
                key = self._subjects.by_pseudonym(pseudonym)
            except SubjectKeyError:
                return "unreadable"  # the key exists, but this KEK cannot unwrap it
            if len(self._keys) >= self._MAX_KEYS:
                self._keys.clear()
            self._keys[pseudonym] = key
        if key is None:
            return "erased"
        try:
            return SubjectKeys.unseal(key, str(record.get("request_id")), sealed)
        except SubjectKeyError:
            return "unreadable"
