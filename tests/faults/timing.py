"""Timing a store call through an outage: how long a failure took, and when it came back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


def timed(call: Callable[[], T], error: type[E]) -> tuple[T | E, float]:
    """The call's result, or the `error` it raised, and how long it took."""
    started = time.monotonic()
    try:
        result: T | E = call()
    except error as exc:
        result = exc
    return result, time.monotonic() - started


def eventually(call: Callable[[], T], within_s: float, error: type[Exception]) -> tuple[T, float]:
    """The first success of `call` (retried while it raises `error`), and how long it took."""
    started = time.monotonic()
    while True:
        try:
            return call(), time.monotonic() - started
        except error:
            if time.monotonic() - started > within_s:
                raise
            time.sleep(0.01)
