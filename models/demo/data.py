"""A deterministic, MovieLens-like impression log for the demo ranker.

Only `Generator.random`, `standard_normal`, `integers` and `permutation` are
drawn from, and every distribution (Zipf popularity, genre choice, sampling
without replacement) is built from those by formula: numpy documents that the
streams of its fancier samplers (`zipf`, `choice`) may change between releases,
and the committed model card pins a digest of the data regenerated from its seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DEFAULT_SEED = 20261126

# The 18 MovieLens-1M genres, with their film counts in that data set; the
# counts only weight how often the generator assigns each genre.
GENRE_COUNTS: tuple[tuple[str, int], ...] = (
    ("Action", 503),
    ("Adventure", 283),
    ("Animation", 105),
    ("Children's", 251),
    ("Comedy", 1200),
    ("Crime", 211),
    ("Documentary", 127),
    ("Drama", 1603),
    ("Fantasy", 68),
    ("Film-Noir", 44),
    ("Horror", 343),
    ("Musical", 114),
    ("Mystery", 106),
    ("Romance", 471),
    ("Sci-Fi", 276),
    ("Thriller", 492),
    ("War", 143),
    ("Western", 68),
)
GENRES: tuple[str, ...] = tuple(name for name, _ in GENRE_COUNTS)


@dataclass(frozen=True)
class Impressions:
    """One row per (user, item) shown; indices are 0-based into the id tuples."""

    user: NDArray[np.int64]
    item: NDArray[np.int64]
    click: NDArray[np.int8]

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclass(frozen=True)
class DemoData:
    seed: int
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    genres: tuple[str, ...]
    item_genres: NDArray[np.bool_]  # [n_items, n_genres]
    train: Impressions
    test: Impressions

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def digest(self) -> str:
        """sha256 over everything generated, to prove two runs are identical."""
        h = hashlib.sha256()
        h.update(f"{self.seed}|{self.n_users}|{self.n_items}|{'|'.join(self.genres)}".encode())
        for arr in (
            self.item_genres,
            self.train.user,
            self.train.item,
            self.train.click,
            self.test.user,
            self.test.item,
            self.test.click,
        ):
            h.update(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
        return h.hexdigest()


def _gumbel_top_k(
    rng: np.random.Generator, log_weights: NDArray[np.float64], k: NDArray[np.int64]
) -> list[NDArray[np.int64]]:
    """Per row, k[r] distinct column indices drawn with probability ∝ weight.

    Gumbel-top-k: adding Gumbel noise to log-weights and keeping the k largest is
    exact weighted sampling without replacement, from `rng.random` alone.
    """
    rows, cols = log_weights.shape
    u = rng.random((rows, cols))
    keys = log_weights - np.log(-np.log(u))
    order = np.argsort(-keys, axis=1, kind="stable")
    return [np.sort(order[r, : int(k[r])]).astype(np.int64) for r in range(rows)]


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def generate(
    seed: int = DEFAULT_SEED,
    *,
    n_users: int = 3000,
    n_items: int = 1500,
    dim: int = 8,
    zipf_s: float = 1.0,
    min_impressions: int = 60,
    max_impressions: int = 100,
    test_fraction: float = 0.2,
) -> DemoData:
    rng = np.random.default_rng(seed)
    n_genres = len(GENRES)
    genre_log_w = np.log(np.array([c for _, c in GENRE_COUNTS], dtype=np.float64))

    # Items: 1-3 genres each (50/35/15 %), drawn by genre frequency.
    u = rng.random(n_items)
    n_item_genres = np.where(u < 0.5, 1, np.where(u < 0.85, 2, 3)).astype(np.int64)
    item_genre_lists = _gumbel_top_k(rng, np.tile(genre_log_w, (n_items, 1)), n_item_genres)
    item_genres = np.zeros((n_items, n_genres), dtype=np.bool_)
    for i, gs in enumerate(item_genre_lists):
        item_genres[i, gs] = True

    # Zipf popularity by formula over a random rank order.
    rank = rng.permutation(n_items).astype(np.float64) + 1.0
    pop_w = 1.0 / rank**zipf_s
    log_pop = np.log(pop_w)
    pop_z = (log_pop - log_pop.mean()) / log_pop.std()

    # Latent tastes: half genre-driven, half idiosyncratic, so that genre
    # features explain some of the signal and collaborative embeddings the rest.
    genre_vec = rng.standard_normal((n_genres, dim))
    gcount = item_genres.sum(axis=1, keepdims=True).astype(np.float64)
    item_vec = 1.0 * (item_genres.astype(np.float64) @ genre_vec) / gcount
    item_vec = item_vec + 0.5 * rng.standard_normal((n_items, dim))
    n_fav = rng.integers(1, 4, size=n_users).astype(np.int64)
    fav_lists = _gumbel_top_k(rng, np.tile(genre_log_w, (n_users, 1)) * 0.5, n_fav)
    fav = np.zeros((n_users, n_genres), dtype=np.float64)
    for r, gs in enumerate(fav_lists):
        fav[r, gs] = 1.0 / len(gs)
    user_vec = 1.0 * (fav @ genre_vec) + 0.4 * rng.standard_normal((n_users, dim))
    user_bias = 0.3 * rng.standard_normal(n_users)
    item_bias = 0.3 * rng.standard_normal(n_items)

    # Impressions: per user, distinct items drawn by popularity.
    n_imp = rng.integers(min_impressions, max_impressions + 1, size=n_users).astype(np.int64)
    shown = _gumbel_top_k(rng, np.tile(log_pop, (n_users, 1)), n_imp)
    users = np.repeat(np.arange(n_users, dtype=np.int64), n_imp)
    items = np.concatenate(shown)

    affinity = np.einsum("nd,nd->n", user_vec[users], item_vec[items]) / np.sqrt(dim)
    affinity = (affinity - affinity.mean()) / affinity.std()
    logit = (
        -1.9
        + 1.3 * affinity
        + 0.35 * pop_z[items]
        + item_bias[items]
        + user_bias[users]
        + 0.3 * rng.standard_normal(users.shape[0])
    )
    clicks = (rng.random(users.shape[0]) < _sigmoid(logit)).astype(np.int8)

    perm = rng.permutation(users.shape[0])
    n_test = round(test_fraction * users.shape[0])
    test_idx = np.sort(perm[:n_test])
    train_idx = np.sort(perm[n_test:])

    def take(idx: NDArray[np.int64]) -> Impressions:
        return Impressions(user=users[idx], item=items[idx], click=clicks[idx])

    return DemoData(
        seed=seed,
        user_ids=tuple(f"u{k + 1}" for k in range(n_users)),
        item_ids=tuple(f"i{k + 1}" for k in range(n_items)),
        genres=GENRES,
        item_genres=item_genres,
        train=take(train_idx),
        test=take(test_idx),
    )
