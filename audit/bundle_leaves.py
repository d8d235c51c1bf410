"""The bundle's leaves (records.jsonl), for the verifier: steps 6 and 7 in one pass.

Step 6: every leaf of [start, end), in order, exactly once; an opened record
re-hashes to its leaf hash and is one the filter selects, with personal fields
exactly when it sealed some; hash runs only where the filter narrows; purged
runs covered by a carried signed purge. Step 7: those leaves, between the
compact ranges either side, rebuild the checkpoint's root, and every milestone's
root on the way, so a mismatch is narrowed to the records between two of them.
"""

from __future__ import annotations

from typing import Any

from audit.bundle_archive import BundleArchive
from audit.bundle_format import (
    HASHES,
    OPENED,
    PURGED,
    RANGE,
    RECORDS,
    RUN_LEAVES,
    BundleInvalid,
    narrows,
    opens,
)
from audit.bundle_range import Range
from audit.bundle_summary import Summary
from audit.bundle_values import b64, b64_hash, is_int, parse_json, record_text
from audit.checkpoint import Checkpoint
from audit.merkle import HASH_SIZE, Frontier, range_nodes
from audit.retention import PurgeLedger, retention_problem

__all__ = ["check_leaves"]


def check_leaves(
    archive: BundleArchive,
    manifest: dict[str, Any],
    span: Range,
    checkpoint: Checkpoint,
    ledger: PurgeLedger,
) -> Summary:
    """Steps 6 and 7 over records.jsonl; returns the counts of what it held."""
    flt = manifest["filter"]
    walk = _Walk(span, ledger)
    hashed_only = narrows(flt)
    for number, line in archive.lines(6, RECORDS):
        entry = parse_json(line, 6, f"{RECORDS} line {number}")
        index = entry.get("index") if isinstance(entry, dict) else None
        if not is_int(index):
            raise BundleInvalid(6, f"{RECORDS} line {number}", "not an object with an index")
        where = f"{RECORDS} line {number} (index {index})"
        walk.at(index, where)
        keys = entry.keys()
        if keys == OPENED:
            walk.opened(entry, flt, where)
        elif keys == HASHES:
            if not hashed_only:
                raise BundleInvalid(
                    6,
                    where,
                    "an unfiltered bundle opens every leaf, but this one is a hash only",
                    index=index,
                )
            walk.run(entry["hashes"], where, purged=False)
        elif keys == PURGED:
            walk.run(entry["purged"], where, purged=True)
        else:
            raise BundleInvalid(
                6, where, "not an opened record, a hash run or a purged run", index=index
            )
    walk.finish(checkpoint)
    if walk.summary.records != manifest["records"]:
        raise BundleInvalid(6, RECORDS, "record count differs from the manifest's")
    return walk.summary


class _Walk:
    """Steps 6 and 7 over the leaves of [start, end), in order: each leaf is checked
    (6) and appended to the tree that must rebuild the checkpoint's root (7)."""

    def __init__(self, span: Range, ledger: PurgeLedger) -> None:
        self._span = span
        self._ledger = ledger
        # The compact range of [0, start) is exactly a frontier of size `start`.
        self._tree = Frontier(span.start, span.left)
        self._milestones = list(reversed(span.milestones))  # next one last
        self._good = span.start  # the last size the tree is known to be right at
        self.summary = Summary()

    def at(self, index: int, where: str) -> None:
        """The line names the next leaf, no later and no earlier, inside the range."""
        expected = self._tree.size
        if index > expected:
            raise BundleInvalid(
                6,
                where,
                f"index {expected} missing: the lines jump from {expected - 1} to {index}",
                index=expected,
            )
        if index < expected:
            raise BundleInvalid(
                6, where, f"index {index} again or out of order (expected {expected})", index=index
            )
        if index >= self._span.end:
            raise BundleInvalid(
                6, where, f"past the range's end {self._span.end}: an extra leaf", index=index
            )

    def opened(self, entry: dict[str, Any], flt: dict[str, Any], where: str) -> None:
        index: int = entry["index"]
        leaf = b64_hash(entry["leaf_hash"], 6, where, index)
        record = parse_json(record_text(entry, leaf, 6, where, index), 6, where, index)
        if not isinstance(record, dict):
            raise BundleInvalid(6, where, "record is not a JSON object", index=index)
        if not opens(record, flt):
            raise BundleInvalid(6, where, "record is outside the manifest's filter", index=index)
        personal = entry["personal"]
        if isinstance(record.get("sealed"), dict):
            if not (isinstance(personal, dict) or personal in ("erased", "unreadable")):
                raise BundleInvalid(
                    6, where, "sealed record without personal fields or marker", index=index
                )
        elif personal is not None:
            raise BundleInvalid(
                6, where, "personal fields on a record that sealed none", index=index
            )
        if index < self._ledger.watermark:  # only a purge's leaves have an age rule
            ts = record.get("ts_ms")
            problem = retention_problem(
                self._ledger, index, payload_present=True, ts_ms=ts if is_int(ts) else None
            )
            if problem is not None:
                raise BundleInvalid(6, where, problem, index=index)
        self.summary.add(record, personal)
        if self._milestones:
            self._append([leaf], where)
        else:
            self._tree.extend((leaf,))

    def run(self, value: object, where: str, *, purged: bool) -> None:
        start = self._tree.size
        raw = b64(value, 6, where, start)
        count, rest = divmod(len(raw), HASH_SIZE)
        if rest or not 0 < count <= RUN_LEAVES:
            raise BundleInvalid(
                6, where, f"not 1 to {RUN_LEAVES} hashes of {HASH_SIZE} bytes", index=start
            )
        if start + count > self._span.end:
            raise BundleInvalid(
                6,
                where,
                f"runs past the range's end {self._span.end}: extra leaves",
                index=self._span.end,
            )
        if purged:
            # Purges cover a prefix of the log ([0, highest watermark)): the run is covered
            # as a whole, or from its first leaf at or past the watermark it is not.
            first = max(start, self._ledger.watermark)
            if first < start + count:
                problem = retention_problem(self._ledger, first, payload_present=False, ts_ms=None)
                raise BundleInvalid(6, f"{where}: index {first}", str(problem), index=first)
            self.summary.add_purged(count)
        else:
            self.summary.add_unopened(count)
        self._append([raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE)], where)

    def _append(self, leaves: list[bytes], where: str) -> None:
        """Grow the tree; check each milestone the leaves reach."""
        while leaves:
            if not self._milestones:
                self._tree.extend(leaves)
                return
            milestone = self._milestones[-1]
            take = milestone.size - self._tree.size
            self._tree.extend(leaves[:take])
            leaves = leaves[take:]
            if self._tree.size == milestone.size:
                self._milestones.pop()
                if self._tree.root() != milestone.root:
                    self._mismatch(milestone.size, f"signed checkpoint {milestone.size}")
                self._good = milestone.size

    def _mismatch(self, size: int, what: str) -> None:
        good = self._good
        where = f"{RECORDS} (indices {good}..{size - 1})"
        if good == self._span.start and good > 0:
            detail = (
                f"the leaves up to {size - 1}, with the hashes left of {good}, do not rebuild "
                f"the root of {what}: a leaf from {good} to {size - 1} was changed, removed, "
                "inserted or reordered, or a hash left of the range was"
            )
        else:
            detail = (
                f"the leaves do not rebuild the root of {what}: a leaf from {good} to "
                f"{size - 1} was changed, removed, inserted or reordered"
            )
        raise BundleInvalid(7, where, detail, index=good)

    def finish(self, checkpoint: Checkpoint) -> None:
        end = self._span.end
        if self._tree.size < end:
            missing = self._tree.size
            raise BundleInvalid(
                6,
                RECORDS,
                f"index {missing} missing: the lines end at {missing - 1}, the range at {end - 1}",
                index=missing,
            )
        for (level, _), subtree in zip(
            range_nodes(end, checkpoint.size), self._span.right, strict=True
        ):
            self._tree.append_subtree(level, subtree)
        if self._tree.root() != checkpoint.root:
            if self._good == end:
                raise BundleInvalid(
                    7,
                    f"{RANGE} right",
                    f"the hashes right of the range do not rebuild checkpoint "
                    f"{checkpoint.size}'s root, though every leaf up to {end - 1} does",
                    index=end,
                )
            self._mismatch(end, f"checkpoint {checkpoint.size} (with the hashes right of {end})")
