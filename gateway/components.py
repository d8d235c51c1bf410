"""The composition root: every component the gateway runs on, built once from one `Settings`.

`open_components` is the only code that builds components; routes reach them through
`components_of(request)` and change running state only through `gateway.control`.
No field is optional except the audit log, which only dev mode may switch off and which
routes reach through `audit_log()` and `record_plain()`, and the anonymous-refusal budget
that exists only with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
from starlette.requests import Request

from audit.factory import open_audit_log
from audit.log import AuditLog
from audit.refusals import RefusalBudget, RefusalLimits
from audit.stage import append_plain
from gateway.derivation import Purpose
from gateway.errors import NotFound
from gateway.event_store import open_event_store
from gateway.metrics import CountersOf, Metrics
from gateway.pipeline import LoopLoad, Pipeline, RequestContext
from gateway.settings import Settings
from gateway.telemetry import Telemetry
from gateway.tls_scope import client_cert_thumbprint
from gateway.workers.channel import WorkerLink
from models.experiments import EventMetrics, Experiments
from models.serving import Serving, open_serving
from models.variants import VariantMetrics
from policies.factory import open_policy
from policies.in_force import PolicyInForce
from privacy.components import Privacy, open_privacy
from security.authn import TokenValidator
from security.inspection.shared_state import share
from security.inspection.wiring import Inspection, build_inspection
from security.trust import TokenIssuer, open_issuer, open_validator

log = logging.getLogger("gateway.app")

Clock = Callable[[], float]


class Pipelines:
    """The pipeline of each action; the control plane replaces them all in one step."""

    def __init__(self) -> None:
        self._by_action: Mapping[str, Pipeline] = {}

    def __getitem__(self, action: str) -> Pipeline:
        return self._by_action[action]

    def replace(self, pipelines: Mapping[str, Pipeline]) -> None:
        self._by_action = dict(pipelines)


@dataclass(frozen=True)
class Components:
    settings: Settings
    clock: Clock
    metrics: Metrics
    http: httpx.AsyncClient
    issuer: TokenIssuer
    validator: TokenValidator
    policy: PolicyInForce
    serving: Serving
    audit: AuditLog | None  # None only in dev mode (audit.enabled = false)
    privacy: Privacy
    inspection: Inspection
    variant_metrics: VariantMetrics
    experiments: Experiments
    pipelines: Pipelines = field(default_factory=Pipelines)
    # Anonymous refusals past their source's budget are counted, not recorded one by one
    # (audit.refusals); None with the audit log.
    refusals: RefusalBudget | None = None
    telemetry: Telemetry | None = None  # None: no spans at all (tests that build by hand)
    # `serve --workers N` without Redis: the supervisor's state server (gateway.workers).
    workers: WorkerLink | None = None
    # The requests in a pipeline on this loop (stage 6 runs inline for a lone request).
    load: LoopLoad = field(default_factory=LoopLoad)

    def context(self, request: Request, action: str, body: bytes = b"") -> RequestContext:
        return RequestContext(
            request_id=request.scope["state"]["request_id"],
            client_request_id=request.scope["state"].get("client_request_id"),
            action=action,
            route=request.scope["path"],
            headers=request.headers,
            body=body,
            received_at=self.clock(),
            deadline=request.scope["state"].get("deadline"),
            client_cert_thumbprint=client_cert_thumbprint(request.scope),
        )

    def pipeline(self, action: str) -> Pipeline:
        return self.pipelines[action]

    def audit_log(self) -> AuditLog:
        """The audit log for the audit routes (404 when dev mode switched it off)."""
        if self.audit is None:
            raise NotFound("the audit log is disabled")
        return self.audit

    async def record_plain(
        self,
        *,
        request_id: str,
        route: str,
        action: str,
        client_id: str | None,
        status: int,
        outcome: str,
        client_request_id: str | None = None,
    ) -> None:
        """A record for a request that ran no pipeline (the token endpoint); fails closed."""
        if self.audit is None:
            return
        await append_plain(
            self.audit,
            self.clock,
            request_id=request_id,
            client_request_id=client_request_id,
            route=route,
            action=action,
            client_id=client_id,
            status=status,
            outcome=outcome,
            refusals=self.refusals,
        )

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.workers is not None:
            await self.workers.aclose()
        await self.inspection.aclose()
        await self.serving.aclose()  # the remote ranker's connections, then sessions
        if self.refusals is not None:
            await self.refusals.close()  # its aggregates go through the audit log: first
        if self.audit is not None:
            await self.audit.close()
            self.audit.store.close()
        self.privacy.close()
        self.experiments.close()
        if self.telemetry is not None:
            # Last: the spans of the shutdown above still reach the collector.
            await asyncio.to_thread(self.telemetry.close)


def components_of(request: Request) -> Components:
    found: Components = request.app.state.components
    return found


def audit_counters(audit: AuditLog) -> CountersOf:
    return CountersOf(
        {
            "gateway_audit_append_failures": (
                "Audit records whose write failed (their requests were refused)",
                lambda: audit.append_failures,
            ),
            "gateway_audit_unacknowledged": (
                "Records stating that durable records' writers were told they had failed",
                lambda: audit.unacknowledged_statements,
            ),
        }
    )


def open_components(
    settings: Settings, clock: Clock = time.time, *, workers: WorkerLink | None = None
) -> Components:
    """Build every component. Raises `ConfigurationError` for settings it refuses.
    `workers`: this process is one of several; without Redis they share inspection state
    through the supervisor (security.inspection.shared_state)."""
    settings.check_secrets()
    metrics = Metrics()
    http = httpx.AsyncClient(timeout=settings.auth.jwks_fetch_timeout_s, follow_redirects=False)
    issuer = open_issuer(settings, clock)
    validator = open_validator(
        settings,
        issuer,
        http,
        cache_key=settings.derived_keys[Purpose.TOKEN_CACHE],
        clock=clock,
    )
    policy = open_policy(settings)
    policy.observe(metrics)
    # After the policy: loading checks each package against it (names, min_version).
    load = LoopLoad()
    serving = open_serving(settings, metrics, policy, alone=load.alone)
    audit: AuditLog | None = None
    if settings.audit.enabled:
        audit = open_audit_log(settings, clock=clock)
        metrics.registry.register(audit_counters(audit))
    else:
        log.warning("AUDIT LOG DISABLED (dev mode): requests are not recorded")
    features = serving.features
    primary = serving.primary()
    # Stage 5 and the per-client rate limits: built once, so a model hot swap (which
    # rebuilds the pipelines) keeps every client's detector, rate and budget state.
    inspection = build_inspection(
        settings,
        policy,
        metrics.registry,
        clock,
        # From the feature store, not the model: a model hot-loaded later is inspected too.
        model_loaded=features is not None,
        feature_stats=(primary.feature_stats or None) if primary is not None else None,
        live_tables=features.tables() if features is not None else None,
    )
    if workers is not None and settings.inspection.redis_url is None:
        share(inspection, workers, workers.table)
    if features is not None:
        features.on_forget(inspection.forget_user_row)
    experiments = Experiments(
        open_event_store(settings),
        audit=audit,
        policy=policy,
        clock=clock,
        metrics=EventMetrics.register(metrics.registry),
    )
    experiments.load_totals(settings.model.name)
    return Components(
        settings=settings,
        clock=clock,
        metrics=metrics,
        http=http,
        issuer=issuer,
        validator=validator,
        policy=policy,
        serving=serving,
        audit=audit,
        privacy=open_privacy(
            settings,
            policy=policy,
            audit=audit,
            features=features,
            clock=clock,
            rows=(experiments.store,),
        ),
        experiments=experiments,
        inspection=inspection,
        variant_metrics=VariantMetrics.register(metrics.registry),
        refusals=(
            RefusalBudget(
                audit,
                RefusalLimits(**settings.audit.anonymous_refusals.model_dump()),
                clock,
            )
            if audit is not None
            else None
        ),
        telemetry=Telemetry(settings.telemetry),
        workers=workers,
        load=load,
    )
