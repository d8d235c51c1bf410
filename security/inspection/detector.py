"""The stateful query detector: boundary probing and extraction, per client.

Signals, each against a threshold from the policy bundle (`detection`):

- `out_of_range` (stateless): share of feature values outside the training
  bounds (plus tolerance) above the threshold.
- `near_duplicates` (probing, Chen-Carlini-Wagner / Blacklight): a row has at
  least N earlier rows of the same client, on the same ids, within the
  similarity radius but not byte-identical. Decision-based attacks (HopSkipJump,
  boundary attacks) and gradient estimation (ZOO) are made of such rows; real
  clients send the store's features for an (user, item) pair, so their repeats
  are exact and do not count.
- `extraction_rate` (PRADA-style distribution test, simplified): share of the
  client's recent rows whose features lie off the data manifold (far from the
  store row of their own ids). Extraction samples the input space; real traffic
  stays on it.
- `cooldown`: the client tripped the detector `cooldown_after` times within the
  window and is cooling down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.data_policy import DetectionPolicy
from security.inspection.bounds import Bounds
from security.inspection.fingerprint import RECORD, STEP, Fingerprinter
from security.inspection.state import DetectorState

SIGNALS = ("out_of_range", "near_duplicates", "extraction_rate", "cooldown")


@dataclass(frozen=True, slots=True)
class Observation:
    """What the detector saw for one request (integers only: it goes into the audit record)."""

    rows: int
    signals: tuple[str, ...]
    out_of_range: int = 0  # feature values out of bounds
    near_duplicates: int = 0  # the largest near-duplicate count of any row
    off_manifold_permille: int = 0  # over the recent rows judged
    cooldown_until: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)


class Detector:
    def __init__(self, fingerprinter: Fingerprinter, bounds: Bounds, state: DetectorState) -> None:
        self.fingerprinter = fingerprinter
        self.bounds = bounds
        self.state = state

    async def cooldown_only(self, key: str, now: float, policy: DetectionPolicy) -> Observation:
        """For requests without client-supplied features (/v1/rank): only the cool-down."""
        empty = np.zeros(0, dtype=RECORD)
        _, until = await self.state.exchange(
            key, empty, now=now, history=policy.history, window_s=policy.window_seconds
        )
        signals = ("cooldown",) if until > now else ()
        return Observation(rows=0, signals=signals, cooldown_until=until)

    async def observe(
        self,
        key: str,
        feeds: Mapping[str, NDArray[Any]],
        now: float,
        policy: DetectionPolicy,
        request_id: str,
    ) -> Observation:
        bounds = self.bounds.check(feeds, policy.bounds_tolerance)
        prints = self.fingerprinter(feeds, now)
        off_limit = policy.threshold("off_manifold")
        prints.records["off"] = prints.off_distance > off_limit
        previous, until = await self.state.exchange(
            key, prints.records, now=now, history=policy.history, window_s=policy.window_seconds
        )
        signals: list[str] = []
        if bounds.out_of_range and bounds.fraction > policy.threshold("out_of_range"):
            signals.append("out_of_range")
        near = _near_duplicates(
            previous, prints.records, _radius_cells(policy, self.fingerprinter.dim)
        )
        if near >= policy.threshold("near_duplicates"):
            signals.append("near_duplicates")
        recent = np.concatenate([previous["off"], prints.records["off"]])[-policy.history :]
        rate = float(recent.mean()) if len(recent) else 0.0
        if len(recent) >= policy.threshold("min_rows") and rate >= policy.threshold(
            "extraction_rate"
        ):
            signals.append("extraction_rate")
        if until > now:
            signals.append("cooldown")
        elif signals:
            _, until = await self.state.strike(
                key,
                now=now,
                window_s=policy.window_seconds,
                after=policy.cooldown_after,
                cooldown_s=policy.cooldown_seconds,
                member=request_id,
            )
        return Observation(
            rows=len(prints.records),
            signals=tuple(signals),
            out_of_range=bounds.out_of_range,
            near_duplicates=near,
            off_manifold_permille=round(rate * 1000),
            cooldown_until=until,
        )


def _radius_cells(policy: DetectionPolicy, dim: int) -> float:
    """Similarity s means an RMS distance of (1 - s) standard deviations per feature."""
    radius = (1.0 - policy.threshold("query_similarity")) * math.sqrt(dim)
    return radius / STEP


def _near_duplicates(previous: NDArray[np.void], new: NDArray[np.void], radius: float) -> int:
    """The largest number of earlier rows (history, then this request's earlier rows)
    on the same ids, within `radius` cells, and not byte-identical, of any new row."""
    pool = np.concatenate([previous, new])
    p = len(previous)
    n = len(new)
    if p + n < 2:
        return 0
    cells = pool["proj"].astype(np.int32)
    mine = cells[p:]
    # Squared distances new x pool, in cells (int32: 16 dims of at most 254^2 fits).
    d2 = (
        (mine * mine).sum(axis=1)[:, None]
        + (cells * cells).sum(axis=1)[None, :]
        - 2 * (mine @ cells.T)
    )
    close = d2 <= radius * radius
    close &= new["ids"][:, None] == pool["ids"][None, :]
    close &= new["exact"][:, None] != pool["exact"][None, :]
    # A new row compares only with rows before it: history, then earlier rows of this batch.
    earlier = np.arange(p + n)[None, :] < (p + np.arange(n))[:, None]
    close &= earlier
    return int(close.sum(axis=1).max())
