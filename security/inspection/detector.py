"""The stateful query detector: probing and extraction, keyed on what an attacker cannot choose.

Only feature values the client chose are inspected (`InferQuery.client_inputs`;
ids alone carry nothing to perturb). Each row is judged against the store row of
its ids (`fingerprint`), and the rows that are not the store's own (farther than
`store_radius`) are counted, by content and never by the ids the client names, in
decayed sketches (`sketch`) of three histories: the client's, its tenant's (all
its credentials together) and the data subject's (the row's user).

Signals, each against a threshold from the policy bundle (`detection`):

- `out_of_range` (stateless): share of feature values outside the training
  bounds (plus tolerance) above the threshold.
- `near_duplicates` (probing: Chen-Carlini-Wagner, Blacklight): a row has at least
  N earlier rows near it, ids ignored, in one of its histories (LSH estimate at
  two scales; exact repeats excluded: they teach nothing). Decision-based attacks
  (HopSkipJump) and gradient estimation (NES, ZOO) are made of such rows, noisy or
  not, whatever ids they rotate through.
- `off_store` (probing and extraction): a history holds at least N rows farther
  than `off_manifold` from the store row of their ids. Interleaved exact stored
  rows do not dilute a count, and a day-long time constant adds paced queries up.
- `cooldown`: the client tripped the detector `cooldown_after` times within the
  window and is cooling down.

Rows within `store_radius` of the store row (the store's own features, or features
recomputed a little since) never count: a benign client drifting slowly stays
silent, and the attacker gains nothing it could not read from the store's answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies import DetectionPolicy
from security.inspection.bounds import Bounds
from security.inspection.fingerprint import (
    CHANNELS,
    SCALES,
    TABLES,
    Fingerprinter,
    Fingerprints,
    keyed_hash,
    mix64,
)
from security.inspection.sketch import DEPTH, WIDTH
from security.inspection.state import DetectorState

U64 = np.uint64
_SCOPES = ("client", "tenant", "subject")
_OFF_EVENT = U64(0x6F66662D73746F72)  # "off-stor": the one event an off-store row counts
# Each depth row takes its own bits of one mixed 64-bit hash (a second mix per depth cost
# a third of the detector's time on probing traffic).
_DEPTH_BITS = 64 // DEPTH
_DEPTH_SHIFTS = np.arange(DEPTH, dtype=np.uint64) * np.uint64(_DEPTH_BITS)
if WIDTH > 1 << _DEPTH_BITS:
    raise ImportError("sketch WIDTH needs more bits than one hash gives each depth row")
_VERSION_EVENT = U64(0x76657273696F6E73)  # "versions": a new value of one id's features
_SUBJECT_KEY = U64(0xD6E8FEB86659FD93)
# Rows of one request counted one by one (sketch cells are the cost, in Redis above all);
# the rest of a large request adds to the off-store counts by weight.
SAMPLE = 16


@dataclass(frozen=True, slots=True)
class Counts:
    """What the histories say of a request (in units of the client's thresholds: a
    history's count over its multiple)."""

    counted: int = 0  # rows not the store's own
    near: float = 0.0  # the largest near-duplicate estimate of an off-store row
    off_store: float = 0.0  # the largest off-store count a row of this request added to
    versions: float = 0.0  # the most new versions of one id's features


@dataclass(frozen=True, slots=True)
class Histories:
    """Whose histories a request's rows count in: the client (tenant and client id), the
    tenant, and the data subject of each row (the tenant's user of the `subject_input`)."""

    client: str
    tenant: str | None = None
    subject_input: str | None = "user_id"


@dataclass(frozen=True, slots=True)
class Observation:
    """What the detector saw for one request (integers only: it goes into the audit record)."""

    rows: int
    signals: tuple[str, ...]
    out_of_range: int = 0  # feature values out of bounds
    counted: int = 0  # rows that were not the store's own, counted in the histories
    near_duplicates: int = 0  # the largest near-duplicate estimate of any row, any history
    off_store: int = 0  # the largest off-store count of any history (decayed)
    versions: int = 0  # the most new versions of one id's features in the tenant (decayed)
    cooldown_until: float = 0.0


class Detector:
    def __init__(self, fingerprinter: Fingerprinter, bounds: Bounds, state: DetectorState) -> None:
        self.fingerprinter = fingerprinter
        self.bounds = bounds
        self.state = state
        self._names: dict[str, U64] = {}

    @staticmethod
    def cooled(until: float, now: float) -> Observation:
        """The observation of a request with nothing to inspect (/v1/rank, OIP by ids: no
        client-chosen feature value): the cool-down alone, which stage 5 asked with its
        limits (security.inspection.admission)."""
        signals = ("cooldown",) if until > now else ()
        return Observation(rows=0, signals=signals, cooldown_until=until)

    async def observe(
        self,
        key: str,
        feeds: Mapping[str, NDArray[Any]],
        now: float,
        policy: DetectionPolicy,
        request_id: str,
        *,
        histories: Histories | None = None,
    ) -> Observation:
        """`key`: whose strikes and cool-down (the caller); `histories`: where rows count
        (default: the client `key` alone, plus each row's subject)."""
        self.bounds.check_ids(feeds)
        prints = self.fingerprinter(feeds)
        bounds = self.bounds.check(prints.x, policy.bounds_tolerance)
        signals: list[str] = []
        if bounds.out_of_range and bounds.fraction > policy.threshold("out_of_range"):
            signals.append("out_of_range")
        counts = await self._count(prints, now, policy, histories or Histories(key))
        if counts.near >= policy.threshold("near_duplicates"):
            signals.append("near_duplicates")
        if counts.off_store >= policy.threshold("off_store_rows"):
            signals.append("off_store")
        if counts.versions >= policy.threshold("versions"):
            signals.append("versions")
        until = await self.state.cooldown(key, now=now)
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
            rows=len(prints.x),
            signals=tuple(signals),
            out_of_range=bounds.out_of_range,
            counted=counts.counted,
            near_duplicates=int(counts.near),
            off_store=int(counts.off_store),
            versions=int(counts.versions),
            cooldown_until=until,
        )

    def _name(self, text: str) -> U64:
        found = self._names.get(text)
        if found is None:
            if len(self._names) >= 1024:  # a cache, not a registry: bounded
                self._names.clear()
            found = self._names[text] = U64(keyed_hash(self.fingerprinter.secret, text))
        return found

    def _history_keys(
        self,
        histories: Histories,
        policy: DetectionPolicy,
        prints: Fingerprints,
        rows: NDArray[np.intp],
    ) -> tuple[NDArray[np.uint64], NDArray[np.float64]]:
        """(row x history) 64-bit history keys, and each history's threshold multiple."""
        m = len(rows)
        tenant = histories.tenant if histories.tenant is not None else "-"
        keys: list[NDArray[np.uint64]] = []
        factors: list[float] = []
        for scope in _SCOPES:
            factor = float(getattr(policy.scopes, scope))
            if factor <= 0:
                continue
            if scope == "client":
                keys.append(np.full(m, self._name("c:" + histories.client), dtype=np.uint64))
            elif scope == "tenant":
                keys.append(np.full(m, self._name("t:" + tenant), dtype=np.uint64))
            else:
                if histories.subject_input not in self.fingerprinter.ids:
                    continue
                column = self.fingerprinter.ids.index(histories.subject_input)
                users = prints.ids[rows, column].view(np.uint64)
                keys.append(mix64(self._name("s:" + tenant) ^ (users * _SUBJECT_KEY)))
            factors.append(factor)
        return np.stack(keys, axis=1), np.asarray(factors, dtype=np.float64)

    async def _count(
        self,
        prints: Fingerprints,
        now: float,
        policy: DetectionPolicy,
        histories: Histories,
    ) -> Counts:
        off = prints.off_distance
        radius = policy.threshold("store_radius")
        # No store table: every row counts (NaN compares False, hence the isnan).
        candidates = np.flatnonzero(np.isnan(off) | (off > radius))
        if not len(candidates):
            return Counts()  # the common case: the store's rows, nothing to count
        # One row per exact content within the request (a repeat teaches nothing), in the
        # order of their keyed hashes: the first SAMPLE are a sample no client can aim.
        exact_all = self.fingerprinter.exact(prints, candidates)
        unique, first = np.unique(exact_all, return_index=True)
        counted = len(first)
        rows, exact = candidates[first[:SAMPLE]], unique[:SAMPLE]
        off_all = off[candidates[first]]
        versions = await self._versions(prints, rows, now, policy, histories)
        # Off-store rows (no pipeline drift explains them): fresh ones add to their
        # histories' off-store counts and to the LSH buckets of their content, ids ignored.
        # None (recomputed features, drift): the histories have nothing to count.
        limit = policy.threshold("off_manifold")
        far = (np.isnan(off[rows]) | (off[rows] > limit))[:, None]
        if not far.any():
            return Counts(counted, versions=versions)
        keys, factors = self._history_keys(histories, policy, prints, rows)
        if not len(factors):
            return Counts(counted, versions=versions)
        m, h = len(rows), keys.shape[1]
        tau = float(policy.window_seconds)
        # Exact copies seen before, per history: a repeat adds nothing.
        seen = await self.state.add(_cells(exact[:, None], keys), now=now, tau=tau)
        fresh = (seen.reshape(m, h, DEPTH).min(axis=2) < 1.5).astype(np.int64)  # (m, h)
        adds = (fresh * far).astype(np.float64)  # (m, h)
        similarity = policy.threshold("query_similarity")
        buckets = self.fingerprinter.buckets(prints, rows, 1.0 - similarity)
        events = np.repeat(adds[:, :, None], CHANNELS + 1, axis=2)
        # Off-store counts (only where a store row exists) stand for every off-store row of
        # the request, not only the sample's: each sampled one weighs for its share.
        stored = ~np.isnan(off[rows])
        in_sample = int(np.count_nonzero(stored & (off[rows] > limit)))
        weight = int(np.count_nonzero(off_all > limit)) / in_sample if in_sample else 0.0
        events[:, :, CHANNELS] *= stored[:, None] * weight
        channels = np.concatenate([buckets, np.full((m, 1), _OFF_EVENT, dtype=np.uint64)], axis=1)
        counts = await self.state.add(
            _cells(channels, keys),
            now=now,
            tau=tau,
            events=np.repeat(events[..., None], DEPTH, axis=3).reshape(-1),
        )
        # min over the depth rows: count-min's estimate; minus this row's own event.
        per = counts.reshape(m, h, CHANNELS + 1, DEPTH).min(axis=3) - events
        tables = np.maximum(per[:, :, :CHANNELS], 0.0) * far[:, :, None]
        by_scale = tables.reshape(m, h, len(SCALES), TABLES).mean(axis=3)
        near = float((by_scale.max(axis=2) / factors).max())
        # The off-store count matters when this request adds to it.
        added = events[:, :, CHANNELS] > 0
        off_count = np.where(added, per[:, :, CHANNELS] + events[:, :, CHANNELS], 0.0)
        return Counts(counted, near, float((off_count / factors).max()), versions)

    async def _versions(
        self,
        prints: Fingerprints,
        rows: NDArray[np.intp],
        now: float,
        policy: DetectionPolicy,
        histories: Histories,
    ) -> float:
        """The most new versions any one id's features had in the tenant, this request's
        included: each feature input beyond store_radius is a version, counted once per
        exact value. A pipeline recomputes a few an hour; probing on fixed ids, one a query."""
        parts = self.fingerprinter.parts
        if not parts:
            return 0.0
        changed = prints.part_distance[rows] > policy.threshold("store_radius")  # (m, parts)
        if not changed.any():
            return 0.0
        tenant = histories.tenant if histories.tenant is not None else "-"
        keys = np.empty(changed.shape, dtype=np.uint64)
        for j, (name, id_name, _) in enumerate(parts):
            ids = prints.ids[rows, self.fingerprinter.ids.index(id_name)].view(np.uint64)
            keys[:, j] = mix64(self._name(f"v:{tenant}:{name}") ^ (ids * _SUBJECT_KEY))
        flat_keys = keys.reshape(-1, 1)
        events = changed.reshape(-1).astype(np.int64)
        tau = float(policy.versions_seconds)
        values = self.fingerprinter.part_exact(prints, rows).reshape(-1, 1)
        seen = await self.state.add(
            _cells(values, flat_keys), now=now, tau=tau, events=np.repeat(events, DEPTH)
        )
        new = events * (seen.reshape(-1, DEPTH).min(axis=1) < 1.5)
        if not new.any():
            return 0.0
        marker = np.full((len(events), 1), _VERSION_EVENT, dtype=np.uint64)
        counts = await self.state.add(
            _cells(marker, flat_keys), now=now, tau=tau, events=np.repeat(new, DEPTH)
        )
        return float((counts.reshape(-1, DEPTH).min(axis=1) * (new > 0)).max())


def _cells(events: NDArray[np.uint64], keys: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Sketch cells of (row x event) in each of the row's histories, at each depth:
    shape (rows, histories, events, DEPTH), flattened."""
    # History keys are keyed hashes already (mixed): one mix of (event ^ key) suffices.
    combined = mix64(events[:, None, :] ^ keys[:, :, None])
    spread = combined[..., None] >> _DEPTH_SHIFTS
    cells = (spread % U64(WIDTH)).astype(np.int64) + np.arange(DEPTH, dtype=np.int64) * WIDTH
    return cells.reshape(-1)
