"""Proof of extraction: a keyed watermark in the served scores, and its statistical check.

Threat: a client (or many) harvests (input, score) answers and fits a surrogate. Trigger
*pairs* (a secret set of inputs whose answers are shifted) mark a surrogate only if the
attacker happened to query them, which an attacker drawing catalogue pairs almost never
does. What any regressor fitted on the answers inherits is a signal that is a smooth
function of the model input over the whole input space; that is CosWM (Charette et al.,
ICLR 2022), adapted to ranking:

    served(x) = score(x) + eps * e(score(x)) * sqrt(2) * cos(2*pi*f * <k, z(x)> + phi)

`z(x)` is the standardised value of the mark's inputs (by default the user's features:
the model package's `feature_stats` give mean and std, as stage 5 standardises), `k` a
keyed unit direction, `phi` a keyed phase, `f` = FREQUENCY cycles per standard deviation
(low enough that a small MLP or gradient-boosted trees fitted on 10,000 answers learn it,
high enough that the model's own smooth structure barely aliases into it), and
`e` (1, ramping to 0 within 2.8 eps of a probability's ends: `envelope`) keeps a
probability in [0, 1] and the mark monotone there. The key
derives from the gateway's secret (`Purpose.MODEL_WATERMARK`) and the model's name, so
every replica and every version of a model carries the same mark, and the key never
leaves the box.

Why the user's features: they are constant within a `/v1/rank` request (one user, many
items), so the mark shifts every score of a request by the same amount and the order of
every request's items is unchanged: NDCG@10 of served rankings moves only by the score
rounding of the output policy. The cost is calibration (scores move by at most
`sqrt(2) * eps`, in score units, at p = 0.5) and rankings across users; bench/watermark.py
measures both.

The trigger set is a keyed uniform sample of catalogue (user, item) pairs (TRIGGER_USERS
distinct users, TRIGGER_ITEMS items each) with their store features: what an operator
sends to a suspect model. The check, given the suspect's scores on it:

1. residualise the suspect's scores and the keyed signal on a cubic in the unmarked
   model's own scores on the same inputs (the gateway still has that model): what is left
   of the suspect is its deviation from our model, which for a model fitted on our
   answers contains the mark, even after a smooth monotone rescaling of its outputs;
2. T = correlation of the two residuals (the signal weighted by `e` of the reference
   score, as it was served);
3. the null: T for NULL_KEYS other random (direction, phase) keys on the same inputs.
   Under H0 (the suspect was not fitted on our marked answers, so it is independent of
   our secret key) the true key is exchangeable with those, so the rank of T among them
   is an exact p-value (at best 1/(NULL_KEYS+1)); the reported p-value is the normal
   tail of T against the null keys' mean and standard deviation, which reaches further.
   The verdict "detected" needs both: p < alpha and no null key reaching T.

Limits, by construction. A mark that never reorders a request is invisible where no
score is served (`rank_only`, `top_k` outputs: nothing to inherit, nor much to extract)
and in answers that all share one user row: a request without personalisation consent
is ranked from the cold-start row, so that path's answers carry one constant shift and a
surrogate of it carries no detectable mark. `inputs: [user_features, item_features]`
marks that path too, at the price of reordering items within a request (bench/watermark
`--inputs` measures it). Rounded scores (3 decimals) and stage 7's keyed perturbation
(at most 0.004) are noise the check tolerates. This is a forensic mark, not an access
control: a model without `feature_stats` (the unsafe plaintext dev path) is served
unmarked, and says so in the log once.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies import PolicyReader

log = logging.getLogger("gateway.models")

FREQUENCY = 0.3  # cycles per standard deviation along the key direction
TRIGGER_USERS = 2000
TRIGGER_ITEMS = 3  # items per trigger user
NULL_KEYS = 10_000
DEFAULT_ALPHA = 1e-4
TRIGGER_FORMAT = "gateway-watermark-triggers/1"

FeatureStats = Mapping[str, Mapping[str, Sequence[float]]]
# (model inputs, first output) -> the scores to serve; the mark is applied row by row.
Marks = Callable[[Mapping[str, NDArray[Any]], NDArray[Any]], NDArray[Any]]


class WatermarkError(ValueError):
    """A trigger set or a suspect's scores that cannot be checked (one line, no data)."""


def model_key(secret: bytes, model: str) -> bytes:
    """The watermark key of one model, from the gateway's derived watermark key."""
    return hashlib.blake2b(model.encode(), key=secret[:64], digest_size=32).digest()


def _rng(key: bytes, label: bytes) -> np.random.Generator:
    seed = hashlib.blake2b(label, key=key, digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(seed, "little"))


@dataclass(frozen=True, slots=True)
class Standardiser:
    """z(x): the mark's inputs side by side, standardised by the package's statistics."""

    inputs: tuple[str, ...]
    mean: NDArray[np.float64]
    inv_scale: NDArray[np.float64]

    @classmethod
    def from_stats(cls, stats: FeatureStats, inputs: Sequence[str]) -> Standardiser:
        means, scales = [], []
        for name in inputs:
            entry = stats.get(name)
            if entry is None or not {"mean", "std", "min", "max"} <= set(entry):
                raise WatermarkError(f"no feature statistics for the mark's input {name!r}")
            span = np.asarray(entry["max"], np.float64) - np.asarray(entry["min"], np.float64)
            # As stage 5 does: constant columns get a scale from their span, never 1/0.
            std = np.maximum(np.asarray(entry["std"], np.float64), np.maximum(span * 1e-3, 1e-6))
            means.append(np.asarray(entry["mean"], np.float64))
            scales.append(std)
        mean = np.concatenate(means)
        if not (np.isfinite(mean).all() and all(np.isfinite(s).all() for s in scales)):
            raise WatermarkError("non-finite feature statistics")
        return cls(tuple(inputs), mean, 1.0 / np.concatenate(scales))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def __call__(self, feeds: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        first = np.asarray(feeds[self.inputs[0]])
        n = int(first.shape[0]) if first.ndim else 1
        x = np.concatenate(
            [np.asarray(feeds[name], np.float64).reshape(n, -1) for name in self.inputs], axis=1
        )
        if x.shape[1] != self.dim:
            raise WatermarkError(f"the mark's inputs have {x.shape[1]} columns, not {self.dim}")
        return (x - self.mean) * self.inv_scale


def _directions(rng: np.random.Generator, dim: int, count: int) -> NDArray[np.float64]:
    k = rng.standard_normal((dim, count))
    unit: NDArray[np.float64] = k / np.linalg.norm(k, axis=0, keepdims=True)
    return unit


def envelope(scores: NDArray[np.float64], strength: float) -> NDArray[np.float64]:
    """How much of the mark a score takes: 1, except for a probability (a score in
    [0, 1]) within `a = 2 sqrt(2) strength` of 0 or 1, where it ramps down to 0. With it,
    p -> p + c * e(p) (|c| <= sqrt(2) strength = a / 2) has slope at least 1/2 and maps
    [0, 1] onto itself: a probability stays one and a request's order (one c per request)
    never changes, not even at the ends where a plain shift would clip."""
    ramp = 2.0 * np.sqrt(2.0) * strength
    probability = (scores >= 0.0) & (scores <= 1.0)
    inside = np.minimum(1.0, np.minimum(scores, 1.0 - scores) / ramp)
    out: NDArray[np.float64] = np.where(probability, inside, 1.0)
    return out


class Watermark:
    """The keyed signal of one model: s(x) in [-sqrt 2, sqrt 2], mean 0, variance about 1."""

    def __init__(self, key: bytes, standardise: Standardiser) -> None:
        self.standardise = standardise
        rng = _rng(key, b"watermark-direction")
        self.direction = _directions(rng, standardise.dim, 1)[:, 0]
        self.phase = float(rng.uniform(0.0, 2.0 * np.pi))
        self._key = key
        # z @ direction = x @ (inv_scale * direction) - mean @ (inv_scale * direction): one
        # product per input instead of a concatenation and two passes over every row (the
        # mark runs on every served batch, in the inference thread).
        self._weights = standardise.inv_scale * self.direction
        self._offset = float(standardise.mean @ self._weights)

    def signal(self, feeds: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """`signal_z(standardise(feeds))`, computed without building z."""
        inputs = self.standardise.inputs
        first = np.asarray(feeds[inputs[0]])
        n = int(first.shape[0]) if first.ndim else 1
        projection = np.full(n, -self._offset)
        at = 0
        for name in inputs:
            x = np.asarray(feeds[name]).reshape(n, -1)
            width = int(x.shape[1])
            if at + width <= self.standardise.dim:
                projection += x @ self._weights[at : at + width]
            at += width
        if at != self.standardise.dim:
            raise WatermarkError(f"the mark's inputs have {at} columns, not {self.standardise.dim}")
        return self._cosine(projection)

    def _cosine(self, projection: NDArray[np.float64]) -> NDArray[np.float64]:
        signal: NDArray[np.float64] = np.sqrt(2.0) * np.cos(
            2.0 * np.pi * FREQUENCY * projection + self.phase
        )
        return signal

    def signal_z(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        return self._cosine(z @ self.direction)

    def mark(self, scores: NDArray[Any], signal: NDArray[np.float64], strength: float) -> Any:
        """Scores plus the mark, in the scores' dtype (see `envelope`)."""
        raw = np.asarray(scores)
        flat = raw.reshape(signal.shape[0], -1).astype(np.float64)
        marked = flat + strength * signal[:, None] * envelope(flat, strength)
        return marked.reshape(raw.shape).astype(raw.dtype, copy=False)

    def null_rng(self) -> np.random.Generator:
        """The null keys' generator: fixed per key (a check is reproducible), independent
        of the key's own direction and phase."""
        return _rng(self._key, b"watermark-null-keys")


class ServedMark:
    """The `marks` hook of a Ranker: reads the policy in force on every run (a policy swap
    turns the mark on, off or changes its strength at once) and marks the first output.

    `settings()`: (enabled, strength, inputs) of the model now; `stats()`: the package's
    feature statistics (looked up once, when the first marked run needs them; None: the
    version is not registered yet, {}: it has none)."""

    def __init__(
        self,
        key: bytes,
        settings: Callable[[], tuple[bool, float, tuple[str, ...]]],
        stats: Callable[[], FeatureStats | None],
        *,
        label: str,
    ) -> None:
        self._key = key
        self._settings = settings
        self._stats = stats
        self._label = label
        self._built: dict[tuple[str, ...], Watermark | None] = {}

    def _watermark(self, inputs: tuple[str, ...]) -> Watermark | None:
        if inputs not in self._built:
            stats = self._stats()
            if stats is None:
                return None  # not registered yet (nothing is served before): ask again
            try:
                if not stats:
                    raise WatermarkError("the model has no feature statistics")
                self._built[inputs] = Watermark(self._key, Standardiser.from_stats(stats, inputs))
            except WatermarkError as exc:
                log.warning("model %s is served without its watermark: %s", self._label, exc)
                self._built[inputs] = None
        return self._built[inputs]

    def __call__(self, feeds: Mapping[str, NDArray[Any]], scores: NDArray[Any]) -> NDArray[Any]:
        enabled, strength, inputs = self._settings()
        if not enabled or not inputs or any(name not in feeds for name in inputs):
            return scores
        watermark = self._watermark(inputs)
        if watermark is None:
            return scores
        marked: NDArray[Any] = watermark.mark(scores, watermark.signal(feeds), strength)
        return marked


# -- the trigger set -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerSet:
    """Keyed catalogue pairs and the model inputs for them (store rows)."""

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    feeds: dict[str, NDArray[Any]]
    digest: str

    def __len__(self) -> int:
        return len(self.user_ids)

    def as_json(self, model: str) -> dict[str, object]:
        return {
            "format": TRIGGER_FORMAT,
            "model": model,
            "trigger_set": self.digest,
            "rows": len(self),
            "note": "send these inputs to the suspect model; keep its scores in this order",
            "pairs": [[u, i] for u, i in zip(self.user_ids, self.item_ids, strict=True)],
            "inputs": {name: value.tolist() for name, value in self.feeds.items()},
        }


def trigger_set(
    key: bytes,
    tables: Mapping[str, NDArray[Any]],
    *,
    users: int = TRIGGER_USERS,
    items: int = TRIGGER_ITEMS,
) -> TriggerSet:
    """`tables`: the feature store's arrays (models.features.load_arrays). Erased users
    (empty id) and the cold-start rows are never drawn."""
    user_ids = [str(u) for u in np.asarray(tables["user_ids"]).tolist()]
    item_ids = [str(i) for i in np.asarray(tables["item_ids"]).tolist()]
    user_rows = np.array([r for r, u in enumerate(user_ids) if r and u], dtype=np.int64)
    if user_rows.size == 0 or len(item_ids) < 2:
        raise WatermarkError("the feature store has no users or no items to draw triggers from")
    rng = _rng(key, b"watermark-triggers")
    chosen = np.sort(rng.permutation(user_rows)[: min(users, user_rows.size)])
    u = np.repeat(chosen, items)
    i = rng.integers(1, len(item_ids), size=u.shape[0], dtype=np.int64)
    feeds = {
        "user_id": u,
        "item_id": i,
        "user_features": np.asarray(tables["user_features"], np.float32)[u],
        "item_features": np.asarray(tables["item_features"], np.float32)[i],
    }
    h = hashlib.sha256(TRIGGER_FORMAT.encode())
    for name in sorted(feeds):
        h.update(name.encode() + b"|" + np.ascontiguousarray(feeds[name]).tobytes())
    return TriggerSet(
        user_ids=tuple(user_ids[r] for r in u.tolist()),
        item_ids=tuple(item_ids[r] for r in i.tolist()),
        feeds=feeds,
        digest=h.hexdigest(),
    )


# -- the check -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    statistic: float  # T, the residual correlation with our key's signal
    null_mean: float
    null_sd: float
    p_value: float  # normal tail of T against the null keys
    p_rank: float  # exact: (1 + null keys at or above T) / (null keys + 1)
    rows: int
    null_keys: int
    alpha: float

    @property
    def z(self) -> float:
        return (self.statistic - self.null_mean) / self.null_sd if self.null_sd > 0 else 0.0

    @property
    def detected(self) -> bool:
        return self.p_value < self.alpha and self.p_rank <= 1.0 / (self.null_keys + 1)


def _residualiser(reference: NDArray[np.float64]) -> NDArray[np.float64]:
    """An orthonormal basis of [1, o, o^2, o^3] (o: the reference scores, standardised)."""
    sd = reference.std()
    o = (reference - reference.mean()) / (sd if sd > 0 else 1.0)
    q, _ = np.linalg.qr(np.stack([np.ones_like(o), o, o**2, o**3], axis=1))
    return q


def _correlations(
    q: NDArray[np.float64], r: NDArray[np.float64], signals: NDArray[np.float64]
) -> NDArray[np.float64]:
    sr = signals - q @ (q.T @ signals)
    norms = np.linalg.norm(sr, axis=0) * np.linalg.norm(r)
    out: NDArray[np.float64] = np.divide(r @ sr, norms, out=np.zeros(sr.shape[1]), where=norms > 0)
    return out


def scores_vector(values: Sequence[float] | NDArray[Any], rows: int) -> NDArray[np.float64]:
    """A suspect's scores as a checked vector: one finite number per trigger row."""
    try:
        scores = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise WatermarkError("scores must be numbers") from None
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1:
        raise WatermarkError("scores must be one number per trigger row")
    if scores.shape[0] != rows:
        raise WatermarkError(f"{scores.shape[0]} scores for a trigger set of {rows} rows")
    if not np.isfinite(scores).all():
        raise WatermarkError("scores must be finite numbers")
    return scores


def check(
    watermark: Watermark,
    feeds: Mapping[str, NDArray[Any]],
    suspect: NDArray[np.float64],
    reference: NDArray[np.float64],
    *,
    strength: float,
    alpha: float = DEFAULT_ALPHA,
    null_keys: int = NULL_KEYS,
    chunk: int = 1000,
) -> CheckResult:
    """Does the suspect carry our mark? (see the module doc for the test)."""
    if not 0.0 < alpha < 1.0:
        raise WatermarkError("alpha must be within (0, 1)")
    rows = suspect.shape[0]
    if reference.shape != suspect.shape:
        raise WatermarkError("suspect and reference scores differ in length")
    if rows < 100:
        raise WatermarkError("a check needs at least 100 trigger rows")
    z = watermark.standardise(feeds)
    # As the mark was served (the ramp's width is the only use of the strength here).
    weight = envelope(np.asarray(reference, np.float64), strength)[:, None]
    q = _residualiser(np.asarray(reference, np.float64))
    r = suspect - q @ (q.T @ suspect)
    if np.linalg.norm(r) <= 1e-9 * max(float(np.linalg.norm(suspect)), 1e-12):
        r = np.zeros_like(r)  # the suspect is our unmarked model, up to rounding: no mark
    statistic = float(_correlations(q, r, weight * watermark.signal_z(z)[:, None])[0])
    rng = watermark.null_rng()
    null = np.empty(null_keys)
    for start in range(0, null_keys, chunk):
        m = min(chunk, null_keys - start)
        k = _directions(rng, z.shape[1], m)
        phases = rng.uniform(0.0, 2.0 * np.pi, m)
        signals = weight * np.sqrt(2.0) * np.cos(2.0 * np.pi * FREQUENCY * (z @ k) + phases)
        null[start : start + m] = _correlations(q, r, signals)
    mean, sd = float(null.mean()), float(null.std())
    z_score = (statistic - mean) / sd if sd > 0 else 0.0
    return CheckResult(
        statistic=statistic,
        null_mean=mean,
        null_sd=sd,
        p_value=0.5 * math.erfc(z_score / math.sqrt(2.0)),
        p_rank=(1 + int((null >= statistic).sum())) / (null_keys + 1),
        rows=rows,
        null_keys=null_keys,
        alpha=alpha,
    )


def served_mark(
    secret: bytes,
    name: str,
    version: str,
    policy: PolicyReader,
    stats: Callable[[], FeatureStats | None],
) -> ServedMark:
    """The hook make_ranker gives a model version: keyed by the model's name (every
    version carries the same mark), set by the bundle's `models.<name>.watermark`."""

    def now() -> tuple[bool, float, tuple[str, ...]]:
        found = policy.in_force().data.model(name)
        if found is None or not found.watermark.enabled:
            return False, 0.0, ()
        return True, found.watermark.strength, found.watermark.inputs

    return ServedMark(model_key(secret, name), now, stats, label=f"{name} {version}")
