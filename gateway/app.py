"""The app factory: builds every component from one `Settings` and wires the pipelines."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI
from starlette.requests import Request

from audit.appender import AppendFailed
from audit.factory import open_audit_log
from audit.log import AuditLog
from audit.record import KIND_POLICY_RELOAD, event_record
from audit.stage import AuditStage, transport_refusal_recorder
from gateway.decode import InferDecodeStage, RankDecodeStage
from gateway.errors import ConfigurationError, ModelNotReady
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, RequestContext, Stage
from gateway.problems import install_error_handlers
from gateway.respond import InferRespondStage, OutputShape, RankRespondStage
from gateway.settings import Settings
from gateway.transport import TransportMiddleware
from models.features import FeatureStore
from models.ranker import Ranker
from models.registry import ModelRegistry
from models.serving import inference_observer, load_missing_versions, open_models
from models.stages import InferStage, RankStage
from models.variants import VariantMetrics, VariantRankStage, variant_salt
from policies.data_policy import DataPolicy, Variant
from policies.errors import PolicyError
from policies.manager import PolicyManager, ReloadResult
from policies.stage import PolicyAuthorizeStage
from privacy.components import Privacy, open_privacy
from security.authn import AuthenticateStage, IssuerTrust, TokenCache, TokenValidator
from security.inspection.wiring import Inspection, build_inspection, policy_source
from security.issuer import EmbeddedIssuer, load_signing_key
from security.jwks import FileKeySource, JwksError, KeySource, RemoteKeySource, StaticKeySource
from security.scopes import ScopeAuthorizeStage

log = logging.getLogger("gateway.app")

Clock = Callable[[], float]


@dataclass
class Components:
    settings: Settings
    metrics: Metrics
    validator: TokenValidator
    issuer: EmbeddedIssuer | None
    ranker: Ranker | None
    features: FeatureStore | None
    http: httpx.AsyncClient
    audit: AuditLog | None = None
    policy: PolicyManager | None = None
    privacy: Privacy | None = None
    clock: Clock = time.time
    not_ready: dict[str, str] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    models: ModelRegistry | None = None
    variant_metrics: VariantMetrics | None = None
    inspection: Inspection | None = None

    def context(self, request: Request, action: str, body: bytes = b"") -> RequestContext:
        return RequestContext(
            request_id=request.scope["state"]["request_id"],
            action=action,
            route=request.scope["path"],
            headers=request.headers,
            body=body,
            received_at=self.clock(),
        )

    def pipeline(self, name: str) -> Pipeline:
        return self.pipelines[name]


def components_of(request: Request) -> Components:
    found: Components = request.app.state.components
    return found


def _trusted_issuers(
    settings: Settings, issuer: EmbeddedIssuer | None, http: httpx.AsyncClient
) -> list[IssuerTrust]:
    trusts: list[IssuerTrust] = []
    if issuer is not None:
        trusts.append(
            IssuerTrust(
                issuer=issuer.issuer_url,
                audiences=frozenset({settings.issuer.audience}),
                algorithms=frozenset({"RS256"}),
                keys=StaticKeySource(issuer.jwks()),
                required_typ="at+jwt",
                tenant_claim="tenant",
            )
        )
    auth = settings.auth
    for trusted in auth.trusted_issuers:
        keys: KeySource
        if trusted.jwks_url is not None:
            keys = RemoteKeySource(
                trusted.jwks_url,
                client=http,
                ttl_s=auth.jwks_cache_ttl_s,
                min_refresh_interval_s=auth.jwks_min_refresh_interval_s,
                # Refresh pacing is wall-clock independent: monotonic, not the token clock.
                clock=time.monotonic,
            )
        else:
            assert trusted.jwks_file is not None  # noqa: S101 - enforced by the settings model
            try:
                keys = FileKeySource(
                    settings.resolve(trusted.jwks_file),
                    min_refresh_interval_s=auth.jwks_min_refresh_interval_s,
                    clock=time.monotonic,
                )
            except JwksError as exc:
                raise ConfigurationError(str(exc)) from exc
        trusts.append(
            IssuerTrust(
                issuer=trusted.issuer,
                audiences=frozenset(trusted.audiences),
                algorithms=frozenset(trusted.algorithms),
                keys=keys,
                required_typ=trusted.required_typ,
                tenant_claim=trusted.tenant_claim,
            )
        )
    if not trusts:
        raise ConfigurationError(
            "no token issuer is trusted: enable the embedded issuer "
            "or configure auth.trusted_issuers"
        )
    return trusts


def _load_model(c: Components) -> None:
    """Load the signed packages the gateway serves; a refused one is reported not-ready."""
    settings = c.settings
    cfg = settings.model

    def make_ranker(name: str, version: str, model_bytes: bytes) -> Ranker:
        return Ranker(
            name=name,
            version=version,
            model_bytes=model_bytes,
            intra_op_threads=cfg.intra_op_threads,
            inference_threads=cfg.inference_threads,
            graph_optimization_level=cfg.graph_optimization_level,
            observe=inference_observer(c.metrics, name),
        )

    manager = c.policy
    opened = open_models(
        settings, make_ranker, lambda: manager.active.data if manager is not None else None
    )
    c.models = opened.registry
    c.not_ready.update(opened.not_ready)
    primary = opened.registry.primary(cfg.name)
    c.ranker = primary.ranker if primary is not None else None
    if c.ranker is None and not c.not_ready:
        c.not_ready["model"] = f"{cfg.name} {cfg.version} not loaded"
    c.features = FeatureStore.load(settings.resolve(cfg.features_path))


def create_app(settings: Settings, *, clock: Clock = time.time) -> FastAPI:
    """Build the gateway. Raises `ConfigurationError` for settings it refuses to run with."""
    settings.check_secrets()
    metrics = Metrics()
    http = httpx.AsyncClient(timeout=settings.auth.jwks_fetch_timeout_s, follow_redirects=False)
    issuer: EmbeddedIssuer | None = None
    if settings.issuer.enabled:
        issuer = EmbeddedIssuer(
            settings.issuer,
            issuer_url=settings.issuer_url,
            signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
            clock=clock,
        )
    validator = TokenValidator(
        _trusted_issuers(settings, issuer, http),
        leeway_s=settings.auth.leeway_s,
        cache=TokenCache(
            settings.secret_key.get_secret_value().encode(), settings.auth.token_cache_size, clock
        ),
        clock=clock,
    )
    components = Components(
        settings=settings,
        metrics=metrics,
        validator=validator,
        issuer=issuer,
        ranker=None,
        features=None,
        http=http,
        clock=clock,
    )
    if settings.policy.engine == "cedar":
        components.policy = _open_policy(settings)
        metrics.observe_policy(components.policy.active)
    else:
        log.warning("POLICY ENGINE OFF (dev mode): authorization by fixed scope table")
    # After the policy: loading checks each package against it (names, min_version).
    try:
        _load_model(components)
    except (ConfigurationError, OSError, ValueError) as exc:
        # Not-ready rather than refusing to start: /readyz says why, nothing else is served.
        components.not_ready["model"] = str(exc)
        log.error("model %s not loaded: %s", settings.model.name, exc)
    metrics.model_ready.labels(settings.model.name).set(0 if components.not_ready else 1)
    components.variant_metrics = VariantMetrics.register(metrics.registry)
    if settings.audit.enabled:
        components.audit = open_audit_log(settings, clock=clock)
    else:
        log.warning("AUDIT LOG DISABLED (dev mode): requests are not recorded")
    components.privacy = open_privacy(
        settings,
        policy=_data_policy(components),
        audit=components.audit,
        features=components.features,
        clock=clock,
    )
    # Stage 5 and the per-client rate limits: built once, so a model hot swap (which
    # rebuilds the pipelines) keeps every client's detector, rate and budget state.
    components.inspection = build_inspection(
        settings,
        policy_source(components.policy),
        metrics.registry,
        clock,
        # From the feature store, not the model: a model hot-loaded later is inspected too.
        model_loaded=components.features is not None,
        feature_stats=_manifest_stats(components),
        live_tables=components.features.tables() if components.features is not None else None,
    )
    if components.features is not None:
        components.features.on_forget(components.inspection.forget_user_row)
    _build_pipelines(components)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if components.audit is not None:
            components.audit.start_publisher(settings.audit.checkpoint_interval_s)
            retention = _retention_days(components)
            if retention is not None:
                components.audit.start_retention(retention)
        watchers = _start_policy_triggers(components)
        yield
        for task in watchers:
            task.cancel()
        await http.aclose()
        if components.inspection is not None:
            await components.inspection.aclose()
        if components.models is not None:
            components.models.close()
        if components.audit is not None:
            await components.audit.close()
            components.audit.store.close()
        if components.privacy is not None:
            components.privacy.close()

    app = FastAPI(
        title="Secure model gateway",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.components = components
    install_error_handlers(app)
    from gateway.routes import admin, audit, health, models_admin, oauth, oip, rank, subjects

    for router in (
        rank.router,
        oip.router,
        audit.router,
        admin.router,
        models_admin.router,
        oauth.router,
        health.router,
        subjects.router,
    ):
        app.include_router(router)
    app.add_middleware(
        TransportMiddleware,
        metrics=metrics,
        max_body_bytes=settings.limits.max_body_bytes,
        timeout_s=settings.limits.request_timeout_s,
        clock=clock,
        on_refusal=(
            transport_refusal_recorder(components.audit, clock) if components.audit else None
        ),
    )
    return app


class ModelNotLoadedStage:
    """Stage 6 stand-in while the model is not loaded: refuse, after authn and audit."""

    name = "rank"

    def __init__(self, reason: str) -> None:
        self._reason = reason

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        raise ModelNotReady("the model is not loaded", log_cause=self._reason)


def _open_policy(settings: Settings) -> PolicyManager:
    cfg = settings.policy
    keys = list(cfg.trusted_keys)
    key_file = settings.resolve(cfg.trusted_keys_file)
    if key_file.is_file():
        keys += [line.strip() for line in key_file.read_text().splitlines() if line.strip()]
    try:
        manager = PolicyManager(
            settings.resolve(cfg.bundle), trusted_keys=keys, allow_unsigned=settings.dev_mode
        )
        if cfg.shadow_bundle is not None:
            manager.set_shadow(settings.resolve(cfg.shadow_bundle))
    except (PolicyError, OSError) as exc:
        # No earlier bundle exists to fall back to: refuse to start rather than guess.
        raise ConfigurationError(f"policy bundle refused: {exc}") from exc
    return manager


async def reload_policy(components: Components, trigger: str) -> ReloadResult:
    """Reload from disk; audited and counted whether or not the candidate is taken."""
    manager = components.policy
    assert manager is not None  # noqa: S101 - callers check
    previous = manager.active
    result = await asyncio.to_thread(manager.reload)
    outcome = "swapped" if result.swapped else ("refused" if result.error else "unchanged")
    components.metrics.policy_reloads.labels(outcome).inc()
    if result.swapped:
        components.metrics.observe_policy(result.bundle)
        if components.models is not None:
            # The new bundle may name new A/B arms or a shadow version: load them now.
            await load_missing_versions(
                components.models, components.settings, result.bundle.data, components.not_ready
            )
            if "model" in components.not_ready and components.ranker is not None:
                # The new bundle refuses the primary version: refuse rank and infer until
                # an allowed version is loaded (POST /v1/admin/models/.../load).
                components.ranker = None
                _build_pipelines(components)
                name = components.settings.model.name
                components.metrics.model_ready.labels(name).set(0)
    if components.audit is not None:
        await components.audit.append(
            event_record(
                KIND_POLICY_RELOAD,
                int(components.clock() * 1000),
                trigger=trigger,
                outcome=outcome,
                previous_bundle=previous.content_hash,
                policy_bundle=result.bundle.content_hash,
                error=result.error,
            )
        )
    return result


def _start_policy_triggers(c: Components) -> list[asyncio.Task[None]]:
    manager = c.policy
    if manager is None:
        return []
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    def on_sighup() -> None:
        tasks.append(loop.create_task(_quietly(reload_policy(c, "sighup"))))

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (ValueError, RuntimeError, NotImplementedError):
        log.info("SIGHUP reload unavailable here (not the main thread)")
    interval = c.settings.policy.watch_interval_s
    if interval > 0:

        async def watch() -> None:
            while True:
                await asyncio.sleep(interval)
                if await asyncio.to_thread(manager.changed_on_disk):
                    await _quietly(reload_policy(c, "file-change"))

        tasks.append(loop.create_task(watch(), name="policy-watch"))
    return tasks


async def _quietly(reload: Awaitable[ReloadResult]) -> None:
    try:
        await reload
    except AppendFailed as exc:
        log.error("policy reload not audited: %s", exc)


def _retention_days(c: Components) -> Callable[[], int] | None:
    """Audit retention: the config's override, else the policy bundle's (re-read on reload)."""
    override = c.settings.audit.retention_days
    if override is not None:
        return lambda: override
    manager = c.policy
    if manager is None:
        return None
    return lambda: manager.active.data.retention.audit_days


def _output_policy(c: Components) -> Callable[[str], OutputShape]:
    """The respond stage's output hardening, read from the bundle in force at each call."""
    manager = c.policy
    if manager is None:
        return lambda _model: OutputShape()

    def output_for(model: str) -> OutputShape:
        policy = manager.active.data.model(model)
        if policy is None:
            return OutputShape()
        out = policy.output
        return OutputShape(mode=out.mode, decimals=out.decimals, max_k=out.max_k)

    return output_for


def _data_policy(c: Components) -> Callable[[], tuple[DataPolicy | None, str]]:
    """The privacy stages' view of the bundle in force (data policy, content hash)."""

    def current() -> tuple[DataPolicy | None, str]:
        if c.policy is None:
            return None, "no-bundle"
        bundle = c.policy.active
        return bundle.data, bundle.content_hash

    return current


def _manifest_stats(c: Components) -> dict[str, dict[str, list[float]]] | None:
    """The primary package's training statistics for stage 5 (None: computed from the store)."""
    loaded = c.models.primary(c.settings.model.name) if c.models is not None else None
    return (loaded.feature_stats or None) if loaded is not None else None


def _build_pipelines(c: Components) -> None:
    limits = c.settings.limits
    authn = AuthenticateStage(c.validator)
    authz: Stage = (
        PolicyAuthorizeStage(
            c.policy, model_name=c.settings.model.name, model_version=c.settings.model.version
        )
        if c.policy is not None
        else ScopeAuthorizeStage()
    )
    if c.inspection is not None:
        # The per-client rate limit runs inside stage 2: before the body is parsed.
        authz = c.inspection.authorize(authz)
    observe = c.metrics.observe_stage
    final = [AuditStage(c.audit, c.clock)] if c.audit is not None else []

    def pipeline(*stages: Stage) -> Pipeline:
        return Pipeline([authn, authz, *stages], final=final, observe=observe)

    subject_actions = ("consent.write", "consent.read", "subject.read", "subject.erase")
    for action in ("model.read", "audit.read", "audit.export", "admin", *subject_actions):
        c.pipelines[action] = pipeline()
    if c.ranker is None or c.features is None:
        missing = ModelNotLoadedStage("; ".join(c.not_ready.values()))
        c.pipelines["rank"] = pipeline(missing)
        c.pipelines["infer"] = pipeline(missing)
        return
    privacy = c.privacy
    inspect = (c.inspection.stage(),) if c.inspection is not None else ()
    c.pipelines["rank"] = pipeline(
        RankDecodeStage(
            max_candidates=limits.max_candidates, max_context_chars=limits.max_context_chars
        ),
        *(privacy.rank_stages() if privacy is not None else ()),
        *inspect,
        _rank_stage(c, c.features),
        RankRespondStage(_output_policy(c)),
    )
    c.pipelines["infer"] = pipeline(
        InferDecodeStage(c.ranker.inputs, c.ranker.outputs, max_rows=limits.max_candidates),
        *((privacy.redact_stage(),) if privacy is not None else ()),
        *inspect,
        InferStage(c.ranker),
        InferRespondStage(c.ranker.outputs, _output_policy(c)),
    )


def _rank_stage(c: Components, features: FeatureStore) -> Stage:
    """Stage 6 of /v1/rank: the A/B arm (or the primary) of the registry, read per request."""
    name = c.settings.model.name
    if c.models is None or c.variant_metrics is None:
        assert c.ranker is not None  # noqa: S101 - callers check
        return RankStage(c.ranker, features, features_tenant=c.settings.model.features_tenant)
    manager = c.policy

    def variants_for(model: str) -> tuple[tuple[Variant, ...], str | None]:
        policy = manager.active.data.model(model) if manager is not None else None
        return (policy.variants, policy.shadow_version) if policy is not None else ((), None)

    return VariantRankStage(
        name,
        c.models,
        stage_for=lambda loaded: RankStage(
            loaded.ranker, features, features_tenant=c.settings.model.features_tenant
        ),
        variants_for=variants_for,
        salt=variant_salt(c.settings.secret_key.get_secret_value().encode()),
        metrics=c.variant_metrics,
    )
