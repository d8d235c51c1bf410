"""Query fingerprints: standardised features, the distance to the store row, keyed hashes.

In the spirit of Chen, Carlini & Wagner (2019, stateful detection) and Blacklight
(2022), but keyed on what an adaptive attacker cannot choose (Feng et al. 2023):

- `off_distance`: the RMS distance (in training standard deviations) of a row from
  the store's row of the ids it names. A well-behaved client sends the store's
  features (or features recomputed a little since); an attack perturbs them.
- `buckets`: locality-sensitive hashes of the standardised vector, ids ignored:
  p-stable (Datar et al. 2004) projections, quantised at two scales, three
  projections per table, four tables per scale. Rows within the fine radius share
  a fine bucket in most tables, so noise added to every query (0.3 standard
  deviations per feature) does not hide that queries cluster, and rotating ids
  changes nothing.
- `exact`: a keyed hash of the exact row (ids and float bytes), so exact repeats
  are known as such (they teach an attacker nothing).

The detector never keeps a query, only counts in sketches under these hashes.
Projections and hash keys derive from the gateway's secret, so replicas agree and
an outsider cannot aim queries at bucket boundaries or hash collisions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from security.inspection.stats import FeatureStats

PER_TABLE = 3  # projections concatenated per table: selectivity
TABLES = 4  # tables per scale: recall
SCALES = (1.0, 3.0)  # multiples of the fine radius
# Bucket width over the radius (x sqrt(dim)): two rows at the radius share one projection's
# bucket with probability ~0.73, a table's (3 projections) ~0.4; rows at 5x the radius ~0.05.
WIDTH_FACTOR = 3.0
CHANNELS = len(SCALES) * TABLES

U64 = np.uint64
_M1 = U64(0xBF58476D1CE4E5B9)
_M2 = U64(0x94D049BB133111EB)


def mix64(h: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64's finaliser: every input bit reaches every output bit. On arrays (never
    scalars: those warn) unsigned multiplication wraps silently, as the hash needs."""
    h = h ^ (h >> U64(30))
    h *= _M1
    h ^= h >> U64(27)
    h *= _M2
    h ^= h >> U64(31)
    return h


def _seed(secret: bytes, label: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(label, key=secret[:64], digest_size=8).digest(), "little")


def _per_row(values: Any, n: int) -> NDArray[Any]:
    """One value per row: an id given once for every row (one user) is broadcast."""
    flat = np.asarray(values).reshape(-1)
    return np.broadcast_to(flat, (n,)) if flat.size == 1 else flat.reshape(n)


def keyed_hash(secret: bytes, text: str) -> int:
    """A 64-bit keyed hash of a history's name (a client, tenant or subject)."""
    digest = hashlib.blake2b(text.encode(), key=secret[:64], digest_size=8, person=b"insp-key")
    return int.from_bytes(digest.digest(), "little")


@dataclass(frozen=True, slots=True)
class Fingerprints:
    x: NDArray[np.float32]  # the feature inputs side by side, one row per query row
    z: NDArray[np.float32]  # standardised
    ids: NDArray[np.int64]  # the id inputs side by side
    # RMS distance to the store row of the same ids; NaN where there is no store table
    off_distance: NDArray[np.floating[Any]]
    # the same per feature input with a store table (rows x parts), RMS over its columns
    part_distance: NDArray[np.floating[Any]]


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
        self.secret = secret
        rng = np.random.default_rng(_seed(secret, b"inspection-lsh"))
        width = CHANNELS * PER_TABLE
        self._projection = rng.standard_normal((self.dim, width)).astype(np.float32)
        self._offsets = rng.random(width).astype(np.float32)
        self._table_keys = rng.integers(1, 2**63, size=(CHANNELS, PER_TABLE), dtype=np.uint64)
        self._table_keys |= U64(1)
        self._table_salts = rng.integers(0, 2**63, size=CHANNELS, dtype=np.uint64)
        words = 2 * len(self.ids) + self.dim  # int64 ids and float32 features, as 32-bit words
        self._exact_keys = rng.integers(1, 2**63, size=words, dtype=np.uint64) | U64(1)
        self._scale_width = (np.repeat(np.asarray(SCALES), TABLES * PER_TABLE)).astype(np.float32)
        # The store's rows, standardised, in feature order: a well-behaved client sends
        # exactly these for the ids it names.
        self._reference: list[tuple[str, NDArray[np.float32]]] = []
        # Each feature input with a store table: (its name, its id input, its columns).
        self.parts: list[tuple[str, str, slice]] = []
        offset = 0
        complete = tables is not None and all(name in tables for name in self.features)
        for name in self.features:
            width_f = len(stats[name]["mean"])
            if complete and tables is not None:
                id_name, table = tables[name]
                sl = slice(offset, offset + width_f)
                z_table = (np.asarray(table, dtype=np.float32) - self._mean[sl]) * self._inv_scale[
                    sl
                ]
                self._reference.append((id_name, np.ascontiguousarray(z_table, dtype=np.float32)))
                self.parts.append((name, id_name, sl))
            offset += width_f

    @property
    def has_reference(self) -> bool:
        return bool(self._reference)

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

    def __call__(self, feeds: Mapping[str, NDArray[Any]]) -> Fingerprints:
        n = self.rows(feeds)
        x = np.concatenate(
            [np.asarray(feeds[name]).reshape(n, -1) for name in self.features],
            axis=1,
            dtype=np.float32,
        )
        z = (x - self._mean) * self._inv_scale
        ids = np.stack(
            [_per_row(feeds[name], n).astype(np.int64) for name in self.ids], axis=1
        )
        if self._reference:
            reference = np.concatenate(
                [table[ids[:, self.ids.index(id_name)]] for id_name, table in self._reference],
                axis=1,
            )
            squares = (z - reference) ** 2
            off = np.sqrt(squares.sum(axis=1) / self.dim)
            parts = np.stack(
                [np.sqrt(squares[:, sl].mean(axis=1)) for _, _, sl in self.parts], axis=1
            )
        else:
            off = np.full(n, np.nan, dtype=np.float32)
            parts = np.zeros((n, 0), dtype=np.float32)
        return Fingerprints(x=x, z=z, ids=ids, off_distance=off, part_distance=parts)

    def exact(self, prints: Fingerprints, rows: NDArray[np.intp]) -> NDArray[np.uint64]:
        """A keyed 64-bit hash of each row's exact ids and feature bytes (multilinear over
        32-bit words, then mixed): equal rows hash equal, others collide ~2^-64."""
        words = np.concatenate(
            [prints.ids[rows].view(np.uint32), prints.x[rows].view(np.uint32)], axis=1
        ).astype(np.uint64)
        h = (words * self._exact_keys).sum(axis=1, dtype=np.uint64)
        return mix64(h)

    def part_exact(self, prints: Fingerprints, rows: NDArray[np.intp]) -> NDArray[np.uint64]:
        """A keyed hash of each (row, part)'s exact feature bytes: its version."""
        out = np.empty((len(rows), len(self.parts)), dtype=np.uint64)
        for j, (_, _, sl) in enumerate(self.parts):
            words = prints.x[rows, sl].view(np.uint32).astype(np.uint64)
            h = (words * self._exact_keys[: words.shape[1]]).sum(axis=1, dtype=np.uint64)
            out[:, j] = mix64(h + U64(j))
        return out

    def buckets(
        self, prints: Fingerprints, rows: NDArray[np.intp], radius: float
    ) -> NDArray[np.uint64]:
        """LSH bucket keys, one per (row, table): SCALES x TABLES columns."""
        width = WIDTH_FACTOR * max(radius, 1e-3) * np.sqrt(self.dim) * self._scale_width
        # einsum, not @: BLAS threads for a small product cost more than the product.
        proj = np.einsum("ij,jk->ik", prints.z[rows], self._projection)
        cells = np.floor(proj / width + self._offsets).astype(np.int64).view(np.uint64)
        cells = cells.reshape(len(rows), CHANNELS, PER_TABLE)
        h = (cells * self._table_keys).sum(axis=2, dtype=np.uint64) + self._table_salts
        return mix64(h)
