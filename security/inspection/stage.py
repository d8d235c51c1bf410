"""Stage 5 (inspect), and the per-client rate limit that runs inside stage 2.

The rate limit needs the caller (stage 1) and must come before the body is
parsed (the decode step), so it runs in a wrapper around the authorize stage,
right before the policy decision: a client over its rate costs one bucket
update, not a Cedar evaluation or a JSON parse (and so does the tenant's bucket,
when the bundle sets one). Query budgets count rows and per-subject limits need
the data subjects, so both need the decoded request and run first thing in stage 5.

The data subject of a request is the user it ranks for (`RankQuery.user_id`, the
`user_id` rows of an OIP request; the cold-start row 0 is nobody), not the token's
`sub`: a service acting for many users is one client with many subjects. Subject
keys are keyed hashes, so no user id reaches Redis.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
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
from security.inspection.admission import Admits, SubjectRate
from security.inspection.budget import Charge
from security.inspection.detector import Detector, Histories, Observation
from security.inspection.metrics import InspectionMetrics
from security.inspection.ratelimit import RateLimiter
from security.inspection.state import StateUnavailableError

log = logging.getLogger("gateway.inspection")

Clock = Callable[[], float]


def client_key(principal: Principal, *, per_subject: bool = False) -> str:
    """The client (tenant and client id); with `per_subject`, also the token's subject when
    it names one besides the client (whose strikes and cool-down: one user's session
    behind a public client is not another's)."""
    key = f"{principal.tenant or '-'}/{principal.client_id}"
    if per_subject and principal.subject and principal.subject != principal.client_id:
        key += f"/{principal.subject}"
    return key


def tenant_key(principal: Principal) -> str:
    """Clients without a tenant share the tenant '-' (their limits still add up)."""
    return principal.tenant or "-"


def data_subjects(query: InferQuery | RankQuery) -> dict[str, int]:
    """The request's data subjects and the rows scored for each (names, not yet hashed)."""
    if isinstance(query, RankQuery):
        return {"r:" + query.user_id: len(query.item_ids)}
    users = query.feeds.get("user_id")
    if users is None:
        return {}
    values, counts = np.unique(np.asarray(users).reshape(-1), return_counts=True)
    return {
        f"#{value}": int(count)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True)
        if value != 0  # the cold-start row: nobody's
    }


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
            "counted": o.counted,
            "near_duplicates": o.near_duplicates,
            "off_store": o.off_store,
            "versions": o.versions,
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
        if rates.per_tenant is not None:
            await enforce_rate(
                self._limiter,
                "tn:" + tenant_key(principal),
                rate=rates.per_tenant.rps,
                burst=rates.per_tenant.burst,
                now=self._clock(),
                refused=self._metrics.refusal("tenant_rate"),
                what="tenant rate limit",
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
        admission: Admits,
        policy: PolicyReader,
        metrics: InspectionMetrics,
        clock: Clock,
        *,
        secret: bytes = b"",
    ) -> None:
        self._detector = detector
        self._admission = admission
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        self._secret = secret[:64]

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        try:
            return await self._inspect(ctx)
        except StateUnavailableError as exc:
            # Fail closed: without its state the detector cannot vouch for the request.
            raise InspectionUnavailable(log_cause=str(exc)) from exc

    def _subject_keys(self, principal: Principal, subjects: Mapping[str, int]) -> dict[str, int]:
        """Per (client, subject) keys, the subject as a keyed hash (no user id in Redis)."""
        prefix = client_key(principal)

        def hashed(name: str) -> str:
            return hashlib.blake2b(name.encode(), key=self._secret, digest_size=8).hexdigest()

        return {f"{prefix}/{hashed(name)}": n for name, n in subjects.items()}

    async def _admit(
        self,
        principal: Principal,
        query: InferQuery | RankQuery,
        now: float,
        cooldown_key: str | None,
    ) -> float:
        """Per-subject rate limit, then every query budget that applies (all or nothing),
        then the cool-down of `cooldown_key` if given: one state call (admission)."""
        data = self._policy.in_force().data
        subjects = self._subject_keys(principal, data_subjects(query))
        rate = data.rate_limits.per_subject
        budgets = data.query_budgets
        rows = _rows(query)
        charges = [
            Charge("c:" + client_key(principal), rows, b.max_queries, b.window_seconds)
            for b in budgets.for_client(principal.client_id)
        ]
        charges += [
            Charge("t:" + tenant_key(principal), rows, b.max_queries, b.window_seconds)
            for b in budgets.per_tenant
        ]
        charges += [
            Charge("s:" + key, n, b.max_queries, b.window_seconds)
            for key, n in subjects.items()
            for b in budgets.per_subject
        ]
        admitted = await self._admission.admit(
            subject_rate=(
                SubjectRate(tuple("sr:" + key for key in subjects), rate.rps, rate.burst)
                if rate is not None and subjects
                else None
            ),
            charges=charges,
            cooldown_key=cooldown_key,
            now=now,
        )
        if admitted.refused == "subject_rate":
            self._metrics.refusal("subject_rate").inc()
            raise TooManyRequests(admitted.retry_after_s, log_cause="subject rate limit")
        if admitted.refused is not None:
            self._metrics.refusal("budget").inc()
            raise QueryBudgetExhausted(admitted.retry_after_s, log_cause="query budget")
        return admitted.cooldown_until

    async def _inspect(self, ctx: RequestContext) -> RequestContext:
        principal, query = ctx.principal, ctx.payload
        if principal is None or not isinstance(query, InferQuery | RankQuery):
            raise InternalError(log_cause="inspect stage without a decoded query")
        now = self._clock()
        key = client_key(principal, per_subject=True)
        # No feature value the client chose (/v1/rank, OIP by ids: the store fills the
        # features): nothing to inspect, only the cool-down applies, asked with the limits.
        chosen = query if isinstance(query, InferQuery) and self._chosen_features(query) else None
        # By ids, the detector's time is that of the one state call that asked its cool-down.
        started = time.perf_counter()
        until = await self._admit(
            principal, query, now, key if self._detector is not None and chosen is None else None
        )
        if self._detector is None:
            return ctx
        policy = self._policy.in_force().data.detection
        if chosen is not None:
            started = time.perf_counter()
            histories = Histories(client=client_key(principal), tenant=tenant_key(principal))
            observation = await self._detector.observe(
                key, chosen.feeds, now, policy, ctx.request_id, histories=histories
            )
        else:
            observation = Detector.cooled(until, now)
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

    def _chosen_features(self, query: InferQuery) -> bool:
        """Whether the client chose any feature value (None: raw tensors, all of them)."""
        if query.client_inputs is None or self._detector is None:
            return True
        return any(name in query.client_inputs for name in self._detector.fingerprinter.features)


def _rows(query: InferQuery | RankQuery) -> int:
    if isinstance(query, RankQuery):
        return len(query.item_ids)
    first = next(iter(query.feeds.values()), None)
    if first is None or not first.ndim:
        return 1
    return int(first.shape[0])
