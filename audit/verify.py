"""`gateway audit verify`: check a stored log end to end, naming the first damage.

Steps, each failing with one `LogDamaged(index, kind, detail)`:
  1. every leaf index 0..size-1 is present exactly once, in order (gaps, extra rows);
  2. every present payload re-hashes to its stored leaf hash (altered or swapped records);
  3. every stored interior node equals the node recomputed from the leaves, and none
     is missing or extra (altered nodes, inserted or truncated leaves);
  4. the head (size, frontier) matches the recomputed tree;
  5. every checkpoint's signature verifies with the log's key, its root equals the
     recomputed root at its size, and each is consistent with the next.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from audit.merkle import Frontier, ProofError, consistency_proof, leaf_hash, verify_consistency
from audit.store import AuditStore, StoreError

Progress = Callable[[int, int], None]


class LogDamaged(Exception):  # noqa: N818 - named for the finding, like the kinds below
    def __init__(self, index: int | None, kind: str, detail: str) -> None:
        where = f"index {index}" if index is not None else "log"
        super().__init__(f"{kind} at {where}: {detail}")
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
    try:
        return _verify(store, verifier, progress)
    except StoreError as exc:
        raise LogDamaged(None, "unreadable", str(exc)) from exc


def _verify(store: AuditStore, verifier: NoteVerifier, progress: Progress) -> VerifyReport:
    head_size, head_hashes = store.frontier_hashes()
    tree = Frontier()
    expected_nodes: dict[tuple[int, int], bytes] = {}
    roots: dict[int, bytes] = {}
    checkpoint_sizes = {cp.size for cp in store.checkpoints()}
    purged_below = store.purged_below()
    purged = 0
    expected_index = 0
    for leaf in store.iter_leaves(0, None):
        if leaf.index != expected_index:
            missing = expected_index if leaf.index > expected_index else leaf.index
            raise LogDamaged(missing, "missing record", f"found index {leaf.index} next")
        if leaf.payload is None:
            if leaf.index >= purged_below:
                raise LogDamaged(leaf.index, "missing record", "payload deleted outside retention")
            purged += 1
        elif not hmac.compare_digest(leaf_hash(leaf.payload), leaf.leaf_hash):
            raise LogDamaged(leaf.index, "altered record", "payload does not match its leaf hash")
        for level, index, digest in tree.append(leaf.leaf_hash):
            expected_nodes[(level, index)] = digest
        if tree.size in checkpoint_sizes:
            roots[tree.size] = tree.root()
        expected_index += 1
        if expected_index % 100_000 == 0:
            progress(expected_index, head_size)
    progress(expected_index, head_size)
    size = expected_index
    if size != head_size:
        kind = "truncated log" if size < head_size else "inserted record"
        raise LogDamaged(min(size, head_size), kind, f"head says {head_size}, found {size} records")
    # iter_leaves stops at the head, so rows written past it need a look of their own.
    highest = store.max_index()
    if highest is not None and highest >= head_size:
        raise LogDamaged(
            head_size, "inserted record", f"records lie past the head, up to {highest}"
        )

    for level, index, digest in store.iter_nodes():
        want = expected_nodes.pop((level, index), None)
        if want is None:
            raise LogDamaged(index << level, "inserted node", f"node ({level}, {index}) is extra")
        if not hmac.compare_digest(want, digest):
            raise LogDamaged(index << level, "altered node", f"node ({level}, {index}) differs")
    if expected_nodes:
        level, index = min(expected_nodes, key=lambda key: key[1] << key[0])
        raise LogDamaged(index << level, "missing node", f"node ({level}, {index}) is missing")
    # After the nodes: reordered leaves change the frontier too, and the node check
    # names the first moved index where this one could only say "the head".
    if tree.hashes() != head_hashes:
        raise LogDamaged(None, "altered head", "stored frontier differs from the recomputed tree")

    checkpoints = store.checkpoints()
    previous: Checkpoint | None = None
    for stored in checkpoints:
        try:
            cp = verify_checkpoint(stored.note, verifier)
        except CheckpointError as exc:
            raise LogDamaged(stored.size, "forged checkpoint", str(exc)) from exc
        if cp.size != stored.size or cp.root != stored.root:
            raise LogDamaged(stored.size, "forged checkpoint", "note disagrees with its row")
        if cp.size > size:
            raise LogDamaged(
                size, "truncated log", f"checkpoint at {cp.size} beyond {size} records"
            )
        if cp.size and roots.get(cp.size) != cp.root:
            raise LogDamaged(cp.size, "inconsistent checkpoint", "root differs from the log's")
        if previous is not None and previous.size:
            try:
                proof = consistency_proof(previous.size, cp.size, _node_getter(store))
                verify_consistency(previous.size, cp.size, previous.root, cp.root, proof)
            except (ProofError, StoreError) as exc:
                raise LogDamaged(cp.size, "inconsistent checkpoint", str(exc)) from exc
        previous = cp
    return VerifyReport(size=size, checkpoints=len(checkpoints), purged_payloads=purged)


def _node_getter(store: AuditStore) -> Callable[[int, int], bytes]:
    return store.node
