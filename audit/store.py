"""Audit storage: the interface every backend implements, and what they share.

A backend keeps, atomically per batch:
- leaves: index, leaf hash, request id, time (immutable: triggers reject UPDATE/DELETE);
- payloads: the canonical record bytes (immutable, except that retention may delete
  payloads below the purge watermark; the leaf hashes, and so every proof, stay);
- nodes: the hash of every complete subtree (immutable), so proofs read O(log n) rows;
- head: size and frontier, updated with each batch under the backend's write lock,
  so several processes appending to one database get one sequence, no gaps, no forks;
- checkpoints: every signed checkpoint ever published (immutable);
- subject keys: wrapped per-subject data keys (deleted on erasure: crypto-shredding).
All methods are synchronous; the appender calls them from one writer thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store could not complete an operation; the request that needed it fails."""


class AppendInDoubt(StoreError):  # noqa: N818 - named for the state it leaves
    """A batch's COMMIT was sent but its answer never came (the database hung or went
    away): the batch may or may not be durable. If it is, it starts at `first_index`;
    `AuditStore.settled_leaf_hash` tells which, once the database answers again."""

    def __init__(self, message: str, *, first_index: int) -> None:
        super().__init__(message)
        self.first_index = first_index


@dataclass(frozen=True, slots=True)
class PendingRecord:
    payload: bytes
    leaf_hash: bytes
    request_id: str | None
    ts_ms: int


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: bytes
    created_ms: int


@dataclass(frozen=True, slots=True)
class StoredLeaf:
    index: int
    leaf_hash: bytes
    request_id: str | None
    ts_ms: int
    payload: bytes | None  # None once purged by retention


class AuditStore(Protocol):
    def append_batch(self, records: Sequence[PendingRecord]) -> int:
        """Append durably and atomically; returns the index of the first record."""
        ...

    def settled_leaf_hash(self, index: int) -> bytes | None:
        """The hash of leaf `index` once every append in progress has ended (a commit left
        in doubt included); None while the log is shorter. Settles `AppendInDoubt`."""
        ...

    def check(self) -> None:
        """Raise StoreError unless the store can take an append now: it answers and, for
        a file, its file system has room (readiness: a full disk refuses every request)."""
        ...

    def size(self) -> int: ...

    def max_index(self) -> int | None:
        """The highest leaf index stored (None when empty): rows past the head are damage."""
        ...

    def frontier_hashes(self) -> tuple[int, list[bytes]]: ...

    def node(self, level: int, index: int) -> bytes: ...

    def leaf(self, index: int) -> StoredLeaf: ...

    def index_of(self, request_id: str) -> int | None: ...

    def iter_leaves(self, start: int = 0, end: int | None = None) -> Iterator[StoredLeaf]: ...

    def iter_nodes(self) -> Iterator[tuple[int, int, bytes]]: ...

    def leaves_between(self, from_ms: int, to_ms: int) -> Iterator[StoredLeaf]: ...

    def add_checkpoint(self, checkpoint: StoredCheckpoint) -> None: ...

    def checkpoints(self) -> list[StoredCheckpoint]: ...

    def latest_checkpoint(self) -> StoredCheckpoint | None: ...

    def checkpoint_at_or_after(self, size: int) -> StoredCheckpoint | None:
        """The smallest checkpoint of at least `size` leaves: one index look-up, so a
        caller can walk or sample the checkpoints without loading them all."""
        ...

    def subject_key(self, handle: bytes) -> tuple[str, bytes] | None: ...

    def get_or_create_subject_key(
        self, handle: bytes, pseudonym: str, key_id: str, wrapped: bytes
    ) -> tuple[str, bytes]:
        """Insert unless present; returns the stored (winning) key, durably."""
        ...

    def subject_key_by_pseudonym(self, pseudonym: str) -> tuple[bytes, str, bytes] | None: ...

    def delete_subject_key(self, handle: bytes) -> bool: ...

    def subject_keys_after(self, handle: bytes, limit: int) -> list[tuple[bytes, str, bytes]]:
        """(handle, key_id, wrapped) in handle order after `handle`: key rotation pages."""
        ...

    def rewrap_subject_key(
        self, handle: bytes, old_key_id: str, new_key_id: str, wrapped: bytes
    ) -> bool:
        """Replace a wrapped key if it is still wrapped by `old_key_id` (erasure may win)."""
        ...

    def subject_key_ids(self) -> dict[str, int]:
        """How many subject keys each KEK wraps (a KEK is deletable only at zero)."""
        ...

    def purge_payloads_before(self, index: int) -> int:
        """Delete payloads with index < `index` (retention); returns how many were deleted."""
        ...

    def purged_below(self) -> int: ...

    def close(self) -> None: ...


def check_batch(records: Sequence[PendingRecord]) -> None:
    if not records:
        raise StoreError("empty batch")
