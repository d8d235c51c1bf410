"""Dynamic micro-batching: concurrent runs of one model version share one session.run.

Runs arrive on the event loop one at a time. The first run of a batch starts a timer
(`max_wait_s`); the runs that arrive before it fires join, up to `max_rows` rows. The
batch's inputs are concatenated along the first (row) axis, run once, and each run gets
its own rows of every output.

With `max_wait_s` = 0 no run ever waits for company: a batch goes at the end of the
event-loop turn that opened it while fewer than `max_in_flight` batches are running,
and otherwise as soon as one of them finishes. Alone, a run goes at once; under load,
the runs that arrive while the model is busy share its next call (continuous batching).

A batch the model refuses is run again one request at a time, so a bad request fails
alone and the others still get their answer. Runs whose inputs cannot be stacked with
the batch's (other names, dtypes or trailing dimensions) start a batch of their own;
a run with `max_rows` rows or more runs alone, as does one without a row axis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gateway.errors import GatewayError, InternalError, InvalidRequest

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]
RunOnce = Callable[[Feeds], Awaitable[Outputs]]
# Input names, dtypes and every dimension but the first: what can be stacked.
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


def rows_of(feeds: Feeds) -> int | None:
    """The common row count of every input, or None (scalars, or rows that differ)."""
    counts = {a.shape[0] if a.ndim else -1 for a in feeds.values()}
    if len(counts) != 1:
        return None
    (count,) = counts
    return count if count >= 0 else None


def _signature(feeds: Feeds) -> Signature:
    return tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()))


@dataclass(slots=True)
class _Waiting:
    feeds: Feeds
    rows: int
    future: asyncio.Future[Outputs]


class _Batch:
    __slots__ = ("rows", "signature", "timer", "waiting")

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self.waiting: list[_Waiting] = []
        self.rows = 0
        self.timer: asyncio.TimerHandle | asyncio.Handle | None = None


class MicroBatcher:
    """Gathers concurrent runs into one call of `run_once` (see the module doc).

    Event-loop only: nothing here is shared with another thread."""

    def __init__(
        self, run_once: RunOnce, *, max_wait_s: float, max_rows: int, max_in_flight: int = 1
    ) -> None:
        if max_wait_s < 0 or max_rows < 1 or max_in_flight < 1:
            raise ValueError("max_wait_s must be >= 0, max_rows and max_in_flight >= 1")
        self._run_once = run_once
        self._max_wait_s = max_wait_s
        self._max_rows = max_rows
        self._max_in_flight = max_in_flight
        self._open: _Batch | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, feeds: Feeds) -> Outputs:
        rows = rows_of(feeds)
        if rows is None or rows == 0 or rows >= self._max_rows:
            return await self._run_once(feeds)
        loop = asyncio.get_running_loop()
        signature = _signature(feeds)
        batch = self._open
        if batch is not None and (
            batch.signature != signature or batch.rows + rows > self._max_rows
        ):
            self._flush(batch)  # it cannot take this run: it goes now, a new one opens
            batch = None
        if batch is None:
            batch = self._open = _Batch(signature)
            if self._max_wait_s > 0:
                batch.timer = loop.call_later(self._max_wait_s, self._flush, batch)
            elif len(self._running) < self._max_in_flight:
                batch.timer = loop.call_soon(self._flush, batch)
            # else: it goes when a running batch finishes (_finished)
        future: asyncio.Future[Outputs] = loop.create_future()
        batch.waiting.append(_Waiting(feeds, rows, future))
        batch.rows += rows
        if batch.rows >= self._max_rows:
            self._flush(batch)
        return await future

    def _flush(self, batch: _Batch) -> None:
        if self._open is batch:
            self._open = None
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        # A caller that gave up (its request timed out) is not run for nothing.
        waiting = [w for w in batch.waiting if not w.future.done()]
        batch.waiting = []
        if not waiting:
            return
        task = asyncio.get_running_loop().create_task(self._run_batch(waiting))
        self._running.add(task)  # a strong reference until it is done
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        batch = self._open
        if batch is not None and batch.timer is None:
            # Held back while the model was busy: its turn now.
            self._flush(batch)

    async def _run_batch(self, waiting: list[_Waiting]) -> None:
        try:
            await self._answer(waiting)
        finally:
            # Whatever went wrong, no caller waits for an answer that will never come.
            for w in waiting:
                _settle(w.future, exc=InternalError(log_cause="micro-batch gave no answer"))

    async def _answer(self, waiting: list[_Waiting]) -> None:
        if len(waiting) == 1:
            await self._run_alone(waiting[0])
            return
        names = list(waiting[0].feeds)
        stacked = {n: np.concatenate([w.feeds[n] for w in waiting]) for n in names}
        total = sum(w.rows for w in waiting)
        try:
            outputs = await self._run_once(stacked)
        except InvalidRequest:
            # One of them is bad: each runs alone, and only the bad one fails.
            await asyncio.gather(*(self._run_alone(w) for w in waiting))
            return
        except (GatewayError, RuntimeError, ValueError, OSError) as exc:
            for w in waiting:
                _settle(w.future, exc=exc)
            return
        if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
            # An output without one row per input row cannot be split: run them apart.
            await asyncio.gather(*(self._run_alone(w) for w in waiting))
            return
        start = 0
        for w in waiting:
            end = start + w.rows
            _settle(w.future, result={n: a[start:end] for n, a in outputs.items()})
            start = end

    async def _run_alone(self, waiting: _Waiting) -> None:
        try:
            result = await self._run_once(waiting.feeds)
        except (GatewayError, RuntimeError, ValueError, OSError) as exc:
            _settle(waiting.future, exc=exc)
        else:
            _settle(waiting.future, result=result)


def _settle(
    future: asyncio.Future[Outputs],
    *,
    result: Outputs | None = None,
    exc: BaseException | None = None,
) -> None:
    if future.done():  # cancelled meanwhile: its caller is gone
        return
    if exc is not None:
        future.set_exception(exc)
    elif result is not None:
        future.set_result(result)
