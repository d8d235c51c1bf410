"""Stateless checks: every numeric input within the bounds learned from the training data.

Bounds come from `feature_stats` (the model manifest, or the feature store at
start-up). Ids must be known indices, strictly; feature values may exceed the
training [min, max] by a policy tolerance (a fraction of the column's span),
since fresh features drift a little. NaN/inf never get here: the decode step
refuses them for every float tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.errors import InvalidRequest
from security.inspection.stats import FeatureStats


@dataclass(frozen=True, slots=True)
class BoundsReport:
    values: int  # feature values checked
    out_of_range: int  # of those, how many lie outside the tolerated bounds

    @property
    def fraction(self) -> float:
        return self.out_of_range / self.values if self.values else 0.0


class Bounds:
    def __init__(self, stats: FeatureStats, *, id_inputs: tuple[str, ...]) -> None:
        self._ids = {
            name: (int(np.ceil(stats[name]["min"][0])), int(np.floor(stats[name]["max"][0])))
            for name in id_inputs
            if name in stats
        }
        self._features: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = {
            name: (np.asarray(entry["min"]), np.asarray(entry["max"]))
            for name, entry in stats.items()
            if name not in id_inputs
        }

    def check(self, feeds: Mapping[str, NDArray[Any]], tolerance: float) -> BoundsReport:
        """Raise InvalidRequest for unknown ids; count feature values out of bounds."""
        for name, (first, last) in self._ids.items():
            ids = feeds.get(name)
            if ids is not None and ids.size and (ids.min() < first or ids.max() > last):
                # Names the input, never the value (it may identify someone).
                raise InvalidRequest(f"input {name}: unknown id")
        checked = outside = 0
        for name, (low, high) in self._features.items():
            values = feeds.get(name)
            if values is None:
                continue
            slack: NDArray[np.float64] = (high - low) * tolerance
            rows = values.reshape(values.shape[0] if values.ndim else 1, -1)
            if rows.shape[1] != low.shape[0]:
                raise InvalidRequest(f"input {name}: expected {low.shape[0]} columns")
            checked += rows.size
            outside += int(np.count_nonzero((rows < low - slack) | (rows > high + slack)))
        return BoundsReport(values=checked, out_of_range=outside)
