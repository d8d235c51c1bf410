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
from audit.record import (
    KIND_ERASURE,
    KIND_RETENTION,
    canonical,
    event_record,
    parse,
)
from audit.store import AuditStore, PendingRecord, StoredCheckpoint, StoreError
from audit.subjects import SubjectKey, SubjectKeyError, SubjectKeys

log = logging.getLogger("gateway.audit")

Clock = Callable[[], float]


class CheckpointRefused(Exception):  # noqa: N818 - a refusal, named for what happened
    """The log will not sign a checkpoint inconsistent with the last one."""


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
    ) -> None:
        self.store = store
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
        for task in (self._publisher, self._retention):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._appender.close()

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

    def start_publisher(self, interval_s: float) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    last = self.store.latest_checkpoint()
                    if self.store.size() != (last.size if last else 0):
                        await asyncio.to_thread(self.publish_checkpoint)
                except (CheckpointRefused, StoreError) as exc:
                    log.error("checkpoint not published: %s", exc)

        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(loop(), name="checkpoints")

    def start_retention(
        self, retention_days: Callable[[], int], interval_s: float = 3600.0
    ) -> None:
        """Purge payloads older than the retention period now and then every interval.

        The period is asked for each time, so a reloaded policy bundle takes effect.
        """

        async def loop() -> None:
            while True:
                cutoff = self.now_ms() - retention_days() * 86_400_000
                try:
                    if await asyncio.to_thread(self._first_index_at_or_after, cutoff) > (
                        await asyncio.to_thread(self.store.purged_below)
                    ):
                        await self.purge_before(cutoff)
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

    async def erase_subject(self, tenant: str | None, subject_id: str) -> bool:
        """Crypto-shred the subject's key and log the erasure. True if a key existed."""
        handle = self.subjects.handle(tenant, subject_id)
        key = await asyncio.to_thread(self.subjects.lookup, handle)
        existed = await asyncio.to_thread(self.subjects.destroy, handle)
        await self.append(
            event_record(
                KIND_ERASURE,
                self.now_ms(),
                subject=key.pseudonym if key else None,
                key_existed=existed,
            )
        )
        return existed

    async def purge_before(self, cutoff_ms: int) -> int:
        """Delete payloads of records older than `cutoff_ms`; the leaves and proofs stay."""
        first_kept = await asyncio.to_thread(self._first_index_at_or_after, cutoff_ms)
        purged = await asyncio.to_thread(self.store.purge_payloads_before, first_kept)
        await self.append(
            event_record(KIND_RETENTION, self.now_ms(), purged_below=first_kept, purged=purged)
        )
        return purged

    def _first_index_at_or_after(self, cutoff_ms: int) -> int:
        for leaf in self.store.leaves_between(cutoff_ms, 2**62):
            return leaf.index
        return self.store.size()
