"""Stage 5's checks of shared state for one request, asked as one call.

The per-subject rate limit, then every query budget that applies (all or nothing), then,
for a request whose feature values the store filled, the caller's cool-down: in that
order, each only if the one before let the request through, exactly as three separate
calls would. Behind `serve --workers N` the same checks run on the box's shared table
under one hold of its lock (table_state.TableAdmission), or, where there is no table,
in the supervisor, one round trip away (gateway.workers.state_server): either way the
three run back to back, with no other worker's check in between. On Redis (several
boxes) it makes the same three calls as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from security.inspection.budget import Budgets, Charge
from security.inspection.ratelimit import RateLimiter
from security.inspection.state import DetectorState


@dataclass(frozen=True, slots=True)
class SubjectRate:
    """The per-subject token buckets to take one token from, all or none."""

    keys: tuple[str, ...]
    rps: float
    burst: int


@dataclass(frozen=True, slots=True)
class Admitted:
    """`refused`: "subject_rate" or "budget" (then `retry_after_s`), or None; and the
    caller's cool-down end, when it was asked for (0.0: none)."""

    refused: str | None = None
    retry_after_s: float = 0.0
    cooldown_until: float = 0.0


class Admits(Protocol):
    """Admission, in process, on the shared table (table_state.TableAdmission) or through
    the supervisor (shared_state.SharedAdmission)."""

    async def admit(
        self,
        *,
        subject_rate: SubjectRate | None,
        charges: list[Charge],
        cooldown_key: str | None,
        now: float,
    ) -> Admitted: ...


class Admission:
    def __init__(self, limiter: RateLimiter, budgets: Budgets, state: DetectorState | None) -> None:
        self.limiter = limiter
        self.budgets = budgets
        self.state = state

    async def admit(
        self,
        *,
        subject_rate: SubjectRate | None,
        charges: list[Charge],
        cooldown_key: str | None,
        now: float,
    ) -> Admitted:
        if subject_rate is not None and subject_rate.keys:
            take = await self.limiter.take_all(
                list(subject_rate.keys), rate=subject_rate.rps, burst=subject_rate.burst, now=now
            )
            if not take.allowed:
                return Admitted("subject_rate", take.retry_after_s)
        if charges:
            spent = await self.budgets.spend_all(list(charges), now=now)
            if not spent.allowed:
                return Admitted("budget", spent.retry_after_s)
        if cooldown_key is None or self.state is None:
            return Admitted()
        return Admitted(cooldown_until=await self.state.cooldown(cooldown_key, now=now))
