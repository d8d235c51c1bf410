"""The log's signed purges as one export sees them: which a bundle must carry, and why.

A leaf whose payload retention deleted travels as a purged hash, next to the
signed purge record that made the deletion lawful; a purged leaf just before the
range is before `from` only if a signed purge with a cutoff no later than `from`
covers it. Where a purge does not cover what it should, or a leaf it covers is
younger than its cutoff, the log is damaged (`AuditDamaged`, kind "retention" or
"missing record").
"""

from __future__ import annotations

import hmac

import orjson

from audit.export_damage import AuditDamaged
from audit.log import AuditLog
from audit.merkle import leaf_hash
from audit.retention import (
    Purge,
    PurgeLedger,
    PurgeRejected,
    purge_of,
    retention_problem,
    verify_purge,
)
from audit.store import StoredCheckpoint, StoredLeaf

__all__ = ["NewerCheckpointNeeded", "Purges"]

# Retention records are rare; their canonical bytes always hold this, so the search
# for them parses a handful of records instead of the whole log.
_RETENTION_MARK = b'"kind":"retention"'


class NewerCheckpointNeeded(Exception):  # noqa: N818 - control flow inside the exporter
    """A purged leaf's signed purge was logged after the checkpoint: sign a newer one."""


class Purges:
    """The signed purges under one checkpoint, and the purged leaves the range scan met."""

    def __init__(
        self,
        audit_log: AuditLog,
        checkpoint: StoredCheckpoint,
        from_ms: int,
        *,
        may_renew: bool,
    ) -> None:
        self._log = audit_log
        self._store = audit_log.store
        self._size = checkpoint.size
        self._from_ms = from_ms
        self._may_renew = may_renew
        self._ledger: PurgeLedger | None = None
        self._ledger_from = 0  # the ledger holds the purges logged at this index or later
        self._purged: list[list[int]] = []  # runs [first, last + 1) of purged leaves in range

    def ledger(self, low: int) -> PurgeLedger:
        """The log's signed purges logged at `low` or later, under the checkpoint (one
        pass over [low, N), parsing only purge records).

        Enough for every leaf from `low` on: the purge that covers a leaf is logged
        after it. A purge logged before `low` could only move a purged boundary further
        back than needed, never make a lawful deletion look unlawful: whatever covers the
        leaf at `low` covers every leaf below it too.
        """
        if self._ledger is None or low < self._ledger_from:
            purges = []
            for leaf in self._store.iter_leaves(low, self._size):
                payload = leaf.payload
                if payload is None or _RETENTION_MARK not in payload:
                    continue
                if not hmac.compare_digest(leaf_hash(payload), leaf.leaf_hash):
                    continue  # not evidence of anything; named if the range reaches it
                try:
                    record = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                purge = purge_of(leaf.index, record) if isinstance(record, dict) else None
                if purge is None:
                    continue
                try:
                    purges.append(verify_purge(purge, self._log.verifier))
                except PurgeRejected:
                    continue  # a purge the key did not sign vouches for nothing
            self._ledger, self._ledger_from = PurgeLedger(purges), low
        return self._ledger

    def justifying(self, start: int) -> Purge | None:
        """A signed purge that covers leaf start-1 with a cutoff no later than `from`."""
        for purge in self.ledger(start - 1).purges:
            if purge.purged_below >= start and purge.cutoff_ms <= self._from_ms:
                return purge
        return None

    def back_to(self, start: int) -> int:
        """The watermark below `start` of a purge whose cutoff is no later than `from`
        (the highest; 0 if none): the leaf before it is covered by that purge, so it is
        older than `from`."""
        return max(
            (
                p.purged_below
                for p in self.ledger(start - 1).purges
                if p.cutoff_ms <= self._from_ms and p.purged_below < start
            ),
            default=0,
        )

    def note_purged(self, index: int) -> None:
        """The scan met a purged leaf inside the range."""
        if self._purged and self._purged[-1][1] == index:
            self._purged[-1][1] = index + 1
        else:
            self._purged.append([index, index + 1])

    def carried(self, start: int, end: int, before: StoredLeaf | None) -> list[Purge]:
        """The signed purges the bundle must carry; damage where retention was not lawful."""
        low = max(start - 1, 0)
        purged_before = before is not None and before.payload is None
        if not (self._purged or purged_before or low < self._store.purged_below()):
            return []
        ledger = self.ledger(low)
        self._check_covered(ledger)
        self._check_ages(ledger, low, end)
        carried = self._covering(ledger)
        if purged_before:
            justifying = self.justifying(start)
            if justifying is None:
                detail = "purged, and no signed purge puts it before the range's start"
                raise AuditDamaged(start - 1, "retention", detail)
            carried[justifying.index] = justifying
        return [carried[index] for index in sorted(carried)]

    def _check_covered(self, ledger: PurgeLedger) -> None:
        """Every purged leaf of the range is below a signed purge's watermark."""
        uncovered = [
            max(first, ledger.watermark) for first, last in self._purged if last > ledger.watermark
        ]
        if uncovered:
            if self._may_renew and self._store.size() > self._size:
                raise NewerCheckpointNeeded
            problem = retention_problem(ledger, uncovered[0], payload_present=False, ts_ms=None)
            raise AuditDamaged(uncovered[0], "missing record", str(problem))

    def _check_ages(self, ledger: PurgeLedger, low: int, end: int) -> None:
        # The age rules: every leaf a purge covers is older than its cutoff (by the
        # record's own time, or for a purged one by the row's, a cross-check).
        for leaf in self._store.iter_leaves(low, min(end, ledger.watermark)):
            problem = retention_problem(
                ledger, leaf.index, payload_present=leaf.payload is not None, ts_ms=leaf.ts_ms
            )
            if problem is not None:
                raise AuditDamaged(leaf.index, "retention", problem)

    def _covering(self, ledger: PurgeLedger) -> dict[int, Purge]:
        """The signed purges that cover the range's purged leaves, by their index."""
        carried: dict[int, Purge] = {}
        for first, last in self._purged:
            index = first
            while index < last:
                purge = ledger.covering(index)
                if purge is None:  # cannot be: every purged run is below the watermark
                    raise AuditDamaged(index, "missing record", "no signed purge covers it")
                carried[purge.index] = purge
                index = purge.purged_below
        return carried
