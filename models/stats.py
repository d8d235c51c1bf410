"""Feature statistics of a model's inputs, stored in the package manifest.

The input inspector (stage 5) compares request tensors with these ranges. Format
(agreed with the inspection work): one entry per numeric input, one value per
column (the last dimension; 1-D inputs such as ids have one column):

    {"<input>": {"min": [...], "max": [...], "mean": [...], "std": [...],
                 "q001": [...], "q999": [...], "q10": [...], ..., "q90": [...],
                 "b0": [...], ..., "b9": [...]}}

The deciles (`q10` ... `q90`) and the share of the data in each bin they make
(`b0` ... `b9`) are the drift gauges' reference (models.drift); packages made before
them have none, and then report no input drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

STAT_KEYS = ("min", "max", "mean", "std", "q001", "q999")
FeatureStats = dict[str, dict[str, list[float]]]


def _columns(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        return array.reshape(1, 1)
    if array.ndim == 1:
        return array.reshape(-1, 1)
    return array.reshape(-1, array.shape[-1])


def _floats(values: np.ndarray) -> list[float]:
    # Rounded so the manifest stays readable and its JSON is stable across platforms.
    return [float(round(float(v), 6)) for v in values]


def _reference_bins(cols: np.ndarray) -> dict[str, list[float]]:
    """Decile edges, and the share of the data in each of the ten bins they make.

    The drift gauges (models.drift) bin live values the same way (a value's bin is the
    number of edges at or below it). The shares are measured, not assumed to be a tenth
    each: a discrete column (a flag, a count) has tied deciles and uneven bins.
    """
    edges = np.quantile(cols, np.arange(1, 10) / 10, axis=0).T  # columns x 9
    bins = (cols[:, :, None] >= edges[None, :, :]).sum(axis=2)
    shares = np.stack([(bins == b).mean(axis=0) for b in range(10)])  # 10 x columns
    out = {f"q{10 * (i + 1)}": _floats(edges[:, i]) for i in range(9)}
    out.update({f"b{b}": _floats(shares[b]) for b in range(10)})
    return out


def feature_stats(arrays: Mapping[str, np.ndarray]) -> FeatureStats:
    """Per-column statistics of each numeric array; non-numeric and empty arrays are skipped."""
    out: FeatureStats = {}
    for name in sorted(arrays):
        raw = np.asarray(arrays[name])
        if raw.size == 0 or not (
            np.issubdtype(raw.dtype, np.number) or np.issubdtype(raw.dtype, np.bool_)
        ):
            continue
        cols = _columns(raw)
        out[name] = {
            "min": _floats(cols.min(axis=0)),
            "max": _floats(cols.max(axis=0)),
            "mean": _floats(cols.mean(axis=0)),
            "std": _floats(cols.std(axis=0)),
            "q001": _floats(np.quantile(cols, 0.001, axis=0)),
            "q999": _floats(np.quantile(cols, 0.999, axis=0)),
            **_reference_bins(cols),
        }
    return out


def stats_from_npz(path: Path) -> FeatureStats:
    """Statistics of every array in an .npz (`models pack --stats FILE.npz`)."""
    with np.load(path, allow_pickle=False) as data:
        return feature_stats({k: data[k] for k in data.files})
