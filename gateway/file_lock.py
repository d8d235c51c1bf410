"""Waiting for an exclusive file lock without blocking for ever.

A blocking `lockf`/`flock` cannot be given a time limit from Python, and a holder
stopped by a debugger would hang the waiter with it. `wait_exclusive` polls the
non-blocking form instead, pausing `first_pause_s` and doubling up to
`longest_pause_s`, so a waiter starts within one pause of the holder letting go.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable


def wait_exclusive(
    try_lock: Callable[[], object],
    *,
    timeout_s: float,
    first_pause_s: float,
    longest_pause_s: float,
) -> bool:
    """Call `try_lock` (a non-blocking lock call) until it succeeds: True; False once
    `timeout_s` has passed without it. Errors other than "held elsewhere" propagate."""
    pause, deadline = first_pause_s, 0.0
    while True:
        try:
            try_lock()
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        now = time.monotonic()
        if not deadline:
            deadline = now + timeout_s
        elif now > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, longest_pause_s)
