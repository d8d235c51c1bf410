"""Builds stage 5 and the rate limiters from the settings, in process or on Redis."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.derivation import Purpose
from gateway.errors import ConfigurationError
from gateway.pipeline import InferQuery, InspectionView, RankQuery, Stage
from gateway.settings import Settings
from models import load_arrays
from policies import PolicyReader
from security.inspection.admission import Admission, Admits
from security.inspection.bounds import Bounds
from security.inspection.budget import Budgets, MemoryBudgets, RedisBudgets
from security.inspection.detector import Detector
from security.inspection.fingerprint import Fingerprinter
from security.inspection.metrics import InspectionMetrics
from security.inspection.perturb import ScorePerturber
from security.inspection.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from security.inspection.stage import InspectStage, RateLimitedAuthorize, enforce_rate
from security.inspection.state import DetectorState, MemoryState, RedisState
from security.inspection.stats import FeatureStats, check_stats, feature_stats_from_tables

log = logging.getLogger("gateway.inspection")

ID_INPUTS = ("user_id", "item_id")
FEATURE_INPUTS = ("user_features", "item_features")
# Which id input indexes the reference table of each feature input (the feature store).
TABLE_OF = {
    "user_features": ("user_id", "user_features"),
    "item_features": ("item_id", "item_features"),
}

Clock = Callable[[], float]


@dataclass
class Inspection:
    limiter: RateLimiter
    budgets: Budgets
    state: DetectorState
    detector: Detector | None
    metrics: InspectionMetrics
    policy: PolicyReader
    clock: Clock
    expose_verdict: bool
    redis: Any = None
    secret: bytes = b""
    perturber: ScorePerturber | None = None
    # Stage 5's limits and cool-down as one call, over the three objects above.
    admission: Admits | None = None

    def __post_init__(self) -> None:
        if self.admission is None:
            self.admission = Admission(self.limiter, self.budgets, self.state)

    def authorize(self, inner: Stage) -> Stage:
        return RateLimitedAuthorize(inner, self.limiter, self.policy, self.metrics, self.clock)

    def stage(self) -> InspectStage:
        assert self.admission is not None  # noqa: S101 - set in __post_init__
        return InspectStage(
            self.detector,
            self.admission,
            self.policy,
            self.metrics,
            self.clock,
            secret=self.secret,
        )

    def perturb(self, query: RankQuery | InferQuery, scores: Any) -> Any:
        """Stage 7's hook: the served scores with the bundle's keyed perturbation
        (`detection.perturbation`; unchanged when off, and for answers to ids alone:
        `_client_chose_values`). Call it on a model's score output before output hardening
        (rounding, ranks): the ranking within the request is kept. One score per row."""
        rules = self.policy.in_force().data.detection.perturbation
        if (
            not rules.enabled
            or self.perturber is None
            or not isinstance(query, InferQuery)
            or not _client_chose_values(query)
        ):
            return scores
        values = np.asarray(scores)
        keys = self.perturber.row_keys(query.feeds, values.size)
        return self.perturber.apply(values, keys, rules.max_offset)

    async def limit_token_endpoint(self, source: str) -> None:
        """/oauth/token per source address, before the body is read or a secret hashed."""
        rates = self.policy.in_force().data.rate_limits
        await enforce_rate(
            self.limiter,
            "t:" + source,
            rate=rates.token_endpoint_rps,
            burst=rates.token_endpoint_burst,
            now=self.clock(),
            refused=self.metrics.refusal("token"),
            what="token endpoint rate limit",
        )

    def forget_user_row(self, row: int) -> None:
        """Erasure of a user's feature row (FeatureStore.on_forget)."""
        if self.detector is not None:
            self.detector.fingerprinter.forget("user_id", row)

    def verdict_headers(self, inspection: InspectionView | None) -> dict[str, str]:
        if not self.expose_verdict:
            return {}
        verdict = inspection.verdict if inspection is not None else "allow"
        return {"X-Inspection-Verdict": verdict}

    async def ping(self) -> None:
        """Raises while the shared state (Redis) cannot answer; in process, nothing to do."""
        if self.redis is not None:
            await self.redis.ping()

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def build_detector(
    settings: Settings,
    state: DetectorState,
    *,
    feature_stats: Mapping[str, Any] | None = None,
    features_path: Path | None = None,
    live_tables: Mapping[str, Any] | None = None,
) -> Detector:
    """From the manifest's feature_stats when given; else computed from the feature store.

    `live_tables`: the serving FeatureStore's tables, so stage 5 never holds rows that
    erasure has already blanked (read from `features_path` when not given).
    """
    if live_tables is not None:
        arrays = dict(live_tables)
    else:
        arrays = load_arrays(features_path or settings.resolve(settings.model.features_path))
    tables = {name: (id_name, arrays[table]) for name, (id_name, table) in TABLE_OF.items()}
    if feature_stats is not None:
        stats: FeatureStats = check_stats(feature_stats)
    else:
        stats = feature_stats_from_tables(arrays["user_features"], arrays["item_features"])
    fingerprinter = Fingerprinter(
        stats,
        secret=settings.derived_keys[Purpose.INSPECTION],
        feature_inputs=FEATURE_INPUTS,
        id_inputs=ID_INPUTS,
        tables=tables,
    )
    bounds = Bounds(stats, id_inputs=ID_INPUTS, feature_inputs=FEATURE_INPUTS)
    return Detector(fingerprinter, bounds, state)


def build_inspection(
    settings: Settings,
    policy: PolicyReader,
    registry: Any,
    clock: Clock,
    *,
    model_loaded: bool,
    feature_stats: Mapping[str, Any] | None = None,
    live_tables: Mapping[str, Any] | None = None,
) -> Inspection:
    cfg = settings.inspection
    if cfg.expose_verdict and not settings.dev_mode:
        raise ConfigurationError("inspection.expose_verdict is accepted only in dev mode")
    redis: Any = None
    limiter: RateLimiter
    budgets: Budgets
    state: DetectorState
    if cfg.redis_url is not None:
        import redis.asyncio as redis_asyncio

        redis = redis_asyncio.Redis.from_url(
            cfg.redis_url.get_secret_value(), socket_timeout=1.0, socket_connect_timeout=1.0
        )
        limiter = RedisRateLimiter(redis, prefix=cfg.redis_prefix)
        budgets = RedisBudgets(redis, prefix=cfg.redis_prefix)
        state = RedisState(redis, prefix=cfg.redis_prefix)
    else:
        limiter = MemoryRateLimiter()
        budgets = MemoryBudgets()
        state = MemoryState(max_clients=cfg.max_clients)
    detector = None
    if cfg.enabled and model_loaded:
        try:
            detector = build_detector(
                settings, state, feature_stats=feature_stats, live_tables=live_tables
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"input inspection cannot start: {exc}") from exc
    elif not cfg.enabled:
        log.warning("INPUT INSPECTION OFF: only rate limits and query budgets apply")
    return Inspection(
        limiter=limiter,
        budgets=budgets,
        state=state,
        detector=detector,
        metrics=InspectionMetrics(registry),
        policy=policy,
        clock=clock,
        expose_verdict=cfg.expose_verdict,
        redis=redis,
        secret=settings.derived_keys[Purpose.INSPECTION],
        perturber=ScorePerturber(settings.derived_keys[Purpose.INSPECTION]),
    )


def _client_chose_values(query: InferQuery) -> bool:
    """Whether the client chose any feature value (raw tensors, declared client features).
    Only then can it difference scores over nearby inputs, which the perturbation spoils;
    an answer to ids alone (/v1/rank, OIP by ids) is a fixed function of the ids, which
    a repeatable offset does not hide, so it is served as the model scored it."""
    if query.client_inputs is None:
        return True  # raw tensors: every value is the client's
    return any(
        np.asarray(query.feeds[name]).dtype.kind == "f"
        for name in query.client_inputs
        if name in query.feeds
    )
