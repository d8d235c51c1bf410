"""Cryptographically secure random bytes from a buffered pool.

`os.urandom` releases the GIL for its system call; on the request path, with
the audit writer and inference threads in the same process, each call then
waits to get the GIL back, which profiling showed as ~8 % of the event loop's
time. Drawing ids and nonces from a 64 KiB buffer filled by `os.urandom` keeps
the same source (the kernel CSPRNG) with one system call per few thousand draws.
The pool refills after a fork, so two processes never share bytes.
"""

from __future__ import annotations

import os
import threading


class RandomPool:
    def __init__(self, size: int = 65_536) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._pid = -1
        self._buffer = b""
        self._offset = 0

    def take(self, n: int) -> bytes:
        if n > self._size:
            return os.urandom(n)
        with self._lock:
            if self._offset + n > len(self._buffer) or self._pid != os.getpid():
                self._buffer = os.urandom(self._size)
                self._offset = 0
                self._pid = os.getpid()
            start = self._offset
            self._offset = start + n
            # Bytes handed out are never handed out again.
            return self._buffer[start : start + n]

    def token_hex(self, n: int) -> str:
        return self.take(n).hex()


POOL = RandomPool()
