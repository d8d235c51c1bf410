"""Client-side deadlines for PostgreSQL calls: a hung server cannot hang its caller.

PostgreSQL's own limits (`statement_timeout`, `lock_timeout`) are enforced by the
server. A server that is stopped (SIGSTOP, a frozen VM, a partition that drops
packets without a reset) enforces nothing, and libpq waits on its socket for ever:
the kernel still accepts what the client sends, it is only never answered. So every
call made under a `Watchdog` deadline is bounded on this side too. One thread keeps
the deadlines; when one passes, it shuts the connection's socket down. libpq then
reads end-of-file, psycopg raises `OperationalError` and marks the connection broken,
and the store reconnects on a later call.

Shutting the socket down is the one thing safe to do from another thread: libpq's
state (a `PGconn`) must not be touched there, but the kernel socket can be shut down
under it. A deadline holds a duplicate of the socket's descriptor while it is armed:
libpq closes its own descriptor when it finds the connection lost, and the number may
then be reused by any other socket of the process; the duplicate always names this
socket, and keeps it from being freed until the call is over.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Deadline:
    """One armed call: `fired` says whether the watchdog cut its connection; `fd` is
    the deadline's own duplicate of the connection's socket."""

    __slots__ = ("at", "fd", "fired", "timeout_s")

    def __init__(self, fd: int, timeout_s: float) -> None:
        self.fd = fd
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s
        self.fired = False


class Watchdog:
    """Cuts the connection of any call still running at its deadline."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._wake = threading.Condition()
        self._armed: dict[int, Deadline] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = float("inf")
        self._closed = False

    @contextmanager
    def deadline(self, fd: int, timeout_s: float) -> Iterator[Deadline]:
        """Run the block with the socket `fd` cut if it is still running after `timeout_s`."""
        armed = Deadline(os.dup(fd), timeout_s)
        token = next(self._tokens)
        try:
            with self._wake:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(
                        target=self._watch, name=f"{self._name}-deadlines", daemon=True
                    )
                    self._thread.start()
                self._armed[token] = armed
                if armed.at < self._wake_at:
                    # Only an earlier deadline needs the thread's attention; the common
                    # case (a call that ends long before its deadline) costs a dict
                    # insert and delete.
                    self._wake.notify()
            yield armed
        finally:
            with self._wake:
                self._armed.pop(token, None)
            os.close(armed.fd)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        with self._wake:
            while not self._closed:
                now = time.monotonic()
                for armed in self._armed.values():
                    if not armed.fired and armed.at <= now:
                        armed.fired = True
                        _cut(armed.fd)
                pending = [d.at for d in self._armed.values() if not d.fired]
                self._wake_at = min(pending, default=float("inf"))
                self._wake.wait(None if not pending else max(0.0, self._wake_at - now))


def _cut(fd: int) -> None:
    """Shut the socket down (both ways); `fd` stays open (the deadline closes it)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return  # not a socket any more: nothing left to wait on
    with sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
