"""Group commit: many concurrent requests share one durable write.

Requests put their record in a queue and wait. One writer thread takes
everything queued, appends it in one transaction (one fsync) and wakes every
waiter with its leaf index. While a write is in flight the next batch gathers,
so the batch size grows with load by itself and no timer adds latency at low
load. A failed write fails every request in the batch (fail closed).

Every write is bounded by the store (statement, lock and connection timeouts
below the request timeout), so a hung database fails the waiting requests
instead of hanging them, and the next batch tries again: the writer never
needs a restart.

A record is durable exactly when its writer is told so, with two exceptions the
log then says out loud. A waiter that gave up (its request timed out) while its
batch was being written; and a batch whose COMMIT went out but whose answer never
came (the database hung or went away mid-commit): its waiters were refused, yet
the batch may be durable. Once the store answers again, the writer settles such
a batch and appends one `unacknowledged` record naming every durable record
whose writer was not told: its request was refused (or timed out) and a change
it describes did not take effect, whatever the record itself says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from audit.merkle import leaf_hash
from audit.record import canonical, event_record
from audit.store import AppendInDoubt, AuditStore, PendingRecord, StoreError

log = logging.getLogger("gateway.audit")

# A batch this large means many concurrent requests; the next commit may wait a little.
_BUSY_BATCH = 8

# The record that names durable records whose writers were told they had failed.
KIND_UNACKNOWLEDGED = "unacknowledged"


class AppendFailed(Exception):  # noqa: N818 - named for the event
    """The record could not be made durable."""


@dataclass(frozen=True, slots=True)
class _Doubt:
    """A batch whose COMMIT was never answered, starting at `first` if it is durable.
    `states`: for an `unacknowledged` record in doubt, the indices it names."""

    first: int
    leaf_hash: bytes
    records: tuple[PendingRecord, ...]
    states: tuple[int, ...] = ()


class Appender:
    def __init__(
        self,
        store: AuditStore,
        *,
        max_batch: int = 1024,
        commit_delay_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._commit_delay = commit_delay_s
        self._max_batch = max_batch
        self._clock = clock
        self._pending: list[tuple[PendingRecord, asyncio.Future[int]]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self.batches = 0
        self._last_batch = 0
        self._writing = False
        # Touched only by the writer thread, or by the loop while no write is in flight.
        self._in_doubt: list[_Doubt] = []
        self._unacknowledged: dict[int, str | None] = {}  # index -> request id
        self.corrections = 0
        self.failed = 0  # records whose write failed (their requests were refused)

    async def append(self, record: PendingRecord) -> int:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run(), name="audit-appender")
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append((record, future))
        assert self._wakeup is not None  # noqa: S101 - set just above
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None  # noqa: S101
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                if (
                    self._commit_delay
                    and self._last_batch >= _BUSY_BATCH
                    and len(self._pending) < self._max_batch
                ):
                    # Under load, wait a moment so more waiters share this fsync (like
                    # PostgreSQL's commit_delay); at low load, never wait.
                    await asyncio.sleep(self._commit_delay)
                taken = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                # A waiter that gave up before its write began (its request timed out and
                # was answered, and recorded, as such) must not get a record claiming more.
                batch = [(record, future) for record, future in taken if not future.done()]
                if not batch:
                    continue
                records = [record for record, _ in batch]
                self._writing = True
                try:
                    first = await loop.run_in_executor(self._executor, self._write, records)
                except Exception as exc:
                    # Fail closed: every waiter of this batch is refused, none hangs.
                    reason = (
                        str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
                    )
                    if isinstance(exc, AppendInDoubt):
                        self._in_doubt.append(
                            _Doubt(exc.first_index, records[0].leaf_hash, tuple(records))
                        )
                        log.error("audit batch of %d left in doubt: %s", len(records), reason)
                    self.failed += len(batch)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(AppendFailed(reason))
                    continue
                finally:
                    self._writing = False
                self.batches += 1
                self._last_batch = len(batch)
                for offset, (record, future) in enumerate(batch):
                    if future.done():
                        # Durable, but its waiter is gone: the log must say it was not told.
                        self._unacknowledged[first + offset] = record.request_id
                    else:
                        future.set_result(first + offset)

    # -- the writer thread -----------------------------------------------------

    def _write(self, records: list[PendingRecord]) -> int:
        self._settle()
        return self._store.append_batch(records)

    def _settle(self) -> None:
        """Settle batches left in doubt, then state every unacknowledged record.

        Best effort before each write: while the store cannot answer, the work waits
        for the next write (the batch itself then fails or succeeds on its own)."""
        if not self._in_doubt and not self._unacknowledged:
            return  # the common case, before every write
        open_doubts: list[_Doubt] = []
        for doubt in self._in_doubt:
            try:
                durable = self._store.settled_leaf_hash(doubt.first) == doubt.leaf_hash
            except StoreError:
                open_doubts.append(doubt)
                continue
            if doubt.states:
                if durable:  # the statement stands; nothing left to say about these
                    for index in doubt.states:
                        self._unacknowledged.pop(index, None)
            elif durable:
                log.error(
                    "audit records %d..%d were committed after their writers were refused",
                    doubt.first,
                    doubt.first + len(doubt.records) - 1,
                )
                for offset, record in enumerate(doubt.records):
                    self._unacknowledged[doubt.first + offset] = record.request_id
        self._in_doubt = open_doubts
        # Indices an unsettled statement may already name wait for it to settle.
        waiting = {index for doubt in open_doubts for index in doubt.states}
        unstated = sorted(index for index in self._unacknowledged if index not in waiting)
        if unstated:
            self._state(unstated)

    def _state(self, indices: list[int]) -> None:
        payload = canonical(
            event_record(
                KIND_UNACKNOWLEDGED,
                int(self._clock() * 1000),
                indices=indices,
                request_ids=[self._unacknowledged[i] for i in indices],
            )
        )
        record = PendingRecord(payload, leaf_hash(payload), None, int(self._clock() * 1000))
        try:
            index = self._store.append_batch([record])
        except AppendInDoubt as exc:
            self._in_doubt.append(
                _Doubt(exc.first_index, record.leaf_hash, (record,), tuple(indices))
            )
            return
        except StoreError as exc:
            log.error("unacknowledged audit records %s not yet stated: %s", indices, exc)
            return
        for i in indices:
            del self._unacknowledged[i]
        self.corrections += 1
        log.error("audit record %d states records %s were not acknowledged", index, indices)

    async def close(self) -> None:
        if self._task is not None:
            # Let queued records finish: a record a client was promised must not be dropped.
            while self._pending or self._writing:
                await asyncio.sleep(0.001)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._in_doubt or self._unacknowledged:
            # Last chance to say what the log holds that its writers were not told.
            with contextlib.suppress(StoreError):
                await asyncio.get_running_loop().run_in_executor(self._executor, self._settle)
        self._executor.shutdown(wait=True)
