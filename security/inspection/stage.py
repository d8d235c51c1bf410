"""Stage 5 (inspect), and the per-client rate limit that runs inside stage 2.

The rate limit needs the caller (stage 1) and must come before the body is
parsed (the decode step), so it runs in a wrapper around the authorize stage,
right before the policy decision: a client over its rate costs one bucket
update, not a Cedar evaluation or a JSON parse. Query budgets count rows, so
they need the decoded request and run first thing in stage 5.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from gateway.errors import (
    InspectionUnavailable,
    InternalError,
    QueryBudgetExhausted,
    RequestRefused,
    TooManyRequests,
)
from gateway.pipeline import InferQuery, Principal, RankQuery, RequestContext, Stage
from policies import PolicyReader
from security.inspection.budget import Budgets
from security.inspection.detector import Detector, Observation
from security.inspection.metrics import InspectionMetrics
from security.inspection.ratelimit import RateLimiter
from security.inspection.state import StateUnavailableError

log = logging.getLogger("gateway.inspection")

Clock = Callable[[], float]


def client_key(principal: Principal, *, per_subject: bool = False) -> str:
    """The client (tenant and client id); with `per_subject`, also the token's subject when
    it names one besides the client. Rate limits and budgets are per client (a client
    cannot multiply them by naming subjects); detector histories are per subject, so one
    user's session is not mixed with another's behind the same service."""
    key = f"{principal.tenant or '-'}/{principal.client_id}"
    if per_subject and principal.subject and principal.subject != principal.client_id:
        key += f"/{principal.subject}"
    return key


@dataclass(frozen=True, slots=True)
class Verdict:
    """The stage's decision, carried in `ctx.inspection` and the audit record."""

    verdict: str  # allow | flag | throttle | block
    enforced: bool  # False in shadow mode (and for allow)
    shadow: bool
    observation: Observation
    detector_us: int

    def record(self) -> dict[str, Any]:
        o = self.observation
        return {
            "verdict": self.verdict,
            "enforced": self.enforced,
            "shadow": self.shadow,
            "signals": list(o.signals),
            "rows": o.rows,
            "out_of_range": o.out_of_range,
            "near_duplicates": o.near_duplicates,
            "off_manifold_permille": o.off_manifold_permille,
            "detector_us": self.detector_us,
        }


class RateLimitedAuthorize:
    """Stage 2 with the client's token bucket in front of the policy decision."""

    name = "authorize"

    def __init__(
        self,
        inner: Stage,
        limiter: RateLimiter,
        policy: PolicyReader,
        metrics: InspectionMetrics,
        clock: Clock,
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._policy = policy
        self._metrics = metrics
        self._clock = clock

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        principal = ctx.principal
        if principal is None:
            raise InternalError(log_cause="rate limit before authentication")
        rates = self._policy.in_force().data.rate_limits
        await enforce_rate(
            self._limiter,
            "c:" + client_key(principal),
            rate=rates.per_client_rps,
            burst=rates.burst,
            now=self._clock(),
            refused=self._metrics.refusal("rate"),
            what="client rate limit",
        )
        return await self._inner(ctx)


async def enforce_rate(
    limiter: RateLimiter,
    key: str,
    *,
    rate: float,
    burst: int,
    now: float,
    refused: Counter,
    what: str,
) -> None:
    """Take one token or refuse: 429 with Retry-After; 503 (fail closed) without state."""
    try:
        take = await limiter.take(key, rate=rate, burst=burst, now=now)
    except StateUnavailableError as exc:
        raise InspectionUnavailable(log_cause=str(exc)) from exc
    if not take.allowed:
        refused.inc()
        raise TooManyRequests(take.retry_after_s, log_cause=what)


class InspectStage:
    name = "inspect"

    def __init__(
        self,
        detector: Detector | None,
        budgets: Budgets,
        policy: PolicyReader,
        metrics: InspectionMetrics,
        clock: Clock,
    ) -> None:
        self._detector = detector
        self._budgets = budgets
        self._policy = policy
        self._metrics = metrics
        self._clock = clock

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        try:
            return await self._inspect(ctx)
        except StateUnavailableError as exc:
            # Fail closed: without its state the detector cannot vouch for the request.
            raise InspectionUnavailable(log_cause=str(exc)) from exc

    async def _inspect(self, ctx: RequestContext) -> RequestContext:
        principal, query = ctx.principal, ctx.payload
        if principal is None or not isinstance(query, InferQuery | RankQuery):
            raise InternalError(log_cause="inspect stage without a decoded query")
        data = self._policy.in_force().data
        now = self._clock()
        key = client_key(principal)
        rows = _rows(query)
        budget = data.query_budgets.get(principal.client_id) or data.query_budgets.get("default")
        if budget is not None:
            spent = await self._budgets.spend(
                key, rows, limit=budget.max_queries, window_s=budget.window_seconds, now=now
            )
            if not spent.allowed:
                self._metrics.refusal("budget").inc()
                raise QueryBudgetExhausted(spent.retry_after_s, log_cause="query budget")
        if self._detector is None:
            return ctx
        policy = data.detection
        key = client_key(principal, per_subject=True)
        started = time.perf_counter()
        if isinstance(query, InferQuery):
            observation = await self._detector.observe(
                key, query.feeds, now, policy, ctx.request_id
            )
        else:
            # /v1/rank takes no feature values from the client (ids and context are
            # validated by decode and the feature store): only the cool-down applies.
            observation = await self._detector.cooldown_only(key, now, policy)
        elapsed = time.perf_counter() - started
        self._metrics.detector_seconds.observe(elapsed)
        fired = bool(observation.signals)
        action = policy.action if fired else "allow"
        enforced = fired and not policy.shadow and action != "allow"
        verdict = Verdict(
            verdict=action,
            enforced=enforced,
            shadow=policy.shadow,
            observation=observation,
            detector_us=int(elapsed * 1_000_000),
        )
        self._metrics.verdict(action, "true" if enforced else "false").inc()
        for signal in observation.signals:
            self._metrics.signal(signal).inc()
        if fired:
            log.warning(
                "request %s client %s: %s %s%s",
                ctx.request_id,
                principal.client_id,
                action,
                ",".join(observation.signals),
                " (shadow)" if policy.shadow else "",
            )
        record = verdict.record()
        if enforced and action == "block":
            raise RequestRefused(log_cause="inspection", inspection=record)
        if enforced and action == "throttle":
            wait = max(observation.cooldown_until - now, float(policy.throttle_seconds))
            raise TooManyRequests(wait, log_cause="inspection throttle", inspection=record)
        return ctx.evolve(inspection=verdict)


def _rows(query: InferQuery | RankQuery) -> int:
    if isinstance(query, RankQuery):
        return len(query.item_ids)
    first = next(iter(query.feeds.values()), None)
    if first is None or not first.ndim:
        return 1
    return int(first.shape[0])
