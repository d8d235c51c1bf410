"""The audit log service: records, checkpoints, proofs, erasure, retention.

One object per gateway process, over one store. Blocking store calls (proofs,
checkpoints, erasure) are made off the event loop by the callers in the routes
and CLI; `append` is the hot path and only awaits the group commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audit.appender import Appender, AppendFailed
from audit.checkpoint import Checkpoint, NoteSigner, NoteVerifier, sign_checkpoint
from audit.merkle import (
    Frontier,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from,
    verify_consistency,
)
from audit.record import KIND_ERASURE, canonical, event_record, parse
from audit.retention import DAY_MS, purge_record
from audit.store import AuditStore, PendingRecord, StoredCheckpoint, StoreError
from audit.subjects import SubjectKey, SubjectKeyError, SubjectKeys

log = logging.getLogger("gateway.audit")

Clock = Callable[[], float]


class CheckpointRefused(Exception):  # noqa: N818 - a refusal, named for what happened
    """The log will not sign a checkpoint inconsistent with the last one."""


@dataclass(frozen=True, slots=True)
class Purged:
    """What a purge did: its record's index (None: nothing to purge), watermark, deletions."""

    record_index: int | None
    purged_below: int
    deleted: int


@dataclass(frozen=True, slots=True)
class Inclusion:
    index: int
    size: int
    leaf_hash: bytes
    proof: list[bytes]
    checkpoint: StoredCheckpoint


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        *,
        signer: NoteSigner,
        subject_keys: SubjectKeys,
        clock: Clock = time.time,
        max_batch: int = 1024,
        commit_delay_s: float = 0.0,
        write_bound_s: float = 10.0,
    ) -> None:
        self.store = store
        # How long an append may take when the store keeps its own time limits: the
        # batch ahead of it, then its own (audit.factory.store_timeout_s).
        self.write_bound_s = write_bound_s
        self.signer = signer
        self.verifier = NoteVerifier.from_verifier_key(signer.verifier_key())
        self.origin = signer.name
        self.subjects = subject_keys
        self._clock = clock
        self._appender = Appender(store, max_batch=max_batch, commit_delay_s=commit_delay_s)
        self._publisher: asyncio.Task[None] | None = None
        self._publish_lock = threading.Lock()
        self._retention: asyncio.Task[None] | None = None

    # -- appending -----------------------------------------------------------

    @property
    def append_failures(self) -> int:
        """Records refused because their write failed, since start (a metric's source)."""
        return self._appender.failed

    @property
    def unacknowledged_statements(self) -> int:
        """`unacknowledged` records appended since start (a metric's source)."""
        return self._appender.corrections

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def subject_key(self, tenant: str | None, subject_id: str) -> SubjectKey:
        handle = self.subjects.handle(tenant, subject_id)
        cached = self.subjects.cached(handle)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.subjects.get_or_create, handle)

    async def append(self, record: dict[str, Any]) -> int:
        payload = canonical(record)
        pending = PendingRecord(
            payload=payload,
            leaf_hash=leaf_hash(payload),
            request_id=record.get("request_id"),
            ts_ms=int(record["ts_ms"]),
        )
        return await self._appender.append(pending)

    async def close(self) -> None:
        """Stop the background tasks, drain the writer, and sign what it wrote last: the
        records of a gateway's last minutes are covered by a checkpoint it signed."""
        for task in (self._publisher, self._retention):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._appender.close()
        if self._publisher is not None:
            try:
                await asyncio.to_thread(self.publish_if_grown)
            except (CheckpointRefused, StoreError) as exc:
                log.error("no checkpoint signed at shutdown: %s", exc)

    # -- checkpoints ---------------------------------------------------------

    def publish_checkpoint(self) -> StoredCheckpoint:
        """Sign the current head, after proving it consistent with the last checkpoint."""
        with self._publish_lock:
            return self._publish()

    def _publish(self) -> StoredCheckpoint:
        size, hashes = self.store.frontier_hashes()
        root = Frontier(size, hashes).root()
        if size and root_from(size, self.store.node) != root:
            raise CheckpointRefused(f"stored nodes disagree with the head at size {size}")
        last = self.store.latest_checkpoint()
        if last is not None:
            if size < last.size:
                raise CheckpointRefused(f"head {size} is behind checkpoint {last.size}")
            if size == last.size:
                if root != last.root:
                    raise CheckpointRefused(f"root changed at size {size}")
                return last
            try:
                proof = consistency_proof(last.size, size, self.store.node) if last.size else []
                verify_consistency(last.size, size, last.root, root, proof)
            except (ProofError, StoreError) as exc:
                raise CheckpointRefused(
                    f"head inconsistent with checkpoint {last.size}: {exc}"
                ) from exc
        note = sign_checkpoint(Checkpoint(self.origin, size, root), self.signer)
        stored = StoredCheckpoint(size=size, root=root, note=note, created_ms=self.now_ms())
        try:
            self.store.add_checkpoint(stored)
        except StoreError:
            # Another process may have published this size first; same size, same root.
            latest = self.store.latest_checkpoint()
            if latest is not None and latest.size == size and latest.root == root:
                return latest
            raise
        return stored

    def publish_if_grown(self) -> StoredCheckpoint | None:
        """Blocking: sign a checkpoint if records were appended since the last one."""
        last = self.store.latest_checkpoint()
        if self.store.size() == (last.size if last else 0):
            return None
        return self.publish_checkpoint()

    def start_publisher(self, interval_s: float) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    # Every store call off the event loop: a hung database must stall this
                    # task only, never the requests (or /healthz) on the loop.
                    await asyncio.to_thread(self.publish_if_grown)
                except (CheckpointRefused, StoreError) as exc:
                    log.error("checkpoint not published: %s", exc)

        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(loop(), name="checkpoints")

    def start_retention(
        self, retention_days: Callable[[], int], interval_s: float = 3600.0
    ) -> None:
        """Purge payloads older than the retention period now and then every interval.

        The period is asked for each time, so a reloaded policy bundle takes effect.
        Each purge is logged (and signed) before it deletes anything.
        """

        async def loop() -> None:
            while True:
                try:
                    await self.purge(retention_days(), trigger="schedule")
                except (StoreError, AppendFailed) as exc:
                    log.error("retention purge failed: %s", exc)
                await asyncio.sleep(interval_s)

        if self._retention is None:
            self._retention = asyncio.get_running_loop().create_task(loop(), name="retention")

    # -- proofs --------------------------------------------------------------

    def inclusion(self, index: int, checkpoint: StoredCheckpoint) -> Inclusion:
        leaf = self.store.leaf(index)
        proof = inclusion_proof(index, checkpoint.size, self.store.node)
        return Inclusion(index, checkpoint.size, leaf.leaf_hash, proof, checkpoint)

    def consistency(self, old: int, new: int) -> list[bytes]:
        return consistency_proof(old, new, self.store.node)

    # -- reading -------------------------------------------------------------

    def open_record(self, payload: bytes, *, unseal: bool) -> dict[str, Any]:
        """The record as JSON; sealed fields opened if allowed, "erased" once the key is gone."""
        record = parse(payload)
        sealed = record.get("sealed")
        if not unseal or not isinstance(sealed, dict):
            return record
        try:
            subject_key = self.subjects.by_pseudonym(str(record.get("subject")))
        except SubjectKeyError:
            return {**record, "personal": "unreadable"}
        if subject_key is None:
            return {**record, "personal": "erased"}
        try:
            personal = SubjectKeys.unseal(subject_key, str(record["request_id"]), sealed)
        except SubjectKeyError:
            return {**record, "personal": "unreadable"}
        return {**record, "personal": personal}

    # -- erasure and retention -----------------------------------------------

    async def record_event(self, kind: str, **fields: Any) -> int:
        """Append a change-of-state record stamped now; its leaf index once durable.

        Raises `AppendFailed` when it is not durable: the caller then makes no change.
        """
        return await self.append(event_record(kind, self.now_ms(), **fields))

    async def erase_subject(self, tenant: str | None, subject_id: str) -> bool:
        """Log the erasure, then crypto-shred the subject's key. True if a key was destroyed.

        Record before effect: the erasure event, naming the pseudonym about to die, is
        durable before the key goes; if the append fails, `AppendFailed` propagates and
        nothing is erased. A crash (or a failed delete) between the two leaves a record
        without its effect, which verifies; the retry appends a second event for the
        same pseudonym and destroys the key, so erasure stays idempotent.
        """
        handle = self.subjects.handle(tenant, subject_id)
        key = await asyncio.to_thread(self.subjects.lookup, handle)
        await self.record_event(
            KIND_ERASURE,
            # The record's tenant scopes who may read it through the audit API.
            tenant=tenant,
            subject=key.pseudonym if key else None,
            key_existed=key is not None,
        )
        return await asyncio.to_thread(self.subjects.destroy, handle)

    async def purge(self, retention_days: int, *, trigger: str) -> Purged:
        """Purge the payloads of records older than `retention_days` (see `purge_before`)."""
        now = self.now_ms()
        return await self._purge(now - retention_days * DAY_MS, retention_days, trigger, now)

    async def purge_before(
        self, cutoff_ms: int, *, retention_days: int | None = None, trigger: str = "api"
    ) -> int:
        """Delete payloads of records older than `cutoff_ms`; returns how many were deleted.

        Without `retention_days`, the record names the whole days between the cutoff and
        now (0 for a cutoff less than a day ago), so its statement still holds.
        """
        now = self.now_ms()
        days = retention_days if retention_days is not None else max(0, now - cutoff_ms) // DAY_MS
        return (await self._purge(cutoff_ms, days, trigger, now)).deleted

    async def _purge(self, cutoff_ms: int, retention_days: int, trigger: str, now: int) -> Purged:
        """Record before effect: the signed purge record is durable before any payload goes.

        If the append fails, `AppendFailed` propagates and nothing is deleted; if the
        delete fails after it, the record stands without effect, which verifies (the
        next purge finishes the job). The leaves, and so every proof, stay.
        """
        first_kept = await asyncio.to_thread(self._first_index_at_or_after, cutoff_ms)
        if first_kept <= await asyncio.to_thread(self.store.purged_below):
            return Purged(None, first_kept, 0)
        # The tree as it is now (it holds every leaf below `first_kept`): the signed
        # statement names these very leaves, so it cannot be replayed into another log.
        size, hashes = await asyncio.to_thread(self.store.frontier_hashes)
        record = purge_record(
            self.signer,
            purged_below=first_kept,
            cutoff_ms=cutoff_ms,
            retention_days=retention_days,
            trigger=trigger,
            ts_ms=now,
            tree_size=size,
            tree_root=Frontier(size, hashes).root(),
        )
        index = await self.append(record)
        deleted = await asyncio.to_thread(self.store.purge_payloads_before, first_kept)
        log.info(
            "retention purge (%s) logged at index %d: %d payloads below %d deleted",
            trigger,
            index,
            deleted,
            first_kept,
        )
        return Purged(index, first_kept, deleted)

    def _first_index_at_or_after(self, cutoff_ms: int) -> int:
        for leaf in self.store.leaves_between(cutoff_ms, 2**62):
            return leaf.index
        return self.store.size()
