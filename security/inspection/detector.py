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

from policies import DetectionPolicy
from security.inspection.bounds import Bounds
from security.inspection.fingerprint import RECORD, STEP, Fingerprinter
from security.inspection.state import DetectorState


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
        self.bounds.check_ids(feeds)
        prints = self.fingerprinter(feeds, now)
        bounds = self.bounds.check(prints.x, policy.bounds_tolerance)
        new = prints.records
        new["off"] = prints.off_distance > policy.threshold("off_manifold")
        previous, until = await self.state.exchange(
            key, new, now=now, history=policy.history, window_s=policy.window_seconds
        )
        signals: list[str] = []
        if bounds.out_of_range and bounds.fraction > policy.threshold("out_of_range"):
            signals.append("out_of_range")
        near = _near_duplicates(previous, new, _radius_cells(policy, self.fingerprinter.dim))
        if near >= policy.threshold("near_duplicates"):
            signals.append("near_duplicates")
        offs = int(np.count_nonzero(new["off"]))
        seen = len(new)
        if len(previous):
            judged = (
                previous["off"][-max(policy.history - seen, 0) :]
                if seen < policy.history
                else previous["off"][:0]
            )
            offs += int(np.count_nonzero(judged))
            seen += len(judged)
        rate = offs / seen if seen else 0.0
        if seen >= policy.threshold("min_rows") and rate >= policy.threshold("extraction_rate"):
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
            rows=len(new),
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
    p, n = len(previous), len(new)
    if p + n < 2:
        return 0
    new_ids = new["ids"]
    pool_ids = np.concatenate([previous["ids"], new_ids]) if p else new_ids
    same = new_ids[:, None] == pool_ids[None, :]
    # A new row compares only with rows before it: history, then earlier rows of this batch.
    same &= np.arange(p + n)[None, :] < (p + np.arange(n))[:, None]
    rows, cols = np.nonzero(same)
    if not len(rows):
        return 0  # the common case: nothing on the same ids (or only this row)
    pool_exact = np.concatenate([previous["exact"], new["exact"]]) if p else new["exact"]
    keep = new["exact"][rows] != pool_exact[cols]
    rows, cols = rows[keep], cols[keep]
    if not len(rows):
        return 0  # exact repeats only: they teach an attacker nothing new
    pool_proj = np.concatenate([previous["proj"], new["proj"]]) if p else new["proj"]
    diff = new["proj"][rows].astype(np.int32) - pool_proj[cols].astype(np.int32)
    close = np.einsum("ij,ij->i", diff, diff) <= radius * radius
    counts = np.bincount(rows[close], minlength=n)
    return int(counts.max())
