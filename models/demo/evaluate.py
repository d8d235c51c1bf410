"""Held-out evaluation of the demo ranker: numpy and onnxruntime only."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.demo.data import DemoData
from models.demo.features_build import FeatureTables
from models.ort import session_from_bytes


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC as the Mann-Whitney U statistic; tied scores share their mean rank.

    Equals the probability that a random positive outscores a random negative,
    counting ties as one half.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError("labels and scores differ in length")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    is_start = np.empty(s.size, dtype=bool)
    is_start[0] = True
    np.not_equal(sorted_s[1:], sorted_s[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    ends = np.append(starts[1:], s.size)
    mean_rank = (starts + ends + 1) / 2.0  # 1-based mean of ranks starts+1..ends
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def heldout_inputs(data: DemoData, tables: FeatureTables) -> dict[str, NDArray[np.generic]]:
    """Model inputs for every held-out impression (table row = 0-based index + 1)."""
    user_rows = data.test.user + 1
    item_rows = data.test.item + 1
    return {
        "user_id": user_rows.astype(np.int64),
        "item_id": item_rows.astype(np.int64),
        "user_features": tables.user_features[user_rows],
        "item_features": tables.item_features[item_rows],
    }


def score_heldout(
    model_bytes: bytes, data: DemoData, tables: FeatureTables, *, cold_start: bool = False
) -> NDArray[np.float32]:
    """Model scores for the held-out rows; `cold_start` ranks every row as the unknown user."""
    inputs = heldout_inputs(data, tables)
    if cold_start:
        n = len(data.test)
        inputs["user_id"] = np.zeros(n, dtype=np.int64)
        inputs["user_features"] = np.repeat(tables.user_features[:1], n, axis=0)
    session = session_from_bytes(model_bytes)
    (scores,) = session.run(["score"], inputs)
    return np.asarray(scores, dtype=np.float32)


def popularity_scores(data: DemoData) -> NDArray[np.float64]:
    """Baseline: each held-out item scored by its click count in the training split."""
    clicks = np.bincount(data.train.item, weights=data.train.click, minlength=data.n_items)
    return clicks.astype(np.float64)[data.test.item]


def evaluate(model_bytes: bytes, data: DemoData, tables: FeatureTables) -> dict[str, float]:
    labels = data.test.click
    ctr_col = list(tables.item_feature_names).index("item.ctr_smoothed")
    item_ctr = tables.item_features[data.test.item + 1, ctr_col]
    return {
        "model_auc": auc(labels, score_heldout(model_bytes, data, tables)),
        "popularity_auc": auc(labels, popularity_scores(data)),
        "item_ctr_auc": auc(labels, item_ctr),
        "cold_start_auc": auc(labels, score_heldout(model_bytes, data, tables, cold_start=True)),
        "heldout_impressions": float(len(data.test)),
        "heldout_ctr": float(labels.mean()),
    }
