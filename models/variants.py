"""A/B variants and shadow scoring for stage 6 (rank).

Assignment is a keyed hash of the user id: HMAC-SHA256(salt, model || user id),
read as a number in [0, 1) and placed on the cumulative weights of the bundle's
`variants`. It is stable (same user, same arm, on every replica: the salt is
derived from the shared secret key) and unpredictable without the salt (a client
cannot pick its arm by choosing user ids). Changing weights moves only the users
near a boundary.

A bundle with fewer than two variants splits nothing: the primary version (the
configured one, or what the admin API last loaded) serves every request.

Shadow mode scores the request with `shadow_version` too and returns the primary
answer; the shadow's outcome and score difference go to metrics only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.errors import GatewayError, InternalError, ModelNotReady
from gateway.metrics import CachedLabels
from gateway.pipeline import RankQuery, RankResult, RequestContext, Stage
from models.registry import LoadedModel, ModelRegistry
from policies import PolicyReader

log = logging.getLogger("gateway.models.variants")


class Variant(Protocol):
    """One A/B arm as the policy bundle declares it (policies.data_policy.Variant)."""

    @property
    def version(self) -> str: ...

    @property
    def weight(self) -> float: ...


StageFor = Callable[[LoadedModel], Stage]


def variant_label(index: int) -> str:
    return string.ascii_uppercase[index] if index < 26 else f"V{index}"


def assign(salt: bytes, model: str, user_id: str, variants: Sequence[Variant]) -> int:
    """Index of the variant this user gets; stable for (salt, model, user, weights)."""
    if not variants:
        raise ValueError("no variants to assign")
    digest = hmac.digest(salt, model.encode() + b"\0" + user_id.encode(), "sha256")
    point = int.from_bytes(digest[:8], "big") / 2.0**64
    total = sum(v.weight for v in variants)
    cumulative = 0.0
    for index, variant in enumerate(variants):
        cumulative += variant.weight / total
        if point < cumulative:
            return index
    return len(variants) - 1


@dataclass
class VariantMetrics:
    served: Counter
    shadow: Counter
    shadow_diff: Histogram

    @classmethod
    def register(cls, registry: CollectorRegistry) -> VariantMetrics:
        return cls(
            served=Counter(
                "gateway_model_variant_requests_total",
                "Rank requests by model, version and A/B variant",
                ["model", "version", "variant"],
                registry=registry,
            ),
            shadow=Counter(
                "gateway_model_shadow_requests_total",
                "Shadow scoring by model, shadow version and outcome",
                ["model", "version", "outcome"],
                registry=registry,
            ),
            shadow_diff=Histogram(
                "gateway_model_shadow_max_score_diff",
                "Largest |primary - shadow| score difference per request",
                ["model", "version"],
                buckets=(0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
                registry=registry,
            ),
        )


class VariantRankStage:
    """Stage 6 for a model with variants or a shadow: picks the arm, runs its rank stage."""

    name = "rank"

    def __init__(
        self,
        model: str,
        registry: ModelRegistry,
        *,
        stage_for: StageFor,
        policy: PolicyReader,
        salt: bytes,
        metrics: VariantMetrics,
        redirect: Callable[[str, str], str | None] | None = None,
    ) -> None:
        self._model = model
        # A guardrail's stop (models.experiments): the stopped version's users get this one.
        self._redirect = redirect
        self._registry = registry
        self._stage_for = stage_for
        self._policy = policy
        self._salt = salt
        self._metrics = metrics
        self._served = CachedLabels(metrics.served)
        self._stages: dict[int, tuple[LoadedModel, Stage]] = {}

    def _stage(self, loaded: LoadedModel) -> Stage:
        # Keyed by identity: a hot-swapped version gets a new stage, the old one is dropped.
        found = self._stages.get(id(loaded))
        if found is None or found[0] is not loaded:
            found = (loaded, self._stage_for(loaded))
            self._stages[id(loaded)] = found
        return found[1]

    def _arms(self) -> tuple[Sequence[Variant], str | None]:
        """The A/B arms and the shadow version the bundle in force names for the model."""
        policy = self._policy.in_force().data.model(self._model)
        return (policy.variants, policy.shadow_version) if policy is not None else ((), None)

    def _choose(self, user_id: str, variants: Sequence[Variant]) -> tuple[LoadedModel, str | None]:
        label: str | None = None
        if len(variants) > 1:
            index = assign(self._salt, self._model, user_id, variants)
            instead = (
                self._redirect(self._model, variants[index].version) if self._redirect else None
            )
            if instead is not None:
                index = next((i for i, v in enumerate(variants) if v.version == instead), index)
            label, wanted = variant_label(index), variants[index].version
            chosen = self._registry.get(self._model, wanted)
        else:
            # Fewer than two arms is no experiment: the primary (config, admin hot swap) serves.
            wanted = "primary"
            chosen = self._registry.primary(self._model)
        if chosen is None:
            # Fail closed: serving another version would silently change the experiment.
            raise ModelNotReady(
                "the model is not loaded", log_cause=f"{self._model} {wanted} not loaded"
            )
        return chosen, label

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        query = ctx.payload
        if not isinstance(query, RankQuery):
            raise InternalError(log_cause="variant stage got no RankQuery")
        variants, shadow_version = self._arms()  # one read: arms and shadow from one bundle
        chosen, label = self._choose(query.user_id, variants)
        run_primary = self._stage(chosen)(ctx)
        if shadow_version is not None and shadow_version != chosen.version:
            # Both run at once: the shadow adds no latency beyond the slower of the two.
            out, shadow = await asyncio.gather(run_primary, self._shadow(ctx, shadow_version))
        else:
            out, shadow = await run_primary, None
        if out.model is not None and label is not None:
            out = out.evolve(model=replace(out.model, variant=label))
        self._served(self._model, chosen.version, label or "-").inc()
        if shadow is not None and isinstance(out.result, RankResult):
            diff = np.max(np.abs(np.asarray(out.result.scores) - np.asarray(shadow.scores)))
            self._metrics.shadow_diff.labels(self._model, shadow_version).observe(float(diff))
        return out

    async def _shadow(self, ctx: RequestContext, version: str) -> RankResult | None:
        """Score with the shadow version; never changes the answer or fails the request."""
        shadow = self._registry.get(self._model, version)
        if shadow is None:
            self._metrics.shadow.labels(self._model, version, "not-loaded").inc()
            return None
        try:
            result = (await self._stage(shadow)(ctx)).result
        except GatewayError as exc:
            self._metrics.shadow.labels(self._model, version, "error").inc()
            log.warning("shadow %s %s failed: %s", self._model, version, exc.log_cause or exc)
            return None
        self._metrics.shadow.labels(self._model, version, "ok").inc()
        return result if isinstance(result, RankResult) else None
