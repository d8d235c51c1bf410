"""The app factory: the components, the control plane, the routes and the lifespan."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from audit.stage import transport_refusal_recorder
from gateway.components import open_components
from gateway.control import ControlPlane
from gateway.fast_routes import FastRoutes, GatewayApp
from gateway.grpc.server import start_grpc
from gateway.methods import MethodsMiddleware
from gateway.openapi import install_openapi
from gateway.problems import install_error_handlers
from gateway.routes import (
    admin,
    audit,
    events,
    experiments,
    health,
    models_admin,
    oauth,
    oip,
    rank,
    subjects,
)
from gateway.settings import Settings
from gateway.telemetry import NO_TRACER
from gateway.transport import TransportMiddleware
from gateway.workers.channel import WorkerLink

Clock = Callable[[], float]
ROUTERS = (rank, oip, audit, admin, models_admin, oauth, health, subjects, events, experiments)


def create_app(
    settings: Settings, *, clock: Clock = time.time, workers: WorkerLink | None = None
) -> FastAPI:
    """Build the gateway. Raises `ConfigurationError` for settings it refuses to run with.
    `workers`: this app is one worker of `serve --workers N` (gateway.workers)."""
    components = open_components(settings, clock, workers=workers)
    control = ControlPlane(components)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        audit_log = components.audit
        if audit_log is not None:
            audit_log.start_publisher(settings.audit.checkpoint_interval_s)
            override = settings.audit.retention_days
            # The config's override, else the bundle in force (re-read at each run).
            audit_log.start_retention(
                (lambda: override)
                if override is not None
                else lambda: components.policy.in_force().data.retention.audit_days
            )
        triggers = control.start_triggers()
        grpc_server = await start_grpc(components)  # None unless grpc_port is set
        _app.state.grpc_port = grpc_server.port if grpc_server is not None else None
        # Start-up built a large, long-lived heap (models, Presidio, Cedar, tables): move it
        # out of the collector's reach, so a full collection on the event loop walks only
        # what requests allocate (full collections of it paused /healthz for 110-155 ms).
        gc.collect()
        gc.freeze()
        yield
        if grpc_server is not None:
            await grpc_server.stop()
        for task in triggers:
            task.cancel()
        await components.aclose()

    app = GatewayApp(
        title="Secure model gateway",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.components = components
    app.state.control = control
    install_error_handlers(app)
    for module in ROUTERS:
        app.include_router(module.router)
    install_openapi(app, components)
    # Inside stage 0: method refusals and HEAD get a request id, limits and metrics too.
    app.add_middleware(MethodsMiddleware, routes=app.routes)
    # Stage 0, then the hot routes, in front of all of FastAPI's layers; any other request
    # goes on to them (gateway.fast_routes).
    hot = FastRoutes(
        app.stack,
        routes=app.routes,
        endpoints=(rank.rank, oip.infer, oip.infer_version),
        handlers=app.exception_handlers,
    )
    app.front = TransportMiddleware(
        hot,
        metrics=components.metrics,
        max_body_bytes=settings.limits.max_body_bytes,
        timeout_s=settings.limits.request_timeout_s,
        stream_timeout_s=settings.limits.stream_timeout_s,
        clock=clock,
        on_refusal=(
            transport_refusal_recorder(components.audit, clock, components.refusals)
            if components.audit
            else None
        ),
        sources=components.refusals,
        tracer=components.telemetry.tracer if components.telemetry else NO_TRACER,
        samples_roots=components.telemetry.samples_roots if components.telemetry else True,
        access_log=settings.telemetry.access_log,
    )
    return app
