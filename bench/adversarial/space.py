"""The input space as the bench knows it, and the catalogue it samples from.

The attacker gets only the published bounds and the API; `Space` also holds the
committed model (ground truth: did the label really flip?) and the feature store
(which rows are "exact stored rows").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models import demo
from models.features import load_arrays
from models.ort import session_from_bytes

N_FEATURES = 40
DIM = 2 + N_FEATURES  # ids, then features


@dataclass
class Space:
    users: NDArray[np.float32]
    items: NDArray[np.float32]
    lo: NDArray[np.float32]  # per input column, ids included
    hi: NDArray[np.float32]
    mean: NDArray[np.float32]  # per feature column
    std: NDArray[np.float32]
    session: Any  # onnxruntime, for ground truth and the threshold only
    threshold: float = 0.5

    @classmethod
    def load(cls, data_dir: Path) -> Space:
        arrays = load_arrays(data_dir / "demo" / "features.npz")
        users = arrays["user_features"].astype(np.float32)
        items = arrays["item_features"].astype(np.float32)
        feats = np.concatenate([users[1:].min(0), items[1:].min(0)])
        feats_hi = np.concatenate([users[1:].max(0), items[1:].max(0)])
        lo = np.concatenate([[0.0, 1.0], feats]).astype(np.float32)
        hi = np.concatenate([[users.shape[0] - 1, items.shape[0] - 1], feats_hi]).astype(np.float32)
        mean = np.concatenate([users.mean(0), items.mean(0)]).astype(np.float32)
        std = np.maximum(np.concatenate([users.std(0), items.std(0)]), 1e-3).astype(np.float32)
        # Ground truth from the committed model: the data dir holds only the encrypted package.
        return cls(users, items, lo, hi, mean, std, session_from_bytes(demo.model_bytes()))

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0]) - 1  # row 0 is the cold-start row

    @property
    def n_items(self) -> int:
        return int(self.items.shape[0]) - 1

    def x(self, user: int, item: int) -> NDArray[np.float32]:
        return np.concatenate([[user, item], self.users[user], self.items[item]]).astype(np.float32)

    def rows(self, pairs: NDArray[np.int64]) -> NDArray[np.float32]:
        """Exact stored rows for (user, item) pairs: what a well-behaved client sends."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return np.concatenate(
            [pairs.astype(np.float32), self.users[pairs[:, 0]], self.items[pairs[:, 1]]], axis=1
        ).astype(np.float32)

    def z(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Features in training standard deviations (the ids dropped)."""
        return ((np.atleast_2d(x)[:, 2:] - self.mean) / self.std).astype(np.float32)

    def from_z(self, ids: NDArray[np.float32], z: NDArray[np.float32]) -> NDArray[np.float32]:
        """Rows from ids and z features, clipped to the published bounds."""
        z = np.atleast_2d(z)
        ids = np.broadcast_to(np.asarray(ids, dtype=np.float32).reshape(-1, 2), (len(z), 2))
        x = np.concatenate([ids, z * self.std + self.mean], axis=1)
        return np.clip(x, self.lo, self.hi).astype(np.float32)

    def feeds(self, x: NDArray[np.float32]) -> dict[str, NDArray[Any]]:
        x = np.atleast_2d(x)
        return {
            "user_id": np.rint(x[:, 0]).astype(np.int64),
            "item_id": np.rint(x[:, 1]).astype(np.int64),
            "user_features": x[:, 2:22].astype(np.float32),
            "item_features": x[:, 22:42].astype(np.float32),
        }

    def true_scores(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        (scores,) = self.session.run(["score"], self.feeds(x))
        return np.asarray(scores, dtype=np.float64).reshape(-1)

    def label(self, scores: NDArray[np.float64]) -> NDArray[np.int64]:
        return (scores > self.threshold).astype(np.int64)

    def margin(self, scores: NDArray[np.float64]) -> NDArray[np.float64]:
        """Logit distance to the label threshold (positive: ranked high)."""
        p = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p)) - math.log(self.threshold / (1 - self.threshold))

    def distance(self, a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
        """RMS distance over the features, in training standard deviations."""
        d = (np.atleast_2d(a)[:, 2:] - np.atleast_2d(b)[:, 2:]) / self.std
        return float(np.sqrt((d * d).mean()))

    def success(self, x0: NDArray[np.float32], adv: NDArray[np.float32] | None, eps: float) -> bool:
        """The committed model's label flips with a perturbation of at most `eps` (RMS z)."""
        if adv is None:
            return False
        adv = np.atleast_2d(adv)
        flipped = self.label(self.true_scores(adv))[0] != self.label(self.true_scores(x0))[0]
        return bool(flipped and self.distance(adv, x0) <= eps + 1e-6)

    def set_threshold(self, seed: int) -> None:
        """The label threshold: the median score of benign (catalogue) pairs."""
        rng = np.random.default_rng(seed)
        self.threshold = float(np.median(self.true_scores(catalogue_pairs(self, rng, 4000))))


def probabilities(scores: NDArray[np.float64], threshold: float) -> NDArray[np.float32]:
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p)) - math.log(threshold / (1 - threshold))
    q = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([1 - q, q], axis=1).astype(np.float32)


def random_pairs(space: Space, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    users = rng.integers(1, space.n_users + 1, size=n)
    items = rng.integers(1, space.n_items + 1, size=n)
    return np.stack([users, items], axis=1).astype(np.int64)


def catalogue_pairs(space: Space, rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    """Real (user, item) pairs with the store's features: on the data manifold."""
    return space.rows(random_pairs(space, rng, n))


def sample_space(space: Space, rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    """An extraction attacker's queries: uniform over the published bounds, random ids."""
    x = rng.uniform(space.lo, space.hi, size=(n, DIM)).astype(np.float32)
    x[:, :2] = np.rint(x[:, :2])
    return x


def pick_targets(space: Space, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """Benign pairs near the decision boundary (the interesting ones to flip)."""
    pairs = random_pairs(space, rng, 4000)
    margin = np.abs(space.margin(space.true_scores(space.rows(pairs))))
    order = np.argsort(margin)[: n * 4]
    chosen = rng.choice(order, size=n, replace=False)
    return [(int(pairs[i, 0]), int(pairs[i, 1])) for i in chosen]


def pick_attackable(
    space: Space,
    rng: np.random.Generator,
    n: int,
    *,
    reach: tuple[float, float] = (0.15, 0.4),
    candidates: int = 400,
) -> list[tuple[int, int]]:
    """Catalogue pairs whose label flips along the model's own gradient only after an RMS
    step of `reach` (z): a perturbation is needed (a random one rarely does it, unlike at
    pairs right on the boundary), and one within eps exists. Chosen with the committed
    model, which the attacker never sees."""
    pairs = random_pairs(space, rng, candidates * 10)
    x = space.rows(pairs)
    margin = space.margin(space.true_scores(x))
    pool = np.flatnonzero((np.abs(margin) > 0.1) & (np.abs(margin) < 2.0))[:candidates]
    h = 1e-2
    steps = np.linspace(0.01, reach[1] * 1.5, 40, dtype=np.float32)
    ok: list[int] = []
    for i in pool:
        ids, z = x[i, :2], space.z(x[i])[0]
        probe = np.concatenate([z + h * np.eye(N_FEATURES), z - h * np.eye(N_FEATURES)])
        m = space.margin(space.true_scores(space.from_z(ids, probe.astype(np.float32))))
        grad = (m[:N_FEATURES] - m[N_FEATURES:]) / (2 * h)
        rms = float(np.sqrt((grad * grad).mean()))
        if rms == 0.0:
            continue
        direction = -np.sign(margin[i]) * grad / rms
        line = space.from_z(ids, (z + steps[:, None] * direction).astype(np.float32))
        flipped = np.sign(space.margin(space.true_scores(line))) != np.sign(margin[i])
        if flipped.any() and reach[0] <= steps[int(np.argmax(flipped))] <= reach[1]:
            ok.append(int(i))
    if len(ok) < n:
        raise SystemExit(f"only {len(ok)} attackable targets among {len(pool)} candidates")
    chosen = rng.choice(ok, size=n, replace=False)
    return [(int(pairs[i, 0]), int(pairs[i, 1])) for i in chosen]
