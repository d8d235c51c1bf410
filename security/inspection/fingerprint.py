"""Compact query fingerprints: standardised features, a random projection, int8 cells.

In the spirit of Chen, Carlini & Wagner (2019, stateful detection) and Blacklight
(2022): the detector never keeps the query itself, only K signed bytes of a
Johnson-Lindenstrauss projection of its standardised feature vector (distances
are kept up to a small distortion), plus 32-bit keyed hashes of its ids and of
its exact bytes. That makes a history entry 29 bytes and lets replicas compare
fingerprints in Redis without storing feature values there.

The projection and hash keys derive from the gateway's secret, so replicas agree
and an outsider cannot aim queries at hash collisions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from security.inspection.stats import FeatureStats

K = 16  # projected dimensions
STEP = 0.05  # int8 cell width, in training standard deviations (range about ±6.3)

# One history entry: whole seconds, keyed hashes of the ids and of the exact row,
# off-manifold bit, projected cells. 29 bytes, packed (the Redis format too).
RECORD = np.dtype(
    [("ts", "<u4"), ("ids", "<u4"), ("exact", "<u4"), ("off", "u1"), ("proj", "i1", (K,))]
)


@dataclass(frozen=True, slots=True)
class Fingerprints:
    records: NDArray[np.void]  # RECORD, one per row
    z: NDArray[np.float32]  # standardised features, one row per query row
    off_distance: NDArray[np.float32]  # RMS distance to the store row of the same ids


def _seed(secret: bytes, label: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(label, key=secret[:64], digest_size=8).digest(), "little")


class Fingerprinter:
    def __init__(
        self,
        stats: FeatureStats,
        *,
        secret: bytes,
        feature_inputs: Sequence[str],
        id_inputs: Sequence[str],
        tables: Mapping[str, tuple[str, NDArray[Any]]] | None = None,
    ) -> None:
        """`tables`: feature input -> (its id input, the reference table indexed by it)."""
        self.features = tuple(feature_inputs)
        self.ids = tuple(id_inputs)
        means, scales = [], []
        for name in self.features:
            entry = stats[name]
            span = np.asarray(entry["max"]) - np.asarray(entry["min"])
            # Constant columns get a scale from their span (or 1), never a division by 0.
            std = np.maximum(np.asarray(entry["std"]), np.maximum(span * 1e-3, 1e-6))
            means.append(np.asarray(entry["mean"]))
            scales.append(std)
        self._mean = np.concatenate(means).astype(np.float32)
        self._inv_scale = (1.0 / np.concatenate(scales)).astype(np.float32)
        self.dim = int(self._mean.shape[0])
        rng = np.random.default_rng(_seed(secret, b"inspection-projection"))
        self._projection = (rng.standard_normal((self.dim, K)) / np.sqrt(K)).astype(np.float32)
        keys = np.random.default_rng(_seed(secret, b"inspection-row-hash"))
        self._row_keys = keys.integers(1, 2**63, size=self.dim + len(self.ids), dtype=np.uint64) | 1
        self._id_keys = keys.integers(1, 2**63, size=len(self.ids), dtype=np.uint64) | 1
        self._reference: dict[str, tuple[str, NDArray[np.float32]]] = {}
        offset = 0
        for name, width in zip(
            self.features, (len(stats[n]["mean"]) for n in self.features), strict=True
        ):
            if tables and name in tables:
                id_name, table = tables[name]
                sl = slice(offset, offset + width)
                z_table = (np.asarray(table, dtype=np.float32) - self._mean[sl]) * self._inv_scale[
                    sl
                ]
                self._reference[name] = (id_name, z_table.astype(np.float32))
            offset += width

    def rows(self, feeds: Mapping[str, NDArray[Any]]) -> int:
        first = feeds[self.features[0]]
        return int(first.shape[0]) if first.ndim else 1

    def __call__(self, feeds: Mapping[str, NDArray[Any]], now: float) -> Fingerprints:
        n = self.rows(feeds)
        x = np.concatenate(
            [np.asarray(feeds[name], dtype=np.float32).reshape(n, -1) for name in self.features],
            axis=1,
        )
        z = (x - self._mean) * self._inv_scale
        ids = (
            np.stack(
                [
                    np.asarray(feeds[name]).reshape(n).astype(np.int64).view(np.uint64)
                    for name in self.ids
                ],
                axis=1,
            )
            if self.ids
            else np.zeros((n, 0), dtype=np.uint64)
        )
        records = np.zeros(n, dtype=RECORD)
        records["ts"] = int(now)
        records["ids"] = _fold(ids * self._id_keys)
        # Exact bytes of the row (ids and raw float32 features), keyed multiply-sum hash.
        words = np.concatenate([ids, x.view(np.uint32).astype(np.uint64)], axis=1)
        records["exact"] = _fold(words * self._row_keys)
        cells = np.rint((z @ self._projection) / STEP)
        records["proj"] = np.clip(cells, -127, 127).astype(np.int8)
        off = np.zeros(n, dtype=np.float32)
        offset = 0
        for name in self.features:
            width = int(np.asarray(feeds[name]).reshape(n, -1).shape[1])
            ref = self._reference.get(name)
            if ref is not None:
                id_name, table = ref
                index = np.asarray(feeds[id_name]).reshape(n).astype(np.int64)
                index = np.clip(index, 0, table.shape[0] - 1)
                diff = z[:, offset : offset + width] - table[index]
                off += np.einsum("ij,ij->i", diff, diff)
            offset += width
        off_distance = np.sqrt(off / self.dim).astype(np.float32)
        return Fingerprints(records=records, z=z.astype(np.float32), off_distance=off_distance)


def _fold(products: NDArray[np.uint64]) -> NDArray[np.uint32]:
    """Sum per row (mod 2^64), then fold to 32 bits."""
    with np.errstate(over="ignore"):
        total = products.sum(axis=1, dtype=np.uint64)
        mixed = total ^ (total >> np.uint64(29))
        mixed = mixed * np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(32)
    folded: NDArray[np.uint32] = (mixed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return folded
