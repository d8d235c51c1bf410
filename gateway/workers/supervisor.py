"""The supervisor of `gateway serve --workers N`: N worker processes on one port.

1. Worker 0 is started alone and builds the app; a configuration error stops here, as
   the command's one error line, before the port is bound.
2. Each worker gets its own listening socket on the one port (SO_REUSEPORT), bound here
   and handed over its control socket (gateway.workers.worker; the same TLS settings:
   each worker wraps it). The kernel spreads new connections evenly over the sockets;
   with one shared socket, whichever worker woke first took them, and at 64 connections
   one of two workers served nearly two thirds of the requests while the other idled.
   A worker that dies has its socket closed at once: connections still queued on it are
   reset (their clients retry), new ones go to the other workers until it is back.
   Each also gets the box's shared table (a memfd: security.inspection.shared_table),
   where the workers keep rate limits, budgets and cool-downs without a round trip here.
3. Workers 1..N-1 start together; if one cannot start, everything stops (exit non-zero).
4. From then on a worker that dies is restarted, after a back-off that doubles with each
   failure in a row (0.5 s up to 30 s) and resets once a worker has served for 30 s.
5. SIGTERM / SIGINT: every worker gets SIGTERM (uvicorn drains its connections and runs
   the lifespan shutdown: the audit writer drains, a last checkpoint is signed); one
   still running after `STOP_GRACE_S` is killed. SIGHUP (policy reload) goes to one
   worker, which records the reload once and tells the others (gateway.control).

Workers are spawned fresh (`python -m gateway.workers.worker`), never forked from a
process that already runs threads. They stay in the supervisor's process group, so a
signal to the group (and CPU accounting of the group) covers the whole server, and they
die with it (PR_SET_PDEATHSIG): killing the supervisor kills the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.errors import ConfigurationError
from gateway.settings import Settings
from gateway.workers.spec import ServeInputs, WorkerSpec
from gateway.workers.worker import FAILED, PREPARED, READY
from security.inspection.shared_table import SharedTable

log = logging.getLogger("gateway.workers")

STOP_GRACE_S = 30.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 30.0

# Hosts the shared state and relays the workers' broadcasts on the supervisor's loop
# (gateway.workers.state_server); returns its stop.
StateHost = Callable[[Path], Awaitable[Callable[[], Awaitable[None]]]]


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class WorkerFailed(Exception):  # noqa: N818 - named for the event
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    control: socket.socket | None = None
    ready_at: float = 0.0
    failures: int = 0  # in a row
    restarts: int = 0
    monitor: asyncio.Task[None] | None = field(default=None, repr=False)


def bind(settings: Settings, port: int | None = None) -> socket.socket:
    """A worker's listening socket on the server's port (SO_REUSEADDR, as uvicorn binds
    its own, and SO_REUSEPORT: one per worker). Only processes of the same user can
    share a port this way; a port another program holds is refused."""
    host = settings.host
    port = settings.port if port is None else port
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class Supervisor:
    def __init__(
        self,
        inputs: ServeInputs,
        settings: Settings,
        workers: int,
        *,
        state_host: StateHost | None = None,
    ) -> None:
        if workers < 2:
            raise ConfigurationError("the supervisor runs two workers or more")
        self._inputs = inputs
        self._settings = settings
        self._workers = [_Worker(i) for i in range(workers)]
        self._state_host = state_host
        self._sockets: dict[int, socket.socket] = {}  # worker index -> its listener
        self._bound_port: int | None = None
        self._stopping = asyncio.Event()
        self._state_socket: str | None = None
        self._table: SharedTable | None = None
        self._runtime: Path | None = None

    # -- the command ---------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; raises ConfigurationError if it cannot start."""
        # uvloop, as the workers run: the state server answers every worker's calls.
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        stop_state: Callable[[], Awaitable[None]] | None = None
        try:
            with tempfile.TemporaryDirectory(prefix="gateway-workers-") as runtime:
                self._runtime = Path(runtime)  # 0700: the state socket is the owner's only
                if self._state_host is not None:
                    path = self._runtime / "state.sock"
                    stop_state = await self._state_host(path)
                    self._state_socket = str(path)
                    self._table = _shared_table()
                try:
                    await self._start_all()
                except WorkerFailed as exc:
                    await self._stop_all()
                    if exc.code == 2:
                        raise ConfigurationError(str(exc)) from None
                    raise
                log.info(
                    "%d workers serving on %s:%d",
                    len(self._workers),
                    self._settings.host,
                    self._port(),
                )
                for worker in self._workers:
                    worker.monitor = loop.create_task(self._watch(worker))
                await self._stopping.wait()
                await self._stop_all()
        finally:
            if stop_state is not None:
                await stop_state()
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()
            if self._table is not None:
                self._table.close()
                self._table = None
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        return 0

    def _port(self) -> int:
        assert self._bound_port is not None  # noqa: S101 - bound before any worker serves
        return self._bound_port

    def _socket_for(self, worker: _Worker) -> socket.socket:
        """The worker's listener: kept across a failed start, new after its death."""
        found = self._sockets.get(worker.index)
        if found is None:
            # Port 0 (any): the first bind chooses; every later one takes the same port.
            found = bind(self._settings, self._bound_port)
            self._bound_port = found.getsockname()[1]
            self._sockets[worker.index] = found
        return found

    def _drop_socket(self, worker: _Worker) -> None:
        found = self._sockets.pop(worker.index, None)
        if found is not None:
            found.close()

    # -- starting ------------------------------------------------------------

    async def _start_all(self) -> None:
        first, *others = self._workers
        await self._start(first)
        await asyncio.gather(*(self._start(worker) for worker in others))

    async def _start(self, worker: _Worker) -> None:
        """Spawn, hand over the socket, wait for "ready"; raises WorkerFailed."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        inputs = self._inputs
        if self._bound_port is not None:
            # Port 0 was a choice of any port: the workers' settings name the one bound.
            inputs = replace(inputs, port=self._bound_port)
        table_fd = None if self._table is None else self._table.fd
        spec = WorkerSpec(
            inputs=inputs,
            index=worker.index,
            control_fd=theirs.fileno(),
            state_socket=self._state_socket,
            table_fd=table_fd,
        )
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.workers.worker",
                spec.to_json(),
                pass_fds=(theirs.fileno(),) if table_fd is None else (theirs.fileno(), table_fd),
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        worker.control = ours
        loop = asyncio.get_running_loop()
        message = await loop.sock_recv(ours, 4096)
        if message == PREPARED:
            try:
                listener = self._socket_for(worker)
            except ConfigurationError as exc:
                raise WorkerFailed(2, str(exc)) from None
            await loop.run_in_executor(None, _send_fd, ours, listener.fileno())
            message = await loop.sock_recv(ours, 4096)
        if message == READY:
            worker.ready_at = time.monotonic()
            return
        code = await worker.process.wait()
        if message.startswith(FAILED) and len(message) > 1:
            raise WorkerFailed(message[1], message[2:].decode(errors="replace"))
        raise WorkerFailed(1, f"worker {worker.index} exited at start (status {code})")

    # -- running -------------------------------------------------------------

    async def _watch(self, worker: _Worker) -> None:
        """Restart the worker whenever it dies, until the server stops."""
        while True:
            assert worker.process is not None  # noqa: S101 - started
            code = await worker.process.wait()
            if self._stopping.is_set():
                return
            _close(worker)
            self._drop_socket(worker)  # its queued connections are reset, not stranded
            if time.monotonic() - worker.ready_at >= HEALTHY_AFTER_S:
                worker.failures = 0
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**worker.failures)
            worker.failures += 1
            log.error(
                "worker %d (pid %d) exited with status %d; restarting in %.1f s",
                worker.index,
                worker.process.pid,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            try:
                await self._start(worker)
            except WorkerFailed as exc:
                log.error("worker %d did not start again: %s", worker.index, exc)
                continue  # its process has ended: the loop waits on it and backs off
            worker.restarts += 1
            log.warning("worker %d restarted (pid %d)", worker.index, worker.process.pid)

    def _reload(self) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGHUP)
                return
        log.error("SIGHUP: no worker running to reload the policy")

    def _forward(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    # -- stopping ------------------------------------------------------------

    async def _stop_all(self) -> None:
        self._stopping.set()
        for worker in self._workers:
            if worker.monitor is not None:
                worker.monitor.cancel()
        self._forward(signal.SIGTERM)
        running = [w.process for w in self._workers if w.process is not None]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(process.wait() for process in running)), STOP_GRACE_S
            )
        except TimeoutError:
            log.error("workers still running %.0f s after SIGTERM: killed", STOP_GRACE_S)
            self._forward(signal.SIGKILL)
            await asyncio.gather(*(process.wait() for process in running))
        for worker in self._workers:
            _close(worker)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _shared_table() -> SharedTable | None:
    """The workers' shared table (limits, budgets, cool-downs), or None off Linux: the
    state server then hosts those too, one call away."""
    try:
        return SharedTable.create()
    except (AttributeError, OSError) as exc:
        log.warning("no shared memory table (%s): limits are kept by the state server", exc)
        return None


def _send_fd(control: socket.socket, fd: int) -> None:
    control.setblocking(True)
    try:
        socket.send_fds(control, [b"s"], [fd])
    finally:
        control.setblocking(False)


def _close(worker: _Worker) -> None:
    if worker.control is not None:
        worker.control.close()
        worker.control = None
