"""Group commit: many concurrent requests share one durable write.

Requests put their record in a queue and wait. One writer thread takes
everything queued, appends it in one transaction (one fsync) and wakes every
waiter with its leaf index. While a write is in flight the next batch gathers,
so the batch size grows with load by itself and no timer adds latency at low
load. A failed write fails every request in the batch (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from audit.store import AuditStore, PendingRecord, StoreError

# A batch this large means many concurrent requests; the next commit may wait a little.
_BUSY_BATCH = 8


class AppendFailed(Exception):  # noqa: N818 - named for the event
    """The record could not be made durable."""


class Appender:
    def __init__(
        self, store: AuditStore, *, max_batch: int = 1024, commit_delay_s: float = 0.0
    ) -> None:
        self._store = store
        self._commit_delay = commit_delay_s
        self._max_batch = max_batch
        self._pending: list[tuple[PendingRecord, asyncio.Future[int]]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self.batches = 0
        self._last_batch = 0

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
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                records = [record for record, _ in batch]
                try:
                    first = await loop.run_in_executor(
                        self._executor, self._store.append_batch, records
                    )
                except Exception as exc:
                    # Fail closed: every waiter of this batch is refused, none hangs.
                    reason = (
                        str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
                    )
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(AppendFailed(reason))
                    continue
                self.batches += 1
                self._last_batch = len(batch)
                for offset, (_, future) in enumerate(batch):
                    if not future.done():
                        future.set_result(first + offset)

    async def close(self) -> None:
        if self._task is not None:
            # Let queued records finish: a record a client was promised must not be dropped.
            while self._pending:
                await asyncio.sleep(0.001)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)
