"""`gateway audit verify`: check a stored log end to end, naming the first damage.

Steps, each failing with one `LogDamaged(step, index, kind, detail)`:
  1. every leaf index 0..size-1 is present exactly once, in order, and the head's
     size is the number of leaves (gaps, extra rows, truncation, rows past the head);
  2. every payload is present unless retention purged it, and re-hashes to its
     stored leaf hash (altered or swapped records);
  3. every stored interior node equals the node recomputed from the leaves, and none
     is missing or extra (altered nodes, inserted or truncated leaves);
  4. the head's frontier matches the recomputed tree;
  5. every checkpoint's signature verifies with the log's key, its root equals the
     recomputed root at its size, and each is consistent with the next.
Steps 1 and 2 read the leaves once, in lockstep. A store that cannot be read
fails the step that was reading it, as kind "unreadable".
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from audit.merkle import Frontier, ProofError, consistency_proof, leaf_hash, verify_consistency
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

    def run(self) -> VerifyReport:
        with _reading(1):
            head_size, head_hashes = self._store.frontier_hashes()
            checkpoint_sizes = {cp.size for cp in self._store.checkpoints()}
            purged_below = self._store.purged_below()
        purged = self._steps1_2_leaves(head_size, checkpoint_sizes, purged_below)
        size = self._tree.size
        self._step3_nodes()
        self._step4_head(head_hashes)
        checkpoints = self._step5_checkpoints(size)
        return VerifyReport(size=size, checkpoints=checkpoints, purged_payloads=purged)

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

    @staticmethod
    def _step2_payload(leaf: StoredLeaf, purged_below: int) -> int:
        """1 if retention purged the payload, else 0."""
        if leaf.payload is None:
            if leaf.index >= purged_below:
                detail = "payload deleted outside retention"
                raise LogDamaged(2, leaf.index, "missing record", detail)
            return 1
        if not hmac.compare_digest(leaf_hash(leaf.payload), leaf.leaf_hash):
            detail = "payload does not match its leaf hash"
            raise LogDamaged(2, leaf.index, "altered record", detail)
        return 0

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

    def _step5_checkpoints(self, size: int) -> int:
        """Check every checkpoint in size order; returns how many there are."""
        with _reading(5):
            checkpoints = self._store.checkpoints()
        previous: Checkpoint | None = None
        for stored in checkpoints:
            checkpoint = self._step5_signed(stored, size)
            if previous is not None and previous.size:
                self._step5_consistent(previous, checkpoint)
            previous = checkpoint
        return len(checkpoints)

    def _step5_signed(self, stored: StoredCheckpoint, size: int) -> Checkpoint:
        """The note verifies, agrees with its row, and its root is the log's at its size."""
        try:
            checkpoint = verify_checkpoint(stored.note, self._verifier)
        except CheckpointError as exc:
            raise LogDamaged(5, stored.size, "forged checkpoint", str(exc)) from exc
        if checkpoint.size != stored.size or checkpoint.root != stored.root:
            raise LogDamaged(5, stored.size, "forged checkpoint", "note disagrees with its row")
        if checkpoint.size > size:
            detail = f"checkpoint at {checkpoint.size} beyond {size} records"
            raise LogDamaged(5, size, "truncated log", detail)
        if checkpoint.size and self._roots.get(checkpoint.size) != checkpoint.root:
            detail = "root differs from the log's"
            raise LogDamaged(5, checkpoint.size, "inconsistent checkpoint", detail)
        return checkpoint

    def _step5_consistent(self, old: Checkpoint, new: Checkpoint) -> None:
        try:
            proof = consistency_proof(old.size, new.size, self._store.node)
            verify_consistency(old.size, new.size, old.root, new.root, proof)
        except (ProofError, StoreError) as exc:
            raise LogDamaged(5, new.size, "inconsistent checkpoint", str(exc)) from exc
