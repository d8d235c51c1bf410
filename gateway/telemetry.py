"""Traces: one OpenTelemetry tracer per app, never the process-global provider.

Every request gets a span, and so a trace id, whether or not spans are exported: the
audit record and the log lines name it, so an operator can go from a log line to the
record and, where a collector is configured, to the trace. Spans that are not sampled
cost a few microseconds (the SDK's non-recording spans) and go nowhere; where no root
is ever sampled (no collector), stage 0 makes the request's own without the SDK.

Span attributes are chosen here and in the stages, never copied from requests: route
templates (never raw paths, which may hold a subject id), stage names, statuses, model
name and version. No personal data leaves in a span.
"""

from __future__ import annotations

import random as _random
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.settings import TelemetrySettings

_PROPAGATOR = TraceContextTextMapPropagator()
# What a tracer is without telemetry (tests, the CLI): spans with no ids, no cost.
NO_TRACER: Tracer = trace.NoOpTracer()
# The tracer of the app serving the current request (stage 0 sets it), so that code deep
# in a concern package (the ORT call, the audit append, JWKS, Redis) opens child spans
# without holding the app's provider.
_TRACER: ContextVar[Tracer] = ContextVar("gateway_tracer", default=NO_TRACER)


class Telemetry:
    """The app's tracer provider; `close()` flushes what is left to the collector."""

    def __init__(self, settings: TelemetrySettings) -> None:
        exporting = settings.otlp_endpoint is not None
        # Without a collector nothing is sampled (no span is recorded), yet every request
        # still gets a real trace id; a caller's sampled flag is followed either way.
        root = TraceIdRatioBased(settings.sample_ratio) if exporting else ALWAYS_OFF
        self.provider = TracerProvider(
            sampler=ParentBased(root),
            resource=Resource.create({"service.name": settings.service_name}),
        )
        if settings.otlp_endpoint is not None:
            # Imported only when used: the exporter pulls in an HTTP client and protobufs.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=settings.otlp_endpoint, timeout=settings.otlp_timeout_s
            )
            # Export runs in the processor's own thread, bounded by the exporter's timeout;
            # a full queue drops spans rather than holding a request.
            self.provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=4096))
        self.tracer: Tracer = self.provider.get_tracer("gateway")
        # Whether a request without a caller's trace can be sampled: if not, stage 0 gives
        # it its trace id without the SDK (`unsampled_root`).
        self.samples_roots = exporting and settings.sample_ratio > 0

    def close(self) -> None:
        self.provider.shutdown()


def parent_from(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from `traceparent`/`tracestate`; a malformed one is ignored
    (the W3C rule): the request then starts a trace of its own."""
    return _PROPAGATOR.extract(headers)


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), or None outside a traced request."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.trace_id else None


def use_tracer(tracer: Tracer) -> None:
    """Make `tracer` the current request's (stage 0, once per request task)."""
    _TRACER.set(tracer)


def recording() -> bool:
    """Whether the current request is traced (its children would be): callers with many
    spans per request ask once instead of paying for a span each time."""
    return trace.get_current_span().is_recording()


class _UnsampledRoot:
    """What the SDK's tracer makes of a request's root span when its sampler drops every
    root: a non-recording span with fresh random ids, current while the request runs:
    about 2 us against the SDK's 7-8 (no sampler call, no span builder, no generator
    context managers); the SDK's ids come from the same generator (`random.getrandbits`)."""

    __slots__ = ("_token",)

    def __enter__(self) -> trace.Span:
        ids = _random.getrandbits(192)
        span = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id=(ids >> 64) or 1,
                span_id=(ids & 0xFFFF_FFFF_FFFF_FFFF) or 1,
                is_remote=False,
                trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
            )
        )
        self._token = context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(self, *_exc: object) -> None:
        context.detach(self._token)


def unsampled_root() -> AbstractContextManager[trace.Span]:
    """A request's root span where no root is sampled and the caller sent no trace."""
    return _UnsampledRoot()


class _Quiet:
    """`span` for a request that is not recorded: enters to the current span, does nothing.
    A plain class, not a generator context manager: stages open ~20 of these a request."""

    __slots__ = ("_span",)

    def __init__(self, current: trace.Span) -> None:
        self._span = current

    def __enter__(self) -> trace.Span:
        return self._span

    def __exit__(self, *_exc: object) -> None:
        return None


def span(name: str, **attributes: Any) -> AbstractContextManager[trace.Span]:
    """A child span of the current request's, under its app's tracer; a no-op outside one.

    Attributes are the caller's own constants (names, versions, sizes), never request data.
    """
    current = trace.get_current_span()
    if not current.is_recording():
        # The request is not sampled (or there is none): its children would not be either
        # (the sampler follows the parent), and making one costs ~20 us; nothing is lost.
        return _Quiet(current)
    return _TRACER.get().start_as_current_span(name, attributes=attributes or None)
