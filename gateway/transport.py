"""Stage 0, transport: request id, body-size limit, timeout, HTTP metrics (pure ASGI).

Every request gets its own id from the gateway, returned in `X-Request-Id`: the
audit log is looked up by it, so a client must not choose it (three requests sent
with one id would shadow each other's records). A client's own `X-Request-Id` is
kept beside it as `client_request_id` (scope state, the audit record, and echoed
in `X-Client-Request-Id`) when it is safe to log, and is never a lookup key.

Pure ASGI rather than BaseHTTPMiddleware: it adds no task or stream copy per
request, which matters at the latency this gateway targets.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, PayloadTooLarge, RequestTimeout
from gateway.logs import REQUEST_FIELDS
from gateway.metrics import Metrics
from gateway.problems import render
from gateway.randomness import POOL
from gateway.telemetry import NO_TRACER, parent_from, unsampled_root, use_tracer

log = logging.getLogger("gateway.transport")
access = logging.getLogger("gateway.access")


def _template(scope: Scope) -> str:
    """The matched route's template (`/v1/subjects/{subject_id}`), never the raw path."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def _caller_trace(scope: Scope) -> Context | None:
    for name, _ in scope["headers"]:
        if name == b"traceparent":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            return parent_from(headers)
    return None  # the common case: no header to parse, a new trace

# Called for refusals the middleware itself answers (413, timeouts), so they are audited
# too: (gateway request id, the client's own id if safe, path, error).
RefusalHook = Callable[[str, str | None, str, GatewayError], Awaitable[None]]


class RequestSources(Protocol):
    """Told where each request comes from while it is in flight (audit.refusals.RefusalBudget):
    refusals of callers no one authenticated are budgeted per source address."""

    def begin(self, request_id: str, client_host: str | None) -> None: ...

    def end(self, request_id: str) -> None: ...


# What of a client's own id may reach the log and a response header: short, and nothing
# that could forge a log line or a header (no space, control character or quote).
_SAFE_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CLIENT_ID_HEADER = b"x-client-request-id"


def new_request_id(now: float) -> str:
    """48-bit millisecond time, then 80 random bits (UUIDv7-like), as 32 hex digits.

    Unpredictable (80 bits from the kernel CSPRNG) and unique in practice (a collision
    needs two equal 80-bit draws in one millisecond); the audit store's lookup refuses
    an id that names two records all the same. Time-ordered ids land at the right edge
    of the audit log's request-id index; random ones scattered inserts over the whole
    B-tree and doubled the writer's cost.
    """
    return f"{int(now * 1000) & 0xFFFFFFFFFFFF:012x}{POOL.token_hex(10)}"


def safe_client_request_id(raw: bytes) -> str | None:
    """The client's own `X-Request-Id` if it is safe to log and echo, else None."""
    if len(raw) > 64:
        return None  # before decoding: a long header costs nothing to refuse
    candidate = raw.decode("latin-1")
    # fullmatch, not match with `$`: `$` also matches before a trailing newline.
    return candidate if _SAFE_CLIENT_ID.fullmatch(candidate) else None


class RequestDeadline:
    """A request's time limit, as the audit stage may extend it (pipeline.RecordHandOver)."""

    __slots__ = ("handed", "timeout")

    def __init__(self) -> None:
        self.timeout: asyncio.Timeout | None = None
        self.handed = False

    def hand_over(self, bound_s: float) -> None:
        self.handed = True
        timeout = self.timeout
        if timeout is None or timeout.expired():
            return
        when = asyncio.get_running_loop().time() + bound_s
        current = timeout.when()
        if current is not None and current < when:
            timeout.reschedule(when)


class TransportMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        timeout_s: float,
        stream_timeout_s: float = 3600.0,
        on_refusal: RefusalHook | None = None,
        sources: RequestSources | None = None,
        clock: Callable[[], float] = time.time,
        tracer: Tracer = NO_TRACER,
        samples_roots: bool = True,
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.tracer = tracer
        # False: the tracer samples no request the caller did not trace (no collector).
        self.samples_roots = samples_roots
        self.access_log = access_log
        self.clock = clock
        self.on_refusal = on_refusal
        self.sources = sources
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.timeout = timeout_s
        self.stream_timeout = stream_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = new_request_id(self.clock())
        fields: dict[str, Any] = {"request_id": request_id}
        fields_token = REQUEST_FIELDS.set(fields)
        use_tracer(self.tracer)
        method = scope["method"]
        caller = _caller_trace(scope)
        try:
            with (
                self.tracer.start_as_current_span(method, context=caller, kind=SpanKind.SERVER)
                if caller is not None or self.samples_roots
                else unsampled_root()
            ) as span:
                status = await self._handle(scope, receive, send, request_id, started)
                template = _template(scope)
                span.update_name(f"{method} {template}")
                if span.is_recording():
                    span.set_attributes(
                        {
                            "http.request.method": method,
                            "http.route": template,
                            "http.response.status_code": status,
                            "gateway.request_id": request_id,
                        }
                    )
                if self.access_log:
                    access.info(
                        "request",
                        extra={
                            "method": method,
                            "route": template,
                            "status": status,
                            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                        },
                    )
        finally:
            REQUEST_FIELDS.reset(fields_token)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, started: float
    ) -> int:
        """Stage 0 proper; returns the status the client got."""
        client_id = self._client_request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_request_id"] = client_id
        id_headers = [(b"x-request-id", request_id.encode())]
        if client_id is not None:
            id_headers.append((CLIENT_ID_HEADER, client_id.encode()))
        status_holder = [500]
        response_started = False
        deadline: asyncio.Timeout | None = None
        hold = RequestDeadline()
        state["deadline"] = hold
        running = False  # inside the deadline: only then may the body's transfer extend it
        if self.sources is not None:
            # The address as the server saw it (after trusted proxies, gateway.server).
            client = scope.get("client")
            self.sources.begin(request_id, client[0] if client else None)

        async def send_wrapper(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                if deadline is not None and running and not deadline.expired():
                    # The work is done: what is left is the transfer of the body, which a
                    # streamed export may take longer than the request timeout to send.
                    deadline.reschedule(asyncio.get_running_loop().time() + self.stream_timeout)
                status_holder[0] = message["status"]
                # Ours replace any the application set: the id is the gateway's to give.
                kept = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in (b"x-request-id", CLIENT_ID_HEADER)
                ]
                message["headers"] = [*kept, *id_headers]
            await send(message)

        try:
            declared = self._content_length(scope)
            if declared is not None and declared > self.max_body:
                raise PayloadTooLarge(f"the body limit is {self.max_body} bytes")
            async with asyncio.timeout(self.timeout) as deadline:
                running = True
                hold.timeout = deadline
                try:
                    await self.app(scope, self._limited(receive), send_wrapper)
                finally:
                    running = False
                    hold.timeout = None
        except TimeoutError:
            if not response_started:
                # Past the extension a handed-over record was given, the store broke its
                # own bound: that record is the request's one record (if it lands, the log
                # states that its writer was not told), so no second one is made here.
                await self._send_error(
                    RequestTimeout(log_cause="request timeout"),
                    scope,
                    send_wrapper,
                    record=not hold.handed,
                )
        except GatewayError as exc:
            if not response_started:
                await self._send_error(exc, scope, send_wrapper)
        finally:
            if self.sources is not None:
                self.sources.end(request_id)
            self.metrics.observe_request(
                _template(scope),
                scope["method"],
                str(status_holder[0]),
                time.perf_counter() - started,
            )
        return status_holder[0]

    @staticmethod
    def _client_request_id(scope: Scope) -> str | None:
        """The first `X-Request-Id` the client sent, if safe; a later one is ignored."""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                return safe_client_request_id(value)
        return None

    @staticmethod
    def _content_length(scope: Scope) -> int | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise PayloadTooLarge(f"the body limit is {self.max_body} bytes")
            return message

        return limited_receive

    async def _send_error(
        self, error: GatewayError, scope: Scope, send: Send, *, record: bool = True
    ) -> None:
        state: dict[str, Any] = scope.get("state", {})
        if not record:
            log.error(
                "request %s timed out while its audit record was being written",
                state.get("request_id", ""),
            )
        elif self.on_refusal is not None:
            await self.on_refusal(
                state.get("request_id", ""), state.get("client_request_id"), scope["path"], error
            )
        status, headers, body = render(error, scope["path"], state.get("request_id"))
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
