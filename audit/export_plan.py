"""The export's first pass: the range [a, b) a bundle covers, and is every leaf of it sound.

`Survey` finds where the range starts and ends (`audit.export` describes the
rule), reads every leaf from a-1 to b once (each payload against its leaf hash,
its time against the row's), rebuilds the signed root from the leaves and the
stored compact ranges either side, and collects what the bundle carries besides
the range's leaves: the boundary leaves and signed purges with their inclusion
proofs, and the milestones. The result is a `Plan` the zip is streamed from.
Damage is raised as `AuditDamaged`, narrowed down first (`audit.export_damage`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from audit.bundle_format import b64_text
from audit.export_damage import AuditDamaged, diagnose, localize
from audit.export_filter import ExportFilter
from audit.export_purges import Purges
from audit.export_tree import Carried, StoredTree
from audit.log import AuditLog
from audit.merkle import Frontier, leaf_hash, range_nodes
from audit.record import RECORD_VERSION, canonical
from audit.store import StoredCheckpoint, StoredLeaf

__all__ = ["Plan", "Survey"]

# How far back a filtered export reads at a time, looking for a boundary it may show.
_BACK_PAGE = 5_000


@dataclass(frozen=True)
class Plan:
    checkpoint: StoredCheckpoint
    start: int
    end: int
    left: list[bytes]
    right: list[bytes]
    before: Carried | None
    after: Carried | None
    purges: list[Carried]
    milestones: list[bytes]

    def range_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "size": self.checkpoint.size,
            "left": [b64_text(h) for h in self.left],
            "right": [b64_text(h) for h in self.right],
            "before": None if self.before is None else self.before.as_json(),
            "after": None if self.after is None else self.after.as_json(),
            "milestones": [note.decode("utf-8") for note in self.milestones],
        }


class Survey:
    """The first pass over the range: where it starts and ends, and is every leaf sound."""

    def __init__(
        self,
        audit_log: AuditLog,
        flt: ExportFilter,
        checkpoint: StoredCheckpoint,
        *,
        may_renew: bool,
    ) -> None:
        self._log = audit_log
        self._store = audit_log.store
        self._flt = flt
        self._cp = checkpoint
        self._size = checkpoint.size
        self._stored = StoredTree(audit_log, checkpoint)
        self._purges = Purges(audit_log, checkpoint, flt.from_ms, may_renew=may_renew)

    def run(self) -> Plan:
        try:
            return self._run()
        except AuditDamaged as found:
            raise diagnose(self._log, found, found.index) from None

    def _run(self) -> Plan:
        self._check_head()
        start = self._start()
        left = self._stored.compact(0, start)
        tree = Frontier(start, left)
        before, end, after = self._scan(start, tree)
        right = self._stored.compact(end, self._size)
        for (level, _), subtree in zip(range_nodes(end, self._size), right, strict=True):
            tree.append_subtree(level, subtree)
        if tree.root() != self._cp.root:
            raise localize(self._log, self._size, start, end, left, right)
        purges = self._purges.carried(start, end, before)
        return Plan(
            checkpoint=self._cp,
            start=start,
            end=end,
            left=left,
            right=right,
            before=None if before is None else self._stored.carry(before),
            after=None if after is None else self._stored.carry(after),
            purges=[self._stored.carry(self._stored.leaf(p.index)) for p in purges],
            milestones=self._stored.milestones(start, end),
        )

    # -- the head, and where the range starts ------------------------------------

    def _check_head(self) -> None:
        head = self._store.size()
        if head < self._size:
            detail = f"the head says {head} records, checkpoint {self._size} signed {self._size}"
            raise AuditDamaged(head, "truncated log", detail)
        highest = self._store.max_index()
        if highest is not None and highest >= head:
            detail = f"records lie past the head ({head}), up to {highest}"
            raise AuditDamaged(head, "inserted record", detail)

    def _start(self) -> int:
        """a: the first leaf stamped at or after `from`, moved earlier while the leaf
        before it cannot be shown: a record the filter does not open (a bundle never
        opens another client's, subject's or tenant's record, not even as a boundary),
        or a purged leaf no signed purge puts before `from`."""
        start = self._size
        for leaf in self._store.leaves_between(self._flt.from_ms, 2**62):
            start = min(leaf.index, self._size)
            break
        while start > 0:
            leaf = self._stored.leaf(start - 1)
            if leaf.payload is not None:
                if not self._flt.narrows or self._opens(leaf):
                    return start
                start = self._shown_before(start)
                continue
            if self._purges.justifying(start) is not None:
                return start
            # Back to the watermark of a purge whose cutoff is no later than `from`: the
            # leaf before it is covered by that purge, so it is older than `from`.
            start = self._purges.back_to(start)
        return start

    def _opens(self, leaf: StoredLeaf) -> bool:
        """The filter opens this leaf's record (one the scan has not checked yet: damage
        it hides shows when the scan reaches it, as part of the range)."""
        try:
            record = orjson.loads(leaf.payload or b"")
        except orjson.JSONDecodeError:
            return False
        return isinstance(record, dict) and self._flt.opens(record)

    def _shown_before(self, start: int) -> int:
        """One past the last leaf below `start` that may bound the range (purged, or a
        record the filter opens); 0 if none. Reads back a page at a time."""
        high = start - 1
        while high > 0:
            low = max(0, high - _BACK_PAGE)
            shown = [
                leaf.index
                for leaf in self._store.iter_leaves(low, high)
                if leaf.payload is None or self._opens(leaf)
            ]
            if shown:
                return shown[-1] + 1
            high = low
        return 0

    # -- the scan ---------------------------------------------------------------

    def _scan(self, start: int, tree: Frontier) -> tuple[StoredLeaf | None, int, StoredLeaf | None]:
        """Every leaf from start-1 to b, in order: returns (before, b, after)."""
        flt, size = self._flt, self._size
        low = max(start - 1, 0)
        expected = low
        before: StoredLeaf | None = None
        for leaf in self._store.iter_leaves(low, size):
            index = leaf.index
            if index != expected:
                raise AuditDamaged(expected, "missing record", f"found index {index} next")
            expected += 1
            payload = leaf.payload
            if payload is None:
                if index < start:
                    before = leaf
                    continue
                self._purges.note_purged(index)
            else:
                record = self._record(leaf, payload)
                if index < start:
                    if record["ts_ms"] >= flt.from_ms:
                        # Only a range moved back to a purge's watermark gets here.
                        detail = "below a signed purge's watermark, but younger than its cutoff"
                        raise AuditDamaged(index, "retention", detail)
                    before = leaf
                    continue
                if record["ts_ms"] >= flt.to_ms and (not flt.narrows or flt.opens(record)):
                    return before, index, leaf
                self._check_written(index, record, payload)
            tree.extend((leaf.leaf_hash,))
        if expected < size:
            detail = f"the leaves end at {expected - 1}; checkpoint {size} signed {size}"
            raise AuditDamaged(expected, "missing record", detail)
        return before, size, None

    def _check_written(self, index: int, record: dict[str, Any], payload: bytes) -> None:
        """What the stream opens must be a record the gateway wrote."""
        if self._flt.opens(record) and (
            record.get("v") != RECORD_VERSION or canonical(record) != payload
        ):
            detail = "not a canonical audit record of a supported version"
            raise AuditDamaged(index, "altered record", detail)

    def _record(self, leaf: StoredLeaf, payload: bytes) -> dict[str, Any]:
        """The record of a leaf: its payload must hash to the leaf hash, its time be the row's."""
        if not hmac.compare_digest(leaf_hash(payload), leaf.leaf_hash):
            detail = "payload does not match its leaf hash"
            raise AuditDamaged(leaf.index, "altered record", detail)
        try:
            record = orjson.loads(payload)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("ts_ms"), int):
            raise AuditDamaged(leaf.index, "altered record", "not a valid audit record")
        if record["ts_ms"] != leaf.ts_ms:
            # The row's time is what finds ranges; the record's is what is signed.
            raise AuditDamaged(
                leaf.index, "altered record", f"the row's time {leaf.ts_ms} is not the record's"
            )
        return record
