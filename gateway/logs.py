"""Logs: one JSON object per line (python-json-logger), each naming its request and trace.

A request's own fields live in a context variable that stage 0 sets and the pipeline
fills in (the client id, the policies that decided); a filter on the handler copies
them, with the current trace id, onto every record logged while the request runs, in
whatever module and in the threads it hands work to (`asyncio.to_thread` copies the
context). Fields are what the gateway chose to log: ids it issued, route templates,
statuses; never a value a client sent.
"""

from __future__ import annotations

import atexit
import logging
import sys
from contextvars import ContextVar
from logging.handlers import QueueHandler, QueueListener
from queue import SimpleQueue
from typing import Any, Literal

from pythonjsonlogger.orjson import OrjsonFormatter

from gateway.telemetry import current_trace_id

REQUEST_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar(
    "gateway_request_fields", default=None
)
_TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class RequestFields(logging.Filter):
    """Adds `request_id`, `client_id`, `policy_ids`, ... and `trace_id` to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = REQUEST_FIELDS.get()
        if fields:
            for name, value in fields.items():
                if name not in record.__dict__:
                    record.__dict__[name] = value
        if "trace_id" not in record.__dict__:
            record.trace_id = current_trace_id()
        # uvicorn's copy of its message with terminal colour codes: noise in a JSON line.
        record.__dict__.pop("color_message", None)
        return True


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted, as logging's own last
    resort does: a stream replaced after start-up (a test's capture) is never written
    to once closed."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class LogOutput:
    """The thread that writes log lines. A blocked stderr (a full pipe, a slow collector)
    must not stall the event loop: callers only put records on a queue."""

    def __init__(self, listener: QueueListener) -> None:
        self._listener = listener
        self._running = True

    def flush(self) -> None:
        """Write everything logged so far (the listener drains its queue, then resumes)."""
        if self._running:
            self._listener.stop()
            self._listener.start()

    def close(self) -> None:
        if self._running:
            self._running = False
            self._listener.stop()


_active: LogOutput | None = None


def configure_logging(
    level: str, log_format: Literal["json", "text"], stream: Any = None
) -> LogOutput:
    """Route every logger (uvicorn's too) through one queue on the root logger; one
    thread formats and writes the lines."""
    global _active
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    )
    if log_format == "json":
        handler.setFormatter(
            OrjsonFormatter(
                _TEXT,
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    # The request's fields are copied in the caller's context (they live in context
    # variables); formatting and writing happen in the listener's thread.
    front = QueueHandler(SimpleQueue())
    front.addFilter(RequestFields())
    listener = QueueListener(front.queue, handler)
    if _active is not None:
        _active.close()  # a second configuration (tests) replaces the first
    listener.start()
    _active = LogOutput(listener)
    atexit.register(_active.close)  # the last lines are written before the process ends
    root = logging.getLogger()
    root.handlers = [front]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
    return _active
