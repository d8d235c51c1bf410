"""Feature tables for the demo ranker, built from the training split only.

Held-out impressions never contribute to a feature, so the held-out AUC is an
honest estimate. Row 0 of each table is the cold-start / unknown row.

Only integer counting, division and `math.log1p` on integers are used: these
give bit-identical float32 values on any IEEE machine, which the feature-store
digest in the committed model card relies on (numpy's SIMD `log1p` may differ
in the last bit between CPUs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.files import replace_private
from models.demo.data import DemoData
from models.features import STORE_ARRAYS, digest_arrays

# Pseudo-counts pulling sparse users' and items' shares toward the global ones.
GENRE_PRIOR_WEIGHT = 5.0
CTR_PRIOR_WEIGHT = 20.0


@dataclass(frozen=True)
class FeatureTables:
    user_ids: NDArray[np.str_]  # [U+1], entry 0 is "" (cold start)
    item_ids: NDArray[np.str_]  # [I+1], entry 0 is "" (unknown)
    user_feature_names: NDArray[np.str_]
    item_feature_names: NDArray[np.str_]
    user_features: NDArray[np.float32]  # [U+1, Fu]
    item_features: NDArray[np.float32]  # [I+1, Fi]

    @property
    def n_genres(self) -> int:
        """Leading columns of both tables that are per-genre (the wide cross)."""
        return sum(1 for n in self.item_feature_names if str(n).startswith("item.genre."))

    def arrays(self) -> dict[str, NDArray[np.generic]]:
        return {name: getattr(self, name) for name in STORE_ARRAYS}

    def digest(self) -> str:
        return digest_arrays(self.arrays())


def _log1p_counts(counts: NDArray[np.int64]) -> NDArray[np.float64]:
    """log1p of non-negative integers via libm on the distinct values (see module doc)."""
    values, inverse = np.unique(counts, return_inverse=True)
    table = np.array([math.log1p(int(v)) for v in values], dtype=np.float64)
    return table[inverse.reshape(counts.shape)]


def _ids(ids: tuple[str, ...]) -> NDArray[np.str_]:
    return np.array(("", *ids), dtype=np.str_)


def build_tables(data: DemoData) -> FeatureTables:
    n_users, n_items, genres = data.n_users, data.n_items, data.genres
    n_genres = len(genres)
    tr = data.train
    item_genres = data.item_genres.astype(np.int64)
    clicks = tr.click.astype(np.int64)

    total_imps = len(tr)
    total_clicks = int(clicks.sum())
    global_ctr = total_clicks / total_imps

    # Users: click share per genre, smoothed toward the global click share.
    clicked = tr.click.astype(bool)
    user_genre_clicks = np.zeros((n_users, n_genres), dtype=np.int64)
    np.add.at(user_genre_clicks, tr.user[clicked], item_genres[tr.item[clicked]])
    global_genre_clicks = user_genre_clicks.sum(axis=0)
    global_genre_share = global_genre_clicks / global_genre_clicks.sum()
    user_genre_total = user_genre_clicks.sum(axis=1, keepdims=True)
    genre_pref = (user_genre_clicks + GENRE_PRIOR_WEIGHT * global_genre_share) / (
        user_genre_total + GENRE_PRIOR_WEIGHT
    )
    user_imps = np.bincount(tr.user, minlength=n_users).astype(np.int64)
    user_clicks = np.zeros(n_users, dtype=np.int64)
    np.add.at(user_clicks, tr.user, clicks)
    user_ctr = (user_clicks + CTR_PRIOR_WEIGHT * global_ctr) / (user_imps + CTR_PRIOR_WEIGHT)
    user_rows = np.column_stack([genre_pref, _log1p_counts(user_imps), user_ctr])
    # Cold start: the global genre share, an average user's volume, global CTR.
    avg_user_imps = math.log1p(total_imps / n_users)
    user_cold = np.concatenate([global_genre_share, [avg_user_imps, global_ctr]])

    # Items: genre multi-hot, popularity (log impressions), smoothed CTR.
    item_imps = np.bincount(tr.item, minlength=n_items).astype(np.int64)
    item_clicks = np.zeros(n_items, dtype=np.int64)
    np.add.at(item_clicks, tr.item, clicks)
    item_ctr = (item_clicks + CTR_PRIOR_WEIGHT * global_ctr) / (item_imps + CTR_PRIOR_WEIGHT)
    item_rows = np.column_stack([item_genres, _log1p_counts(item_imps), item_ctr])
    item_cold = np.concatenate(
        [item_genres.sum(axis=0) / n_items, [math.log1p(total_imps / n_items), global_ctr]]
    )

    user_names = [f"user.genre_pref.{g}" for g in genres] + [
        "user.log1p_impressions",
        "user.ctr_smoothed",
    ]
    item_names = [f"item.genre.{g}" for g in genres] + [
        "item.log1p_impressions",
        "item.ctr_smoothed",
    ]
    return FeatureTables(
        user_ids=_ids(data.user_ids),
        item_ids=_ids(data.item_ids),
        user_feature_names=np.array(user_names, dtype=np.str_),
        item_feature_names=np.array(item_names, dtype=np.str_),
        user_features=np.vstack([user_cold, user_rows]).astype(np.float32),
        item_features=np.vstack([item_cold, item_rows]).astype(np.float32),
    )


def write_feature_store(path: Path, tables: FeatureTables) -> str:
    """Write the tables to one .npz (no pickled objects) atomically; return the digest."""
    digest = tables.digest()
    arrays: dict[str, Any] = {"digest": np.array(digest, dtype=np.str_), **tables.arrays()}
    # allow_pickle=False makes numpy refuse, not pickle, anything non-plain.
    replace_private(path, lambda fh: np.savez(fh, allow_pickle=False, **arrays))
    return digest
