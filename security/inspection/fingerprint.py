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
    x: NDArray[np.float32]  # the feature inputs side by side, one row per query row
    off_distance: NDArray[np.floating[Any]]  # RMS distance to the store row of the same ids


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
            # Constant columns get a scale from their span (or 1e-6), never a division by 0.
            std = np.maximum(np.asarray(entry["std"]), np.maximum(span * 1e-3, 1e-6))
            means.append(np.asarray(entry["mean"]))
            scales.append(std)
        self._mean = np.concatenate(means).astype(np.float32)
        self._inv_scale = (1.0 / np.concatenate(scales)).astype(np.float32)
        self.dim = int(self._mean.shape[0])
        rng = np.random.default_rng(_seed(secret, b"inspection-projection"))
        # The cell width is folded into the projection: one matmul, then rounding.
        projection = rng.standard_normal((self.dim, K)) / np.sqrt(K) / STEP
        self._projection = projection.astype(np.float32)
        keys = np.random.default_rng(_seed(secret, b"inspection-id-hash"))
        self._id_keys = keys.integers(1, 2**63, size=len(self.ids), dtype=np.uint64) | 1
        self._hash_key = hashlib.blake2b(secret, digest_size=32).digest()
        # The store's rows, standardised, in feature order: a well-behaved client sends
        # exactly these for the ids it names.
        self._reference: list[tuple[str, NDArray[np.float32]]] = []
        offset = 0
        complete = tables is not None and all(name in tables for name in self.features)
        for name in self.features:
            width = len(stats[name]["mean"])
            if complete and tables is not None:
                id_name, table = tables[name]
                sl = slice(offset, offset + width)
                z_table = (np.asarray(table, dtype=np.float32) - self._mean[sl]) * self._inv_scale[
                    sl
                ]
                self._reference.append((id_name, np.ascontiguousarray(z_table, dtype=np.float32)))
            offset += width

    def forget(self, id_name: str, row: int) -> None:
        """Erasure: the reference row of that id becomes the cold-start row (row 0)."""
        for name, table in self._reference:
            if name == id_name:
                table[row] = table[0]

    def reference_row(self, id_name: str, row: int) -> NDArray[np.float32] | None:
        """A copy of the standardised reference row of that id (None: no reference table)."""
        for name, table in self._reference:
            if name == id_name:
                found: NDArray[np.float32] = table[row].copy()
                return found
        return None

    def rows(self, feeds: Mapping[str, NDArray[Any]]) -> int:
        first = feeds[self.features[0]]
        return int(first.shape[0]) if first.ndim else 1

    def __call__(self, feeds: Mapping[str, NDArray[Any]], now: float) -> Fingerprints:
        n = self.rows(feeds)
        x = np.concatenate(
            [np.asarray(feeds[name]).reshape(n, -1) for name in self.features],
            axis=1,
            dtype=np.float32,
        )
        z = (x - self._mean) * self._inv_scale
        ids = np.stack(
            [np.asarray(feeds[name]).reshape(n).astype(np.int64) for name in self.ids], axis=1
        )
        records = np.empty(n, dtype=RECORD)
        records["ts"] = int(now)
        with np.errstate(over="ignore"):
            mixed = (ids.view(np.uint64) * self._id_keys).sum(axis=1, dtype=np.uint64)
        records["ids"] = (mixed >> np.uint64(32)).astype(np.uint32)
        # Exact bytes of each row (ids and raw float32 features), keyed.
        raw = np.concatenate([ids.view(np.uint8), x.view(np.uint8)], axis=1)
        key = self._hash_key
        records["exact"] = [
            int.from_bytes(hashlib.blake2b(r.tobytes(), key=key, digest_size=4).digest(), "little")
            for r in raw
        ]
        # einsum, not @: BLAS threads for a 40x16 product cost more than the product.
        cells = np.rint(np.einsum("ij,jk->ik", z, self._projection))
        records["proj"] = np.minimum(np.maximum(cells, -127), 127)
        if self._reference:
            reference = np.concatenate(
                [
                    table[np.asarray(feeds[id_name]).reshape(n).astype(np.int64)]
                    for id_name, table in self._reference
                ],
                axis=1,
            )
            diff = z - reference
            off = np.sqrt(np.einsum("ij,ij->i", diff, diff) / self.dim)
        else:
            off = np.zeros(n, dtype=np.float32)
        return Fingerprints(records=records, x=x, off_distance=off)
