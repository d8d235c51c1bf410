"""A worker's link to the supervisor's state server: calls (pipelined) and broadcasts.

One unix-socket connection per worker event loop, opened on first use. Calls are
pipelined: each gets an id, the frames written in one event-loop turn leave in one
write, and one reader task resolves the answers. Every call is bounded (`timeout_s`,
give or take a quarter of it): a state server that does not answer fails the call
with `ChannelError` (a `StateUnavailableError`: the request is refused with 503, as
when Redis is away), and the next call reconnects.

Broadcasts (`publish`) reach every other worker's `on_event` handlers. A worker that
lost its connection may have missed some: when it connects again its handlers get
`RESYNC`, and drop what they cache.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.workers.codec import (
    CALL,
    EVENT,
    HELLO,
    PUBLISH,
    RESULT,
    FramedProtocol,
    FrameError,
    encode,
)
from security.inspection.shared_table import SharedTable
from security.inspection.state import StateUnavailableError

log = logging.getLogger("gateway.workers")

RESYNC = "resync"  # a topic of our own: events may have been missed

Handler = Callable[[str, Any], Awaitable[None]]


class ChannelError(StateUnavailableError):
    """The state server did not answer in time, or refused the call."""


class _Connection(FramedProtocol):
    def __init__(self, link: WorkerLink) -> None:
        super().__init__()
        self._link = link
        self.pending: dict[int, asyncio.Future[Any]] = {}
        # Deadlines in call order (each call has the same timeout): one sweeper task
        # expires them, cheaper than a timer per call.
        self.deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self.lost = asyncio.get_running_loop().create_future()
        self.sweeper: asyncio.Task[None] | None = None

    def peer(self) -> str:
        return "state server"

    def received(self, message: tuple[Any, ...]) -> None:
        if message[0] == RESULT:
            _, call_id, ok, value = message
            future = self.pending.pop(call_id, None)
            if future is None or future.done():
                return  # its caller timed out
            if ok:
                future.set_result(value)
            else:
                future.set_exception(ChannelError(f"state server: {value}"))
        elif message[0] == EVENT:
            _, topic, payload, sender = message
            self._link.deliver(topic, payload, sender)

    async def sweep(self, timeout_s: float) -> None:
        """Fail every call older than `timeout_s` (checked every quarter of it)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(timeout_s / 4)
            now = loop.time()
            while self.deadlines and self.deadlines[0][0] <= now:
                _, call_id = self.deadlines.popleft()
                future = self.pending.pop(call_id, None)
                if future is not None and not future.done():
                    future.set_exception(
                        ChannelError(f"state server did not answer in {timeout_s} s")
                    )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        error = ChannelError(f"state server connection lost: {exc or 'closed'}")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
        if not self.lost.done():
            self.lost.set_result(None)
        self._link.disconnected(self)


class WorkerLink:
    """`call` implements security.inspection.shared_state.Caller; `publish`/`on_event`
    carry the control plane's changes (gateway.workers.broadcast); `table` is the box's
    shared table, when the supervisor made one."""

    def __init__(
        self,
        path: str,
        *,
        worker: int,
        timeout_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        table: SharedTable | None = None,
    ) -> None:
        self.path = path
        self.worker = worker
        self.table = table
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._ids = itertools.count()
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: list[Handler] = []
        self._ever_connected = False
        self._watch: asyncio.Task[None] | None = None
        self._closed = False
        self.reconnects = 0

    # -- connecting ----------------------------------------------------------

    async def _connected(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests): nothing carries over
            self._loop, self._connection, self._connecting = loop, None, None
        if self._connection is not None:
            return self._connection
        if self._connecting is None:
            self._connecting = loop.create_future()
            try:
                connection = await self._open(loop)
            except ChannelError as exc:
                self._connecting.set_exception(exc)
                self._connecting.exception()  # retrieved: no "never retrieved" warning
                self._connecting = None
                raise
            self._connecting.set_result(connection)
            self._connecting = None
            return connection
        return await asyncio.shield(self._connecting)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            _, connection = await asyncio.wait_for(
                loop.create_unix_connection(lambda: _Connection(self), self.path),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise ChannelError(f"state server unreachable: {exc}") from exc
        connection.send(encode((HELLO, self.worker)))
        connection.sweeper = loop.create_task(connection.sweep(self._timeout_s))
        self._connection = connection
        if self._ever_connected:
            self.reconnects += 1
            self.deliver(RESYNC, None, -1)
        self._ever_connected = True
        return connection

    def disconnected(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None
            if self._handlers and not self._closed and self._loop is not None:
                # Subscribers must hear of what they missed: reconnect by ourselves.
                self._watch = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        while not self._closed and self._connection is None:
            try:
                await self._connected()
            except ChannelError:
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    # -- calls ---------------------------------------------------------------

    async def call(self, target: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run `target.method(*args, **kwargs)` in the state server; its result."""
        connection = await self._connected()
        call_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        try:
            frame = encode((CALL, call_id, target, method, args, kwargs))
        except (FrameError, TypeError) as exc:
            raise ChannelError(f"cannot send {target}.{method}: {exc}") from exc
        connection.pending[call_id] = future
        connection.deadlines.append((loop.time() + self._timeout_s, call_id))
        connection.send(frame)
        try:
            return await future
        except ChannelError as exc:
            raise ChannelError(f"{target}.{method}: {exc}") from None

    # -- broadcasts ----------------------------------------------------------

    def on_event(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def publish(self, topic: str, payload: Any, *, to: int | None = None) -> None:
        """Send to every other worker, or to worker `to` only (best effort: one that is
        away resyncs later)."""
        connection = await self._connected()
        message = (PUBLISH, topic, payload) if to is None else (PUBLISH, topic, payload, to)
        connection.send(encode(message))

    async def subscribe(self) -> None:
        """Connect now (at start-up), so that events reach this worker from the start;
        a failure is retried in the background."""
        try:
            await self._connected()
        except ChannelError as exc:
            log.error("state server not reachable yet: %s", exc)
            self._watch = asyncio.get_running_loop().create_task(self._reconnect())

    def deliver(self, topic: str, payload: Any, sender: int) -> None:
        if self._loop is None:
            return
        for handler in self._handlers:
            self._loop.create_task(_run(handler, topic, payload, sender))

    async def aclose(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        connection, self._connection = self._connection, None
        if connection is not None:
            if connection.sweeper is not None:
                connection.sweeper.cancel()
            if connection.transport is not None:
                connection.transport.close()


async def _run(handler: Handler, topic: str, payload: Any, sender: int) -> None:
    try:
        await handler(topic, payload)
    except Exception:
        # A handler's bug must not take the connection down with it.
        log.exception("worker event %r (from worker %d) not applied", topic, sender)
