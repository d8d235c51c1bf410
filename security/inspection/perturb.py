"""Keyed score perturbation: served scores that rank the same and differentiate badly.

Score-based attacks (NES, ZOO, finite differences, and extraction by regression)
read how the score moves between nearby queries. Each served score here moves by
a keyed pseudo-random offset of the exact query row:

    score' = score + u(key, row) * min(max_offset, 0.49 * gap to its nearest
                                       neighbour among the request's scores)

- deterministic: the same request gets the same answer, so repeating a query and
  averaging does not remove the offset;
- keyed: u is a keyed hash of the row's exact bytes (the gateway's secret), so an
  attacker cannot predict or subtract it, and two rows however close get
  independent offsets (a finite difference over a step h gains noise of about
  max_offset / h);
- ranking-safe: each score stays within half the gap to its neighbours, so the
  order of the request's scores never changes (ties stay tied): the served
  ranking, and so NDCG, is exactly the unperturbed one.

It costs clients that use scores as calibrated probabilities at most max_offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from security.inspection.fingerprint import mix64

U64 = np.uint64
_MAX_CACHED_ITEMS = 200_000  # item id -> keyed hash (~40 MB at most; then start over)
ROOM = 0.49  # of the gap to the nearest neighbour: strictly under half keeps the order


class ScorePerturber:
    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.blake2b(secret, digest_size=32, person=b"insp-perturb").digest()
        seed = int.from_bytes(self._key[:8], "little")
        self._salt = U64(int.from_bytes(self._key[8:16], "little"))
        self._rng_seed = seed
        self._words: dict[int, NDArray[np.uint64]] = {}
        self._items: dict[str, int] = {}

    def _word_keys(self, width: int) -> NDArray[np.uint64]:
        found = self._words.get(width)
        if found is None:
            rng = np.random.default_rng([self._rng_seed, width])
            found = rng.integers(1, 2**63, size=width, dtype=np.uint64) | U64(1)
            if len(self._words) < 64:
                self._words[width] = found
        return found

    def row_keys(self, feeds: Mapping[str, NDArray[Any]], rows: int) -> NDArray[np.uint64]:
        """A keyed 64-bit hash of each row's exact input bytes (every input, by name)."""
        parts = []
        for name in sorted(feeds):
            data = np.asarray(feeds[name])
            if data.dtype.kind in "OU":  # string ids (OIP BYTES): their UTF-8 bytes
                data = np.asarray([str(v).encode() for v in data.reshape(-1)], dtype=bytes)
            if data.ndim == 0 or data.shape[0] != rows:  # one value for every row
                data = np.broadcast_to(data.reshape(1, -1), (rows, data.size))
            data = np.ascontiguousarray(data.reshape(rows, -1))
            raw = data.view(np.uint8).reshape(rows, -1)
            pad = (-raw.shape[1]) % 4
            if pad:
                raw = np.concatenate([raw, np.zeros((rows, pad), dtype=np.uint8)], axis=1)
            parts.append(raw.view(np.uint32).astype(np.uint64))
        words = np.concatenate(parts, axis=1) if parts else np.zeros((rows, 0), dtype=np.uint64)
        h = (words * self._word_keys(words.shape[1])).sum(axis=1, dtype=np.uint64)
        return mix64(h ^ self._salt)

    def id_keys(self, user_id: str, item_ids: Sequence[str]) -> NDArray[np.uint64]:
        """The same for a /v1/rank request: one key per (user, item) pair.

        Each id gets a keyed BLAKE2b hash; a pair's key mixes the two (splitmix64, twice).
        Item hashes are cached (item ids are the catalogue's, not personal data, and only
        known items reach stage 7): a hundred BLAKE2b calls per request cost more than
        the rest of the stage."""
        user = U64(self._id_hash(user_id.encode()))
        cache = self._items
        found = [cache.get(item) for item in item_ids]
        if None in found:
            if len(cache) > _MAX_CACHED_ITEMS:
                cache.clear()
            for n, item in enumerate(item_ids):
                if found[n] is None:
                    found[n] = cache[item] = self._id_hash(b"item:" + item.encode())
        items = np.array(found, dtype=np.uint64)
        return mix64(mix64(items ^ user) ^ self._salt)

    def _id_hash(self, data: bytes) -> int:
        return int.from_bytes(
            hashlib.blake2b(data, key=self._key, digest_size=8).digest(), "little"
        )

    def apply(
        self, scores: NDArray[Any], keys: NDArray[np.uint64], max_offset: float
    ) -> NDArray[Any]:
        """The perturbed scores, same shape and dtype; `keys`: one per score."""
        values = np.asarray(scores)
        flat = values.reshape(-1).astype(np.float64)
        n = flat.shape[0]
        if n == 0 or max_offset <= 0 or values.dtype.kind != "f" or len(keys) != n:
            return values
        # u in [-1, 1) from the top 53 bits of the mixed key.
        u = (mix64(keys ^ self._salt) >> U64(11)).astype(np.float64) / 2.0**52 - 1.0
        order = np.argsort(flat, kind="stable")
        ranked = flat[order]
        gaps = np.diff(ranked)
        inf = np.array([np.inf])
        room = ROOM * np.minimum(np.concatenate([inf, gaps]), np.concatenate([gaps, inf]))
        moved = np.empty(n, dtype=np.float64)
        moved[order] = ranked + np.minimum(max_offset, room) * u[order]
        return moved.reshape(values.shape).astype(values.dtype)
