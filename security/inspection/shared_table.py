"""A fixed table of small records in memory shared by the workers of one box.

`gateway serve --workers N` (no Redis): the supervisor creates one anonymous shared
memory file (memfd) and every worker maps it, so a rate-limit bucket, a budget counter
or a cool-down is read and written in place, under one lock, without a round trip to
the supervisor. The memory dies with the last process that maps it; a restarted worker
maps the same table and loses nothing.

Layout: a 32-byte header (a random salt), then `slots` records of 32 bytes (key hash,
two values, last touched), open addressing over a window of `PROBES` slots. A key is
its 64-bit BLAKE2b hash keyed with the salt, so no client can choose names that land
in one window (two live keys collide with odds of about 2^-25 at a million). When a
key's whole window is taken, the record touched longest ago gives way: as with the
bounded in-process stores, forgetting a bucket or a counter only ever forgives, and a
cool-down is stored with its deadline as its "touched" time, so it goes last.

The lock (`with table:`) is a POSIX record lock on the file (released by the kernel if
its holder dies) plus a re-entrant thread lock (POSIX locks are per process); taken
again by its holder it only counts. It is held for a few memory reads and writes,
never across I/O or an await that suspends; taking it is one system call. One not
granted within `LOCK_TIMEOUT_S` (a holder stopped by a debugger, say) fails the call
with `StateUnavailableError`: the request is refused with 503 (fail closed).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
from functools import partial
from types import TracebackType

import numpy as np

from gateway.file_lock import wait_exclusive
from security.inspection.sketch import StateUnavailableError

_SLOT = struct.Struct("<Qddd")
SLOT_BYTES = _SLOT.size
PROBES = 16
DEFAULT_SLOTS = 1 << 18  # 8 MiB, touched pages only
LOCK_TIMEOUT_S = 0.25
_SALT_BYTES = 16
_RETRY_S = 0.00005

# (offset of the key's slot, its hash, its values or None when the key is not there)
Found = tuple[int, int, tuple[float, float] | None]


class SharedTable:
    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        slots = size // SLOT_BYTES - 1  # the first is the header
        if slots < PROBES or slots & (slots - 1) or size % SLOT_BYTES:
            raise ValueError(f"shared table of {size} bytes: not a power of two of slots")
        self.fd = fd
        self.slots = slots
        self._mask = slots - 1
        self._map = mmap.mmap(fd, size)
        self._salt = bytes(self._map[:_SALT_BYTES])
        if not any(self._salt):
            self._map.close()
            raise ValueError("shared table without its salt")
        self._threads = threading.RLock()
        self._depth = 0  # holds of the file lock by this process (under `_threads`)

    @classmethod
    def create(cls, slots: int = DEFAULT_SLOTS) -> SharedTable:
        """A new zeroed table; raises OSError (or AttributeError off Linux) without memfd."""
        fd = os.memfd_create("gateway-shared-state", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, (slots + 1) * SLOT_BYTES)
            os.pwrite(fd, os.urandom(_SALT_BYTES), 0)
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)

    # -- the lock ------------------------------------------------------------

    def __enter__(self) -> SharedTable:
        if not self._threads.acquire(timeout=LOCK_TIMEOUT_S):
            raise StateUnavailableError("shared state table: lock not granted in time")
        if self._depth == 0:
            try:
                self._lock_file()
            except BaseException:
                self._threads.release()
                raise
        self._depth += 1
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _lock_file(self) -> None:
        try:
            granted = wait_exclusive(
                partial(fcntl.lockf, self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
                timeout_s=LOCK_TIMEOUT_S,
                first_pause_s=_RETRY_S,
                longest_pause_s=_RETRY_S,
            )
        except OSError as exc:
            raise StateUnavailableError(f"shared state table: {exc}") from exc
        if not granted:
            raise StateUnavailableError("shared state table: lock not granted in time")

    # -- records (call with the lock held) -----------------------------------

    def find(self, key: str) -> Found:
        """Where `key` is, or where it goes; its values if it is there."""
        digest = hashlib.blake2b(key.encode(), digest_size=8, key=self._salt).digest()
        wanted = int.from_bytes(digest, "little") or 1  # 0 marks a free slot
        start = wanted & self._mask
        victim, oldest = -1, float("inf")
        unpack, table, mask = _SLOT.unpack_from, self._map, self._mask
        for step in range(PROBES):
            offset = (((start + step) & mask) + 1) * SLOT_BYTES
            held, first, second, touched = unpack(table, offset)
            if held == wanted:
                return offset, wanted, (first, second)
            if held == 0:
                return offset, wanted, None
            if touched < oldest:
                victim, oldest = offset, touched
        return victim, wanted, None

    def occupied(self) -> int:
        """How many slots hold a record."""
        keys = np.frombuffer(self._map, dtype="<u8")[SLOT_BYTES // 8 :: SLOT_BYTES // 8]
        return int(np.count_nonzero(keys))

    def store(self, found: Found, first: float, second: float, touched: float) -> None:
        _SLOT.pack_into(self._map, found[0], found[1], first, second, touched)
