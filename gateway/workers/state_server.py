"""The state the workers share without Redis, hosted by the supervisor on a unix socket.

It hosts the very objects the in-process factory builds
(`security.inspection.wiring.build_inspection` without Redis: the rate limiter, the
query budgets, the detector state; `shared_state.SHARED` names them) and runs any
public method a worker names on them (gateway.workers.codec for the frames). One
event loop runs every call to completion before the next, so each call is as atomic
across workers as it was within one process. It also relays the control plane's
broadcasts from one worker to the others.

The socket lives in the supervisor's private (0700) runtime directory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from gateway.settings import Settings
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

log = logging.getLogger("gateway.workers")


class StateServer:
    def __init__(self, objects: Mapping[str, object]) -> None:
        self._objects = dict(objects)
        self._peers: set[_Peer] = set()
        self.calls = 0

    def peer(self) -> _Peer:
        return _Peer(self)

    def run(self, target: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The method's result, or an awaitable one; raises LookupError for a bad name."""
        found = self._objects.get(target)
        if found is None or method.startswith("_"):
            raise LookupError(f"no {target}.{method}")
        function = getattr(found, method, None)
        if not callable(function):
            raise LookupError(f"no {target}.{method}")
        self.calls += 1
        return function(*args, **kwargs)

    def relay(self, sender: _Peer, topic: str, payload: Any, to: int | None = None) -> None:
        """To every other worker, or to worker `to` only."""
        frame = encode((EVENT, topic, payload, sender.worker))
        for peer in self._peers:
            if peer is not sender and (to is None or peer.worker == to):
                peer.send(frame)

    async def serve(self, path: Path) -> Callable[[], Awaitable[None]]:
        """Listen on `path` (owner-only); returns the stop, which also drops every worker."""
        loop = asyncio.get_running_loop()
        path.unlink(missing_ok=True)
        old = os.umask(0o077)
        try:
            server = await loop.create_unix_server(self.peer, str(path))
        finally:
            os.umask(old)

        async def stop() -> None:
            server.close()
            for peer in list(self._peers):
                if peer.transport is not None:
                    peer.transport.close()
            await server.wait_closed()
            path.unlink(missing_ok=True)

        return stop


class _Peer(FramedProtocol):
    """One worker's connection."""

    def __init__(self, server: StateServer) -> None:
        super().__init__()
        self._server = server
        self.worker = -1

    def peer(self) -> str:
        return f"worker {self.worker}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server._peers.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._peers.discard(self)

    def received(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == CALL:
            _, call_id, target, method, args, kwargs = message
            try:
                result = self._server.run(target, method, tuple(args), dict(kwargs))
            except Exception as exc:
                # The worker refuses its request (503); the server goes on serving.
                self._answer(call_id, False, f"{type(exc).__name__}: {exc}")
                return
            if isinstance(result, Coroutine):
                self._settle(call_id, result)
            else:
                self._answer(call_id, True, result)
        elif kind == PUBLISH:
            _, topic, payload, *to = message
            self._server.relay(self, topic, payload, int(to[0]) if to else None)
        elif kind == HELLO:
            self.worker = int(message[1])

    def _settle(self, call_id: int, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine: to completion right here when it never suspends (the
        in-process objects never do, which keeps calls in order and atomic), else as
        a task."""
        try:
            coroutine.send(None)
        except StopIteration as done:
            self._answer(call_id, True, done.value)
            return
        except Exception as exc:
            self._answer(call_id, False, f"{type(exc).__name__}: {exc}")
            return
        coroutine.close()
        self._answer(call_id, False, "the shared object's method suspended")

    def _answer(self, call_id: int, ok: bool, value: Any) -> None:
        try:
            frame = encode((RESULT, call_id, ok, value))
        except (FrameError, TypeError) as exc:
            frame = encode((RESULT, call_id, False, f"unsendable result: {exc}"))
        self.send(frame)


def hosted_objects(settings: Settings) -> dict[str, object]:
    """What the in-process factory builds for one process, by the names workers call;
    nothing with Redis, which the workers then share directly."""
    if settings.inspection.redis_url is not None:
        return {}
    from gateway.metrics import Metrics
    from policies.in_force import InForce, without_bundle
    from security.inspection.shared_state import SHARED
    from security.inspection.wiring import build_inspection

    class Unread:
        """The policy the factory is handed: the hosted objects never read it (each call
        carries the limits the worker read from its own bundle), so the supervisor loads
        no bundle, and a bad one is reported by worker 0, as by a single process."""

        def in_force(self) -> InForce:
            return without_bundle(settings.model.name)

    inspection = build_inspection(
        settings, Unread(), Metrics().registry, time.time, model_loaded=False
    )
    return {name: getattr(inspection, name) for name in SHARED}


def state_host(settings: Settings) -> Callable[[Path], Awaitable[Callable[[], Awaitable[None]]]]:
    """For the supervisor: start the state server on a path; returns its stop."""

    async def start(path: Path) -> Callable[[], Awaitable[None]]:
        return await StateServer(hosted_objects(settings)).serve(path)

    return start
