"""What the gateway serves: the model registry, the primary version, and why anything is
not served.

`Serving` is the one owner of that state. It opens the keyring and the registry,
loads every version the gateway must serve (the configured one, plus each A/B
variant and the shadow version of the bundle), activates versions, applies a new
policy to the loaded versions, and derives readiness: a list of typed `NotReady`
records, computed from the refusals it saw and the registry's state, never kept
by hand. A version that fails to load is reported with its loader step; nothing
else is served in its place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.derivation import Purpose
from gateway.errors import ConfigurationError, InvalidRequest, NotFound
from gateway.metrics import Metrics
from gateway.settings import Settings
from models.drift import DriftBoard
from models.features import FeatureStore
from models.loader import PolicyView, check_policy
from models.ort import resolve_providers
from models.package_errors import ModelPackageError, PolicyRefusedError
from models.ranker import Ranker
from models.registry import LoadedModel, ModelRegistry
from models.remote import RemoteBackend, RemoteOptions
from models.signing import TrustedSigner, parse_public_key, read_public_keys
from models.watermark import served_mark
from policies import DataPolicy, PolicyInForce, PolicyReader
from security import keyring_from_settings

log = logging.getLogger("gateway.models")


@dataclass(frozen=True, slots=True)
class NotReady:
    """One reason the gateway is not ready: which model version, at which loader step."""

    name: str
    version: str | None  # None: the model as a whole (start-up failed, primary refused)
    step: str  # the loader step (read, signature, policy, ...), or "start"
    error: str  # the error class, or a one-line reason at start
    detail: str = ""  # for the log and the refusing stage's log cause, never the client

    @property
    def key(self) -> str:
        return "model" if self.version is None else f"model:{self.name}@{self.version}"

    @property
    def public(self) -> str:
        """What `/readyz` shows: step and error class; paths and details stay in the log."""
        return self.error if self.step == "start" else f"{self.step}: {self.error}"

    def __str__(self) -> str:
        return f"{self.key}: {self.public}" + (f" ({self.detail})" if self.detail else "")


def _refusal(name: str, version: str, exc: ModelPackageError) -> NotReady:
    return NotReady(name, version, str(exc.step), type(exc).__name__, str(exc))


def trusted_signers(settings: Settings, policy: PolicyReader) -> Callable[[], list[TrustedSigner]]:
    """Config keys, the key file written by init, and the bundle's model_signers (re-read)."""
    cfg = settings.packages
    fixed: list[TrustedSigner] = []
    try:
        fixed += [parse_public_key(k, f"config#{i}") for i, k in enumerate(cfg.trusted_signer_keys)]
        key_file = settings.resolve(cfg.trusted_signer_keys_file)
        if key_file.is_file():
            fixed += read_public_keys(key_file, key_file.name)
    except (ValueError, OSError) as exc:
        raise ConfigurationError(f"trusted model-signing keys: {exc}") from exc

    def current() -> list[TrustedSigner]:
        signers = policy.in_force().data.model_signers
        return [*fixed, *(parse_public_key(s.public_key, f"policy:{s.name}") for s in signers)]

    return current


def policy_view(data: DataPolicy) -> PolicyView:
    allowed = frozenset(n for n, m in data.models.items() if not m.blocked)

    def minimum(name: str) -> str | None:
        found = data.model(name)
        return None if found is None else found.min_version

    return PolicyView(allowed_names=allowed, min_version=minimum)


def wanted_versions(settings: Settings, data: DataPolicy) -> list[str]:
    """The configured version first, then the bundle's variants and shadow version."""
    versions = [settings.model.version]
    model = data.model(settings.model.name)
    if model is not None:
        versions += [v.version for v in model.variants]
        if model.shadow_version is not None:
            versions.append(model.shadow_version)
    return list(dict.fromkeys(versions))


class Serving:
    """The served model's registry, primary version and readiness (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        registry: ModelRegistry | None,
        features: FeatureStore | None,
        start_error: NotReady | None = None,
    ) -> None:
        self._settings = settings
        self.name = settings.model.name
        self._metrics = metrics
        self._registry = registry
        self.features = features
        self._start_error = start_error
        self._refused: dict[str, NotReady] = {}  # version -> why it was refused
        self._primary_refused: NotReady | None = None  # the policy refuses the primary
        # Stage 6's remote server (model.backend = "remote"), shared by every version.
        self.remote: RemoteBackend | None = None

    # -- what is served ----------------------------------------------------------------

    @property
    def ranker(self) -> Ranker | None:
        """The primary version's ranker; None while none is loaded or the policy refuses it."""
        primary = self.primary()
        return primary.ranker if primary is not None else None

    def primary(self) -> LoadedModel | None:
        if self._registry is None or self._primary_refused is not None:
            return None
        return self._registry.primary(self.name)

    def loaded(self) -> list[LoadedModel]:
        return self._registry.loaded() if self._registry is not None else []

    def registry(self, name: str) -> ModelRegistry:
        """The registry, for operators acting on model `name` (404 if not served here)."""
        if self._registry is None:
            raise NotFound("model packages are not in use")
        if name != self.name:
            raise NotFound("the model is not served here")
        return self._registry

    # -- readiness (derived) -----------------------------------------------------------

    def not_ready(self) -> list[NotReady]:
        found = list(self._refused.values())
        if self._start_error is not None:
            found.append(self._start_error)
        elif self._primary_refused is not None:
            found.append(dataclasses.replace(self._primary_refused, version=None))
        elif self.primary() is None and not found:
            version = self._settings.model.version
            found.append(NotReady(self.name, None, "start", "NotLoaded", f"{version} not loaded"))
        if self.remote is not None and self.remote.breaker.state == "open":
            # Only while it cools down: half-open must let traffic in, or nothing probes.
            found.append(NotReady(self.name, None, "remote", "CircuitOpen", "breaker open"))
        return found

    @property
    def ready(self) -> bool:
        return not self.not_ready()

    def observe(self) -> None:
        """Publish readiness to the `model_ready` gauge."""
        self._metrics.model_ready.labels(self.name).set(1 if self.ready else 0)

    def fail_start(self, reason: NotReady) -> None:
        self._start_error = reason
        self.observe()

    # -- changes (called by the control plane and at start) ----------------------------

    def load_wanted(self, data: DataPolicy) -> None:
        """At start: load every wanted version (blocking), activate the configured one."""
        registry = self._registry
        if registry is None:
            self.observe()
            return
        for version in wanted_versions(self._settings, data):
            try:
                registry.load(self.name, version)
            except ModelPackageError as exc:
                self._refused[version] = _refusal(self.name, version, exc)
                log.error("model %s %s refused at step %s: %s", self.name, version, exc.step, exc)
        if registry.get(self.name, self._settings.model.version) is not None:
            registry.activate(self.name, self._settings.model.version)
        self.observe()

    def adopt_plaintext(self, ranker: Ranker | None, error: str | None) -> None:
        """The unsafe dev path: a plain .onnx file served unsigned (or why it failed)."""
        version = self._settings.model.version
        if ranker is None or self._registry is None:
            self._refused[version] = NotReady(self.name, version, "plaintext model", error or "")
        else:
            self._registry.adopt(LoadedModel(ranker, None))
            self._registry.activate(self.name, version)
        self.observe()

    async def build(self, name: str, version: str) -> LoadedModel:
        """Verify, decrypt and build a package's session off the loop; nothing changes yet.

        A refused package raises InvalidRequest naming the loader step."""
        registry = self.registry(name)
        try:
            return await asyncio.to_thread(registry.build, name, version)
        except ModelPackageError as exc:
            # Name and version came from the admin API's path: not echoed (issue 13).
            log.error("hot load of a model package refused at step %s: %s", exc.step, exc)
            raise InvalidRequest(
                f"model package refused at step {exc.step}: {type(exc).__name__}",
                log_cause=str(exc),
            ) from None

    def install(self, loaded: LoadedModel, *, activate: bool) -> None:
        """Make a built model available and, if asked, primary. Nothing here awaits: the
        swap is one step for every request, and of two concurrent loads the one installed
        last is primary."""
        registry = self.registry(loaded.name)
        name, version = loaded.name, loaded.version
        registry.register(loaded)
        self._refused.pop(version, None)
        if activate:
            previous = registry.activate(name, version)
            self._primary_refused = None
            self._refused.pop(self._settings.model.version, None)
            if previous is not None and registry.get(name, previous.version) is not previous:
                # Replaced by a reload of the same version: nobody new can reach it.
                registry.retire(previous, registry.retire_grace_s)
            log.info("model %s %s is now primary", name, version)
        self.observe()

    def refuse_by_policy(self, data: DataPolicy) -> bool:
        """After a policy swap, at once (no await): stop serving loaded versions the new
        bundle refuses (a raised `min_version` is anti-rollback now, not at the next restart).
        True when that refuses the primary, which makes the model not ready."""
        registry = self._registry
        if registry is None:
            return False
        was_serving = self.primary() is not None
        view = policy_view(data)
        for loaded in registry.loaded():
            try:
                check_policy(loaded.name, loaded.version, view)
            except PolicyRefusedError as exc:
                refusal = _refusal(loaded.name, loaded.version, exc)
                self._refused[loaded.version] = refusal
                log.error(
                    "model %s %s refused by the new policy: %s", loaded.name, loaded.version, exc
                )
                if registry.primary(loaded.name) is loaded:
                    self._primary_refused = refusal
                elif (old := registry.unload(loaded.name, loaded.version)) is not None:
                    registry.retire(old, registry.retire_grace_s)
        self.observe()
        return was_serving and self.primary() is None

    async def load_named(self, data: DataPolicy) -> None:
        """After a policy swap: load the A/B arms and the shadow version the bundle names
        (not primary), and forget refusals of versions it no longer asks for."""
        registry = self._registry
        if registry is None:
            return
        wanted = wanted_versions(self._settings, data)
        for version in list(self._refused):
            if version not in wanted and registry.get(self.name, version) is None:
                del self._refused[version]  # the bundle no longer asks for that version
        for version in wanted:
            if registry.get(self.name, version) is not None:
                continue
            try:
                await asyncio.to_thread(registry.load, self.name, version)
            except ModelPackageError as exc:
                self._refused[version] = _refusal(self.name, version, exc)
                log.error("model %s %s refused at step %s: %s", self.name, version, exc.step, exc)
            else:
                self._refused.pop(version, None)
        self.observe()

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()

    async def aclose(self) -> None:
        """Close the remote server's connections (on the loop that opened them), then
        the sessions."""
        if self.remote is not None:
            await self.remote.aclose()
        self.close()


class ExecutionProviders(Collector):
    """`gateway_model_execution_provider{model,version,provider,rank}`: what runs each
    loaded version (onnxruntime's providers in use, or `remote-oip`), and the remote
    breaker's state; read at scrape time, so it cannot disagree with what is served."""

    def __init__(self, serving: Serving) -> None:
        self._serving = serving

    def collect(self) -> Iterator[GaugeMetricFamily]:
        providers = GaugeMetricFamily(
            "gateway_model_execution_provider",
            "1 for each execution provider a loaded model version runs on (rank 0 first)",
            labels=["model", "version", "provider", "rank"],
        )
        for model in self._serving.loaded():
            for rank, provider in enumerate(model.ranker.providers):
                providers.add_metric([model.name, model.version, provider, str(rank)], 1)
        yield providers
        remote = self._serving.remote
        if remote is not None:
            yield GaugeMetricFamily(
                "gateway_model_remote_circuit_open",
                "1 while the remote ranker's circuit breaker refuses calls (cooling down)",
                value=1 if remote.breaker.state == "open" else 0,
            )


def _start_failure(name: str, exc: Exception) -> NotReady:
    log.error("model %s not loaded: %s", name, exc)
    return NotReady(name, None, "start", type(exc).__name__, str(exc))


def inference_observer(metrics: Metrics, name: str) -> Callable[[float, int], None]:
    seconds, rows = metrics.inference_observer(name)

    def observe(elapsed: float, n: int) -> None:
        seconds.observe(elapsed)
        rows.observe(n)

    return observe


def open_registry(
    settings: Settings, policy: PolicyReader, make_ranker: Callable[[str, str, bytes], Ranker]
) -> ModelRegistry:
    """A registry that checks packages against the policy in force (the gateway, the CLI)."""
    return ModelRegistry(
        settings.resolve(settings.packages.directory),
        trusted=trusted_signers(settings, policy),
        keyring=keyring_from_settings(settings),
        policy=lambda: policy_view(policy.in_force().data),
        make_ranker=make_ranker,
        max_bytes=settings.packages.max_package_bytes,
        retire_grace_s=settings.limits.request_timeout_s + 1,
    )


def remote_backend(settings: Settings) -> RemoteBackend:
    """The remote ranker's client (model.backend = "remote"), within the request timeout."""
    cfg = settings.model.remote
    if cfg.url is None:
        raise ConfigurationError("model.backend = remote needs model.remote.url")
    if cfg.deadline_s >= settings.limits.request_timeout_s:
        raise ConfigurationError(
            "model.remote.deadline_s must be shorter than limits.request_timeout_s"
        )
    return RemoteBackend(
        RemoteOptions(
            url=cfg.url,
            model_name=cfg.model_name,
            send_version=cfg.send_version,
            binary=cfg.binary,
            unit_axis=cfg.unit_axis,
            max_connections=cfg.max_connections,
            connect_timeout_s=cfg.connect_timeout_s,
            attempt_timeout_s=cfg.attempt_timeout_s,
            deadline_s=cfg.deadline_s,
            retries=cfg.retries,
            backoff_ms=cfg.backoff_ms,
            breaker_failures=cfg.breaker_failures,
            breaker_cooldown_s=cfg.breaker_cooldown_s,
        )
    )


def open_serving(
    settings: Settings,
    metrics: Metrics,
    policy: PolicyInForce,
    *,
    alone: Callable[[], bool] | None = None,
) -> Serving:
    """Open the keyring, the registry and the feature store, and load what must be served.

    Never raises for a model that cannot be served: the gateway starts not-ready and
    `/readyz` says why (nothing else is served in its place)."""
    cfg = settings.model
    # A provider this build lacks, without the CPU fallback: refuse to start (raises).
    providers = resolve_providers(cfg.execution_providers)
    observe = inference_observer(metrics, cfg.name)
    opened: list[ModelRegistry] = []
    remote = remote_backend(settings) if cfg.backend == "remote" else None
    batch = cfg.batching
    batching = (batch.max_wait_ms / 1000, batch.max_rows) if batch.enabled else None

    def stats_for(name: str, version: str) -> dict[str, dict[str, list[float]]] | None:
        loaded = opened[0].get(name, version) if opened else None
        return loaded.feature_stats if loaded is not None else None

    drift = DriftBoard(stats_for).register(metrics.registry)
    mark_secret = settings.derived_keys[Purpose.MODEL_WATERMARK]

    def make_ranker(name: str, version: str, model_bytes: bytes) -> Ranker:
        return Ranker(
            name=name,
            version=version,
            model_bytes=model_bytes,
            intra_op_threads=cfg.intra_op_threads,
            inference_threads=cfg.inference_threads,
            graph_optimization_level=cfg.graph_optimization_level,
            observe=observe,
            watch=drift.watcher(name, version),
            marks=served_mark(mark_secret, name, version, policy, lambda: stats_for(name, version)),
            providers=providers,
            inline=cfg.inference_mode == "inline",
            batching=batching,
            remote=remote,
            alone=alone if cfg.inference_mode == "auto" else None,
        )

    def attach(serving: Serving) -> Serving:
        serving.remote = remote
        metrics.registry.register(ExecutionProviders(serving))
        return serving

    try:
        registry = open_registry(settings, policy, make_ranker)
        opened.append(registry)
    except (ConfigurationError, OSError, ValueError) as exc:
        serving = attach(
            Serving(
                settings,
                metrics,
                registry=None,
                features=None,
                start_error=_start_failure(cfg.name, exc),
            )
        )
        serving.load_wanted(policy.in_force().data)
        return serving
    serving = attach(Serving(settings, metrics, registry=registry, features=None))
    if settings.packages.unsafe_allow_plaintext_model:
        path = settings.resolve(cfg.path)
        log.warning(
            "UNSAFE: serving the plaintext, unsigned model %s (packages."
            "unsafe_allow_plaintext_model, dev mode only)",
            path,
        )
        try:
            serving.adopt_plaintext(
                make_ranker(cfg.name, cfg.version, Path(path).read_bytes()), None
            )
        except (OSError, ValueError) as exc:
            log.error("plaintext model %s not loaded: %s", path, exc)
            serving.adopt_plaintext(None, type(exc).__name__)
    else:
        serving.load_wanted(policy.in_force().data)
    try:
        serving.features = FeatureStore.load(settings.resolve(cfg.features_path))
    except (ConfigurationError, OSError, ValueError) as exc:
        serving.fail_start(_start_failure(cfg.name, exc))
    serving.observe()
    return serving
