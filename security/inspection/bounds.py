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
    def __init__(
        self, stats: FeatureStats, *, id_inputs: tuple[str, ...], feature_inputs: tuple[str, ...]
    ) -> None:
        self._ids = [
            (name, int(np.ceil(stats[name]["min"][0])), int(np.floor(stats[name]["max"][0])))
            for name in id_inputs
            if name in stats
        ]
        self._low = np.concatenate([stats[name]["min"] for name in feature_inputs])
        self._high = np.concatenate([stats[name]["max"] for name in feature_inputs])
        self._span = self._high - self._low
        self._tolerance = -1.0
        self._limits = (self._low, self._high)

    def check_ids(self, feeds: Mapping[str, NDArray[Any]]) -> None:
        """Ids must be known indices: anything else is a client error, not a detection."""
        for name, first, last in self._ids:
            ids = feeds.get(name)
            if ids is not None and ids.size and (ids.min() < first or ids.max() > last):
                # Names the input, never the value (it may identify someone).
                raise InvalidRequest(f"input {name}: unknown id")

    def check(self, x: NDArray[np.float32], tolerance: float) -> BoundsReport:
        """Count feature values (rows x concatenated feature inputs) out of bounds."""
        if tolerance != self._tolerance:
            slack = self._span * tolerance
            self._limits = (self._low - slack, self._high + slack)
            self._tolerance = tolerance
        low, high = self._limits
        outside = int(np.count_nonzero((x < low) | (x > high)))
        return BoundsReport(values=int(x.size), out_of_range=outside)
