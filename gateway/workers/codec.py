"""The frames between the workers and the supervisor's state server.

Each frame is a 4-byte big-endian length and one JSON value (orjson). JSON carries
what the shared objects' methods take and return: numbers, strings, lists (decoded
as tuples), maps, plus three tagged maps:

- {"~b": base64}: bytes;
- {"~a": [dtype description as a Python literal, shape, base64]}: a numpy array (the
  detector's fingerprint records are a structured array);
- {"~d": [module, name, fields]}: a dataclass instance of a class defined in
  `security.inspection`, such as `Take` and `Spend`: nothing else is ever constructed.

Messages (tuples):
    (CALL, id, target, method, args, kwargs)    worker -> server, answered by RESULT
    (RESULT, id, ok, value | error text)        server -> worker
    (PUBLISH, topic, payload[, to])             worker -> server, sent to every other worker
                                                (or to worker `to` only)
    (EVENT, topic, payload, from_worker)        server -> worker
    (HELLO, worker)                             worker -> server, first
"""

from __future__ import annotations

import ast
import asyncio
import base64
import binascii
import dataclasses
import importlib
import logging
import struct
from typing import Any, cast

import numpy as np
import orjson

log = logging.getLogger("gateway.workers")

CALL, RESULT, PUBLISH, EVENT, HELLO = 0, 1, 2, 3, 4

_LENGTH = struct.Struct(">I")
HEADER = _LENGTH.size
MAX_FRAME = 16 << 20  # a detector exchange of 128 records x 29 bytes is a few kB
_TRUSTED_MODULE = "security.inspection."
_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS


class FrameError(Exception):
    """A frame that is too large or does not decode: the connection is dropped."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"~b": _b64(bytes(value))}
    if isinstance(value, np.ndarray):
        descr = np.lib.format.dtype_to_descr(value.dtype)
        raw = np.ascontiguousarray(value).tobytes()
        return {"~a": [repr(descr), list(value.shape), _b64(raw)]}
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"~d": [kind.__module__, kind.__qualname__, fields]}
    raise TypeError(f"cannot send {type(value).__name__} to the state server")


def _tagged(tag: str, body: Any) -> Any:
    if tag == "~b":
        return base64.b64decode(body, validate=True)
    if tag == "~a":
        descr, shape, raw = body
        dtype = np.lib.format.descr_to_dtype(ast.literal_eval(descr))
        data = base64.b64decode(raw, validate=True)
        return np.frombuffer(data, dtype=dtype).reshape(tuple(shape)).copy()
    module, name, fields = body
    if not module.startswith(_TRUSTED_MODULE):
        raise FrameError(f"refusing to build {module}.{name}")
    kind = getattr(importlib.import_module(module), name, None)
    if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
        raise FrameError(f"{module}.{name} is not a dataclass")
    return kind(**_revive(fields))


def _revive(value: Any) -> Any:
    """JSON back to what was sent: lists as tuples, tagged maps as their values."""
    if isinstance(value, list):
        return tuple(_revive(item) for item in value)
    if isinstance(value, dict):
        if len(value) == 1:
            tag = next(iter(value))
            if tag in ("~b", "~a", "~d"):
                return _tagged(tag, value[tag])
        return {key: _revive(item) for key, item in value.items()}
    return value


def encode(message: tuple[Any, ...]) -> bytes:
    body = orjson.dumps(message, default=_default, option=_OPTIONS)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes")
    return _LENGTH.pack(len(body)) + body


def decode(body: bytes) -> tuple[Any, ...]:
    try:
        value = _revive(orjson.loads(body))
    except (orjson.JSONDecodeError, ValueError, TypeError, SyntaxError, binascii.Error) as exc:
        raise FrameError(f"undecodable frame: {exc}") from exc
    if not isinstance(value, tuple) or not value:
        raise FrameError("a frame is a non-empty array")
    return value


def split(buffer: bytearray) -> list[bytes]:
    """Remove and return every complete frame body at the start of `buffer`."""
    bodies: list[bytes] = []
    start = 0
    while len(buffer) - start >= HEADER:
        (length,) = _LENGTH.unpack_from(buffer, start)
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes")
        end = start + HEADER + length
        if end > len(buffer):
            break
        bodies.append(bytes(buffer[start + HEADER : end]))
        start = end
    del buffer[:start]
    return bodies


class FramedProtocol(asyncio.Protocol):
    """A stream of frames, either end: the frames queued in one event-loop turn leave in
    one write, and each complete frame received goes to `received`. A malformed frame
    closes the connection (the other end reconnects, or its calls fail closed)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream socket's transport (uvloop's are not asyncio.Transport subclasses).
        self.transport = cast(asyncio.Transport, transport)

    def send(self, frame: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame)

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            for body in split(self._buffer):
                self.received(decode(body))
        except FrameError as exc:
            log.error("%s sent a bad frame: %s", self.peer(), exc)
            assert self.transport is not None  # noqa: S101 - data came over it
            self.transport.abort()

    def peer(self) -> str:
        """How a log line names the other end."""
        return "peer"

    def received(self, message: tuple[Any, ...]) -> None:
        raise NotImplementedError

