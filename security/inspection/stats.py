"""Feature statistics in the model manifest's `feature_stats` format.

The models package stores these in the signed manifest; when a model is served
without one, the gateway computes the same format from the feature store at
start-up (the store holds exactly the rows the model was trained on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

FeatureStats = dict[str, dict[str, list[float]]]
STAT_KEYS = ("min", "max", "mean", "std", "q001", "q999")


def column_stats(values: NDArray[Any]) -> dict[str, list[float]]:
    """Per-column statistics of a 1-D (one column) or 2-D array."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 1:
        data = data.reshape(-1, 1)
    q001, q999 = np.quantile(data, [0.001, 0.999], axis=0)
    return {
        "min": data.min(axis=0).tolist(),
        "max": data.max(axis=0).tolist(),
        "mean": data.mean(axis=0).tolist(),
        "std": data.std(axis=0).tolist(),
        "q001": q001.tolist(),
        "q999": q999.tolist(),
    }


def feature_stats_from_tables(
    user_features: NDArray[Any], item_features: NDArray[Any]
) -> FeatureStats:
    """The demo model's inputs from the feature store's tables (row 0: cold start).

    Ids are table indices: user 0 is the cold-start row, items start at 1.
    """
    return {
        "user_id": column_stats(np.arange(0, user_features.shape[0])),
        "item_id": column_stats(np.arange(1, item_features.shape[0])),
        "user_features": column_stats(user_features),
        "item_features": column_stats(item_features),
    }


def check_stats(stats: Mapping[str, Any]) -> FeatureStats:
    """Validate a manifest's `feature_stats` (untrusted shape) into the typed form."""
    out: FeatureStats = {}
    for name, entry in stats.items():
        if not isinstance(entry, Mapping) or set(STAT_KEYS) - set(entry):
            raise ValueError(f"feature_stats[{name!r}] lacks {sorted(set(STAT_KEYS))}")
        columns = {key: [float(v) for v in entry[key]] for key in STAT_KEYS}
        widths = {len(v) for v in columns.values()}
        if len(widths) != 1 or 0 in widths:
            raise ValueError(f"feature_stats[{name!r}]: statistics differ in length")
        if not all(np.isfinite(v).all() for v in columns.values()):
            raise ValueError(f"feature_stats[{name!r}]: non-finite statistic")
        out[str(name)] = columns
    return out
