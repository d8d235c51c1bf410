"""`gateway audit verify`: check a stored log end to end, naming the first damage.

Steps, each failing with one `LogDamaged(step, index, kind, detail)`:
  1. every leaf index 0..size-1 is present exactly once, in order, and the head's
     size is the number of leaves (gaps, extra rows, truncation, rows past the head);
  2. every payload re-hashes to its stored leaf hash (altered or swapped records),
     and every missing payload was purged lawfully (see below);
  3. every stored interior node equals the node recomputed from the leaves, and none
     is missing or extra (altered nodes, inserted or truncated leaves);
  4. the head's frontier matches the recomputed tree;
  5. every checkpoint's signature verifies with the log's key, its root equals the
     recomputed root at its size, and each is consistent with the next.
Steps 1 and 2 read the leaves once, in lockstep. A store that cannot be read
fails the step that was reading it, as kind "unreadable".

Retention (step 2, rules in `audit.retention`). The store's watermark is a
number anyone with the database can raise, and the database's guards then let
payloads below it be deleted; so it proves nothing. What proves a purge is its
retention record: in the log, at an index above the leaves it covers, and signed
by the log's key (anyone with the database can append a record, nobody without
the key can sign one), over a statement that names this log's tree at the time
(its size and root, checked here against the recomputed tree). Once a payload is
gone its own `ts_ms` is gone too, so the age of a purged record is judged by the
signed purge statement (every record below its watermark is older than its
cutoff, which lies at least the retention it names before the purge), by the
records below the watermark whose payloads are still there (their own, hashed
time), and by the store's index time of each purged leaf (not committed to by
any hash, but immutable while the guards hold: a cross-check).
Damage, each named by its index:
  - a payload missing at or above the store's watermark, or below it where no
    signed purge covers it ("missing record");
  - a retention record whose signature or statement fails ("forged purge");
  - a record below a purge's watermark that is not older than its cutoff
    ("premature purge");
  - a store watermark above every logged purge's, even with nothing deleted yet
    ("unlogged purge"), named at the first index it wrongly covers.
A logged purge whose deletions never happened (a crash after the append) is no
damage: record before effect means a record may lack its effect, never the reverse.

Rewritten history (step 5). Recomputing records, nodes and head makes steps 1-4
pass; only the signed checkpoints remember. A checkpoint's root fixes its whole
prefix, so the first damaged leaf lies at or after the newest checkpoint that
still agrees and before the oldest that does not. Nothing else signed exists to
narrow it (a root cannot be checked against a guessed leaf), so the leaf named
is exact wherever checkpoints are dense and otherwise the first leaf that can
differ, with the range in the message. When a later checkpoint still agrees,
the records are as signed and the odd checkpoint out is the damage.
"""

from __future__ import annotations

import hmac
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from audit.merkle import (
    Frontier,
    ProofError,
    consistency_proof,
    leaf_hash,
    root_from,
    verify_consistency,
)
from audit.record import KIND_RETENTION, RecordError, parse
from audit.retention import (
    Purge,
    PurgeLedger,
    PurgeRejected,
    purge_of,
    retention_problem,
    verify_purge,
)
from audit.store import AuditStore, StoredCheckpoint, StoredLeaf, StoreError

__all__ = ["LogDamaged", "Progress", "VerifyReport", "verify_store"]

Progress = Callable[[int, int], None]

_STEPS = {
    1: "records",
    2: "payloads",
    3: "nodes",
    4: "head",
    5: "checkpoints",
}

_PROGRESS_EVERY = 100_000

# Canonical records sort their keys and have no whitespace, so every retention
# record contains these bytes; only payloads that do are parsed during the scan.
_RETENTION_MARK = b'"kind":"%s"' % KIND_RETENTION.encode()
_NO_TIME = -1


class LogDamaged(Exception):  # noqa: N818 - named for the finding, like the kinds below
    """The log fails verification at `step`: damage of `kind` at leaf `index` (None: the log)."""

    def __init__(self, step: int, index: int | None, kind: str, detail: str) -> None:
        where = f"index {index}" if index is not None else "log"
        super().__init__(f"{kind} at {where}: {detail}")
        self.step = step
        self.step_name = _STEPS[step]
        self.index = index
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class VerifyReport:
    size: int
    checkpoints: int
    purged_payloads: int
    purges: int = 0  # signed purge records in the log
    watermark: int = 0  # the store's retention watermark


class _BelowWatermark:
    """The leaves below the store's watermark, in index order, compactly: what the
    retention rule judges once the purge records (which come later) are known.
    Normally all purged; 16 bytes and a flag each."""

    def __init__(self) -> None:
        self.indices = array("q")
        self.times = array("q")
        self.present = bytearray()

    def add(self, index: int, ts_ms: int | None, *, present: bool) -> None:
        self.indices.append(index)
        self.times.append(_NO_TIME if ts_ms is None else ts_ms)
        self.present.append(present)

    def __iter__(self) -> Iterator[tuple[int, int | None, bool]]:
        for index, ts_ms, present in zip(self.indices, self.times, self.present, strict=True):
            yield index, None if ts_ms == _NO_TIME else ts_ms, bool(present)


def _vouched(agreed: int) -> str:
    """What the newest agreeing checkpoint proves about the records before it."""
    if agreed:
        return f"records below {agreed} match signed checkpoint {agreed}"
    return "no earlier checkpoint vouches for any record"


def _record_time(payload: bytes) -> int | None:
    """The record's own time (hashed with it), or None if it is not a record."""
    try:
        ts_ms = parse(payload).get("ts_ms")
    except RecordError:
        return None
    return ts_ms if isinstance(ts_ms, int) and not isinstance(ts_ms, bool) else None


def _no_progress(_done: int, _total: int) -> None:
    return None


def verify_store(
    store: AuditStore, verifier: NoteVerifier, *, progress: Progress = _no_progress
) -> VerifyReport:
    return _Verifier(store, verifier, progress).run()


@contextmanager
def _reading(step: int) -> Iterator[None]:
    """A store that fails to answer during `step` fails that step."""
    try:
        yield
    except StoreError as exc:
        raise LogDamaged(step, None, "unreadable", str(exc)) from exc


class _Verifier:
    def __init__(self, store: AuditStore, verifier: NoteVerifier, progress: Progress) -> None:
        self._store = store
        self._verifier = verifier
        self._progress = progress
        # Recomputed from the leaves by steps 1-2; checked against the store by 3-5.
        self._tree = Frontier()
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._roots: dict[int, bytes] = {}
        # Collected by step 2's scan, judged after it.
        self._purges: list[Purge] = []
        self._below = _BelowWatermark()

    def run(self) -> VerifyReport:
        with _reading(1):
            head_size, head_hashes = self._store.frontier_hashes()
            # One snapshot of the checkpoints: a running gateway may sign another while
            # this reads, and step 5 must judge the ones step 1 saw, not a later list.
            signed = list(self._store.checkpoints())
            checkpoint_sizes = {cp.size for cp in signed}
            purged_below = self._store.purged_below()
        purged = self._steps1_2_leaves(head_size, checkpoint_sizes, purged_below)
        size = self._tree.size
        ledger = self._step2_retention(purged_below)
        self._step3_nodes()
        self._step4_head(head_hashes)
        checkpoints = self._step5_checkpoints(size, signed)
        return VerifyReport(
            size=size,
            checkpoints=checkpoints,
            purged_payloads=purged,
            purges=len(ledger),
            watermark=purged_below,
        )

    # -- 1. and 2. the leaves and their payloads, read once ---------------------

    def _steps1_2_leaves(
        self, head_size: int, checkpoint_sizes: set[int], purged_below: int
    ) -> int:
        """Rebuild the tree from the leaves; returns how many payloads retention purged."""
        purged = 0
        with _reading(1):
            for leaf in self._store.iter_leaves(0, None):
                self._step1_index(leaf)
                purged += self._step2_payload(leaf, purged_below)
                for level, index, digest in self._tree.append(leaf.leaf_hash):
                    self._nodes[(level, index)] = digest
                if self._tree.size in checkpoint_sizes:
                    self._roots[self._tree.size] = self._tree.root()
                if self._tree.size % _PROGRESS_EVERY == 0:
                    self._progress(self._tree.size, head_size)
        self._progress(self._tree.size, head_size)
        self._step1_extent(head_size)
        return purged

    def _step1_index(self, leaf: StoredLeaf) -> None:
        expected = self._tree.size
        if leaf.index != expected:
            missing = expected if leaf.index > expected else leaf.index
            raise LogDamaged(1, missing, "missing record", f"found index {leaf.index} next")

    def _step1_extent(self, head_size: int) -> None:
        size = self._tree.size
        if size != head_size:
            kind = "truncated log" if size < head_size else "inserted record"
            detail = f"head says {head_size}, found {size} records"
            raise LogDamaged(1, min(size, head_size), kind, detail)
        # iter_leaves stops at the head, so rows written past it need a look of their own.
        with _reading(1):
            highest = self._store.max_index()
        if highest is not None and highest >= head_size:
            detail = f"records lie past the head, up to {highest}"
            raise LogDamaged(1, head_size, "inserted record", detail)

    def _step2_payload(self, leaf: StoredLeaf, purged_below: int) -> int:
        """1 if the payload is gone below the watermark (judged later), else 0."""
        if leaf.payload is None:
            if leaf.index >= purged_below:
                detail = "payload deleted outside retention"
                raise LogDamaged(2, leaf.index, "missing record", detail)
            # The index time: not hashed, but the only time left (a cross-check).
            self._below.add(leaf.index, leaf.ts_ms, present=False)
            return 1
        if not hmac.compare_digest(leaf_hash(leaf.payload), leaf.leaf_hash):
            detail = "payload does not match its leaf hash"
            raise LogDamaged(2, leaf.index, "altered record", detail)
        if leaf.index < purged_below:
            # Rare (deleting below the watermark is one transaction): a payload that
            # survived, or was put back. Its own, hashed time is what gets judged.
            self._below.add(leaf.index, _record_time(leaf.payload), present=True)
        if _RETENTION_MARK in leaf.payload:
            self._step2_purge_record(leaf.index, leaf.payload)
        return 0

    def _step2_purge_record(self, index: int, payload: bytes) -> None:
        try:
            purge = purge_of(index, parse(payload))
        except RecordError:
            return  # hashes right, so the writer wrote it; it is just not a purge
        if purge is None:
            return  # another kind, or an unsigned retention record: vouches for nothing
        try:
            verified = verify_purge(purge, self._verifier)
        except PurgeRejected as exc:
            raise LogDamaged(2, index, "forged purge", str(exc)) from exc
        # The tree it names lies wholly before it, so the scan has rebuilt it already.
        named = root_from(verified.tree_size, lambda level, at: self._nodes[(level, at)])
        if not hmac.compare_digest(named, verified.tree_root):
            detail = f"purge names a tree this log never had at size {verified.tree_size}"
            raise LogDamaged(2, index, "forged purge", detail)
        self._purges.append(verified)

    def _step2_retention(self, purged_below: int) -> PurgeLedger:
        """Judge every leaf below a watermark against the signed purges (module docstring)."""
        ledger = PurgeLedger(self._purges)
        reach = min(ledger.watermark, self._tree.size)
        if reach > purged_below:
            # A purge was logged and its deletions have not happened (yet): the records
            # it covers are all here, and their own times say whether it was lawful.
            with _reading(2):
                for leaf in self._store.iter_leaves(purged_below, reach):
                    if leaf.payload is not None:
                        self._below.add(leaf.index, _record_time(leaf.payload), present=True)
        for index, ts_ms, present in self._below:
            problem = retention_problem(ledger, index, payload_present=present, ts_ms=ts_ms)
            if problem is None:
                continue
            if ledger.covering(index) is not None:
                raise LogDamaged(2, index, "premature purge", problem)
            detail = f"{problem} (the store's watermark is {purged_below})"
            raise LogDamaged(2, index, "missing record", detail)
        if purged_below > ledger.watermark:
            detail = (
                f"the store's retention watermark is {purged_below}, but no signed purge "
                f"record sets one above {ledger.watermark}"
            )
            raise LogDamaged(2, ledger.watermark, "unlogged purge", detail)
        return ledger

    # -- 3. interior nodes ------------------------------------------------------

    def _step3_nodes(self) -> None:
        expected = self._nodes
        with _reading(3):
            for level, index, digest in self._store.iter_nodes():
                want = expected.pop((level, index), None)
                if want is None:
                    detail = f"node ({level}, {index}) is extra"
                    raise LogDamaged(3, index << level, "inserted node", detail)
                if not hmac.compare_digest(want, digest):
                    detail = f"node ({level}, {index}) differs"
                    raise LogDamaged(3, index << level, "altered node", detail)
        if expected:
            level, index = min(expected, key=lambda key: key[1] << key[0])
            detail = f"node ({level}, {index}) is missing"
            raise LogDamaged(3, index << level, "missing node", detail)

    # -- 4. the head ------------------------------------------------------------

    def _step4_head(self, head_hashes: list[bytes]) -> None:
        # After the nodes: reordered leaves change the frontier too, and the node check
        # names the first moved index where this one could only say "the head".
        if self._tree.hashes() != head_hashes:
            detail = "stored frontier differs from the recomputed tree"
            raise LogDamaged(4, None, "altered head", detail)

    # -- 5. checkpoints ---------------------------------------------------------

    def _step5_checkpoints(self, size: int, checkpoints: list[StoredCheckpoint]) -> int:
        """Check every checkpoint in size order; returns how many there are."""
        previous: Checkpoint | None = None
        agreed = 0  # the size of the newest checkpoint whose root is the log's
        for number, stored in enumerate(checkpoints):
            checkpoint = self._step5_signed(stored, size, agreed)
            self._step5_root(checkpoint, checkpoints[number + 1 :], agreed)
            agreed = checkpoint.size
            if previous is not None and previous.size:
                self._step5_consistent(previous, checkpoint)
            previous = checkpoint
        return len(checkpoints)

    def _step5_signed(self, stored: StoredCheckpoint, size: int, agreed: int) -> Checkpoint:
        """The note verifies, agrees with its row, and lies within the log."""
        try:
            checkpoint = verify_checkpoint(stored.note, self._verifier)
        except CheckpointError as exc:
            raise LogDamaged(5, stored.size, "forged checkpoint", str(exc)) from exc
        if checkpoint.size != stored.size or checkpoint.root != stored.root:
            raise LogDamaged(5, stored.size, "forged checkpoint", "note disagrees with its row")
        if checkpoint.size > size:
            # Records went missing; where, only the signed roots below can bound.
            detail = f"checkpoint at {checkpoint.size} beyond {size} records ({_vouched(agreed)})"
            raise LogDamaged(5, size, "truncated log", detail)
        return checkpoint

    def _agrees(self, stored: StoredCheckpoint) -> bool:
        """A validly signed checkpoint whose root is the recomputed log's at its size."""
        try:
            checkpoint = verify_checkpoint(stored.note, self._verifier)
        except CheckpointError:
            return False
        return checkpoint.size > 0 and self._roots.get(checkpoint.size) == checkpoint.root

    def _step5_root(
        self, checkpoint: Checkpoint, later: list[StoredCheckpoint], agreed: int
    ) -> None:
        """The root is the log's at its size; if not, name the first leaf that can differ."""
        if not checkpoint.size or self._roots.get(checkpoint.size) == checkpoint.root:
            return
        if any(self._agrees(stored) for stored in later):
            # A later signed root fixes these records as they are: this checkpoint is the fork.
            detail = "root differs from the log's"
            raise LogDamaged(5, checkpoint.size, "inconsistent checkpoint", detail)
        # No later checkpoint agrees: the records changed, at or after `agreed`.
        last = checkpoint.size - 1
        where = f"record {agreed}" if agreed == last else f"records {agreed}..{last}"
        detail = (
            f"signed checkpoint {checkpoint.size} committed to other {where} ({_vouched(agreed)})"
        )
        raise LogDamaged(5, agreed, "rewritten record", detail)

    def _step5_consistent(self, old: Checkpoint, new: Checkpoint) -> None:
        try:
            proof = consistency_proof(old.size, new.size, self._store.node)
            verify_consistency(old.size, new.size, old.root, new.root, proof)
        except (ProofError, StoreError) as exc:
            raise LogDamaged(5, new.size, "inconsistent checkpoint", str(exc)) from exc
