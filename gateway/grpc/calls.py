"""Stage 0 for gRPC: what `gateway.transport` does for REST, done per call.

Each call gets the gateway's own request id (in the trailing metadata as
`x-request-id`; a safe client `x-request-id` is kept beside it, never a lookup key),
the request timeout (or the client's deadline, if sooner), the HTTP metrics (route
`grpc:<Method>`, method GRPC), the source address for the anonymous-refusal budget, the
verified client certificate's thumbprint under mutual TLS, and an audit record when the
timeout, not a stage, ends its pipeline. A
`GatewayError` becomes the gRPC status of its HTTP status (gateway.grpc.status) with its
safe detail. Messages over `limits.max_body_bytes` never reach this: gRPC's own receive
limit refuses them (RESOURCE_EXHAUSTED) before any handler runs, unaudited, as uvicorn
refuses oversized headers before the app.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpc import aio
from opentelemetry.trace import SpanKind
from starlette.datastructures import Headers

from gateway.components import Components
from gateway.errors import (
    AuditUnavailable,
    GatewayError,
    InternalError,
    RequestTimeout,
    bug_report,
)
from gateway.grpc.status import code_of, message_of, trailers_of
from gateway.logs import REQUEST_FIELDS
from gateway.pipeline import RequestContext
from gateway.problems import log_refusal
from gateway.telemetry import NO_TRACER, parent_from, use_tracer
from gateway.tls_scope import cert_thumbprint
from gateway.transport import RequestDeadline, new_request_id, safe_client_request_id

log = logging.getLogger("gateway.grpc")

ROUTE_PREFIX = "grpc:"
# The status of a call its client cancelled (nginx's 499), in the metrics.
CLIENT_CLOSED = 499


@dataclass
class Call:
    """One gRPC call as stage 0 saw it; `context` builds the pipeline's request context."""

    request_id: str
    client_request_id: str | None
    route: str
    headers: Headers
    received_at: float
    # Sent as initial metadata with the reply (the inspection verdict in dev mode).
    reply_metadata: dict[str, str] = field(default_factory=dict)
    deadline: RequestDeadline = field(default_factory=RequestDeadline)
    # `x5t#S256` of the verified TLS client certificate (mutual TLS), for bound tokens.
    client_cert_thumbprint: str | None = None

    def context(self, action: str, *, wire: Any = None) -> RequestContext:
        return RequestContext(
            request_id=self.request_id,
            client_request_id=self.client_request_id,
            action=action,
            route=self.route,
            headers=self.headers,
            body=b"",
            wire=wire,
            received_at=self.received_at,
            deadline=self.deadline,
            client_cert_thumbprint=self.client_cert_thumbprint,
        )


def _headers(metadata: Sequence[Any]) -> Headers:
    """Text metadata as the headers stage 1 (and stage 3's Sec-GPC) read; binary keys skipped."""
    raw = []
    for key, value in metadata:
        if key.endswith("-bin") or not isinstance(value, str):
            continue
        raw.append((key.lower().encode("latin-1"), value.encode("latin-1", "replace")))
    return Headers(raw=raw)


def peer_thumbprint(context: aio.ServicerContext[Any, Any]) -> str | None:
    """The verified client certificate's `x5t#S256`; None without mutual TLS. gRPC puts a
    client certificate in the auth context only after verifying it (client auth required,
    gateway.grpc.server)."""
    found = (context.auth_context() or {}).get("x509_pem_cert")
    if not found:
        return None
    return cert_thumbprint(ssl.PEM_cert_to_DER_cert(found[0].decode("ascii")))


def peer_host(peer: str) -> str | None:
    """The address of `ipv4:1.2.3.4:5` or `ipv6:%5B::1%5D:5`; None for a Unix socket."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return urllib.parse.unquote(rest).rsplit(":", 1)[0].strip("[]")
    return None


Work = Callable[[Call], Awaitable[bytes]]


class CallRunner:
    """Runs one handler's work under stage 0's rules.

    The work runs in its own task, shielded from the client: gRPC cancels a handler when
    its client cancels or goes away, which would cut a pipeline off mid-way (an audit
    record written but never acknowledged, or none at all). Like a REST request whose
    client disconnects, the call finishes within the request timeout and its record
    says what the gateway did; only the reply is lost (metrics: status 499).
    """

    def __init__(self, components: Components) -> None:
        self._components = components
        self._timeout = components.settings.limits.request_timeout_s
        self._running: set[asyncio.Task[bytes]] = set()
        tls = components.settings.tls
        # Only then does gRPC verify (and so show) a client certificate (gateway.grpc.server);
        # asking a plain connection's auth context costs ~45 us a call for nothing.
        self._mutual_tls = tls.client_ca_file is not None and tls.client_auth == "required"

    async def run(self, method: str, context: aio.ServicerContext[Any, Any], work: Work) -> bytes:
        started = time.perf_counter()
        headers = _headers(context.invocation_metadata() or ())
        client_id = headers.get("x-request-id")
        call = Call(
            request_id=new_request_id(self._components.clock()),
            client_request_id=(
                safe_client_request_id(client_id.encode("latin-1", "replace"))
                if client_id is not None
                else None
            ),
            route=ROUTE_PREFIX + method,
            headers=headers,
            received_at=self._components.clock(),
            client_cert_thumbprint=peer_thumbprint(context) if self._mutual_tls else None,
        )
        remaining = context.time_remaining()
        limit = self._timeout if remaining is None else min(self._timeout, remaining)
        task = asyncio.ensure_future(self._guarded(call, work, limit, peer_host(context.peer())))
        self._running.add(task)
        task.add_done_callback(self._done)
        status = 500
        try:
            reply = await asyncio.shield(task)
            status = 200
            if call.reply_metadata:
                await context.send_initial_metadata(tuple(call.reply_metadata.items()))
            context.set_trailing_metadata(self._ids(call))
            return reply
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        except Exception as exc:
            # The REST app's last-resort handler's twin: grpc would send the exception's
            # text to the client (UNKNOWN, "Unexpected <class>: ..."); a bug is INTERNAL.
            error = exc if isinstance(exc, GatewayError) else _unexpected(exc, call)
            status = error.status
            log_refusal(error, call.request_id)
            await context.abort(
                code_of(error),
                message_of(error),
                trailing_metadata=(*trailers_of(error, call.request_id), *self._ids(call)[1:]),
            )
            raise AssertionError("unreachable: abort raises") from None  # pragma: no cover
        finally:
            self._components.metrics.observe_request(
                call.route, "GRPC", str(status), time.perf_counter() - started
            )

    async def _guarded(self, call: Call, work: Work, limit: float, host: str | None) -> bytes:
        sources = self._components.refusals
        if sources is not None:
            sources.begin(call.request_id, host)
        telemetry = self._components.telemetry
        tracer = telemetry.tracer if telemetry is not None else NO_TRACER
        use_tracer(tracer)
        REQUEST_FIELDS.set({"request_id": call.request_id, "route": call.route})
        parent = parent_from(call.headers) if "traceparent" in call.headers else None
        try:
            with tracer.start_as_current_span(call.route, context=parent, kind=SpanKind.SERVER):
                async with asyncio.timeout(max(limit, 0.0)) as timeout:
                    call.deadline.timeout = timeout
                    return await work(call)
        except TimeoutError:
            error = RequestTimeout(log_cause="request timeout")
            if call.deadline.handed:
                # Its record was handed to the writer: that record is the call's one.
                log.error(
                    "request %s timed out while its audit record was being written",
                    call.request_id,
                )
            else:
                # The pipeline was cancelled, so its audit stage wrote nothing.
                await self._record(call, error.status, error.slug)
            raise error from None
        finally:
            call.deadline.timeout = None
            if sources is not None:
                sources.end(call.request_id)

    def _done(self, task: asyncio.Task[bytes]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            # Retrieved here too: a call whose client left has no one else to read it.
            task.exception()

    async def drain(self) -> None:
        """Wait for the calls still running (their clients gone), each bounded by its timeout."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @staticmethod
    def _ids(call: Call) -> tuple[tuple[str, str], ...]:
        ids = [("x-request-id", call.request_id)]
        if call.client_request_id is not None:
            ids.append(("x-client-request-id", call.client_request_id))
        return tuple(ids)

    async def _record(self, call: Call, status: int, outcome: str) -> None:
        try:
            await self._components.record_plain(
                request_id=call.request_id,
                client_request_id=call.client_request_id,
                route=call.route,
                action="transport",
                client_id=None,
                status=status,
                outcome=outcome,
            )
        except AuditUnavailable as exc:
            # The client is refused either way; the failure to audit must reach operators.
            log.error("grpc call %s not audited: %s", call.request_id, exc.log_cause)


def _unexpected(exc: Exception, call: Call) -> GatewayError:
    log.error("request %s failed: %s", call.request_id, bug_report(exc))
    return InternalError(log_cause=type(exc).__name__)
