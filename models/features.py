"""Runtime feature store: ids to table rows to ONNX model inputs.

The store is one `.npz` of plain arrays (never pickles: it is loaded with
`allow_pickle=False`). Row 0 of each table is the cold-start row: an unknown
user is ranked from population averages rather than refused, because a new
visitor is normal traffic; an unknown item is refused, because it is a client
error (or a probe) the model cannot say anything sensible about.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from gateway.errors import UnknownItems

# Array names, in the order they enter the digest; the file also holds "digest".
STORE_ARRAYS = (
    "user_ids",
    "item_ids",
    "user_feature_names",
    "item_feature_names",
    "user_features",
    "item_features",
)
STORE_KEYS = (*STORE_ARRAYS, "digest")


def digest_arrays(arrays: Mapping[str, NDArray[np.generic]]) -> str:
    """sha256 over name, dtype, shape and little-endian C-order bytes of each array."""
    h = hashlib.sha256()
    for name in STORE_ARRAYS:
        arr = np.ascontiguousarray(arrays[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def load_arrays(path: Path) -> dict[str, NDArray[np.generic]]:
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in STORE_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"feature store {path} lacks arrays {missing}")
        return {k: npz[k] for k in STORE_KEYS}


class FeatureStore:
    digest: str
    n_users: int
    n_items: int

    def __init__(
        self,
        *,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        user_features: NDArray[np.float32],
        item_features: NDArray[np.float32],
        user_feature_names: Sequence[str],
        item_feature_names: Sequence[str],
        digest: str,
    ) -> None:
        if len(user_ids) != user_features.shape[0] or len(item_ids) != item_features.shape[0]:
            raise ValueError("id arrays and feature tables differ in length")
        self.digest = digest
        self.n_users = len(user_ids) - 1
        self.n_items = len(item_ids) - 1
        # Index 0 is the cold-start row and has no id; it is never looked up.
        # An empty id is an erased row's tombstone (privacy.feature_erasure): never found.
        self._user_row = {uid: row for row, uid in enumerate(user_ids) if row and uid}
        self._item_row = {iid: row for row, iid in enumerate(item_ids) if row}
        self.item_ids: tuple[str, ...] = tuple(item_ids[1:])
        self.user_feature_names = tuple(user_feature_names)
        self.item_feature_names = tuple(item_feature_names)
        self._user_features = np.ascontiguousarray(user_features, dtype=np.float32)
        self._item_features = np.ascontiguousarray(item_features, dtype=np.float32)
        # Components holding their own copy of user rows (stage 5's reference table).
        self._forget_hooks: list[Callable[[int], None]] = []

    @classmethod
    def load(cls, path: Path) -> FeatureStore:
        """Load and verify a store: the digest is recomputed, not taken on trust (~1 ms)."""
        a = load_arrays(path)
        digest = digest_arrays(a)
        if digest != str(a["digest"]):
            raise ValueError(f"feature store {path} is corrupt: digest mismatch")
        return cls(
            user_ids=[str(x) for x in a["user_ids"].tolist()],
            item_ids=[str(x) for x in a["item_ids"].tolist()],
            user_features=a["user_features"].astype(np.float32, copy=False),
            item_features=a["item_features"].astype(np.float32, copy=False),
            user_feature_names=[str(x) for x in a["user_feature_names"].tolist()],
            item_feature_names=[str(x) for x in a["item_feature_names"].tolist()],
            digest=digest,
        )

    @property
    def n_user_features(self) -> int:
        return int(self._user_features.shape[1])

    @property
    def n_item_features(self) -> int:
        return int(self._item_features.shape[1])

    def known_user(self, user_id: str) -> bool:
        return user_id in self._user_row

    def forget_user(self, user_id: str) -> bool:
        """Erasure: from now on the user is unknown and their row holds cold-start values."""
        row = self._user_row.pop(user_id, None)
        if row is None:
            return False
        self._user_features[row] = self._user_features[0]
        for hook in self._forget_hooks:
            hook(row)
        return True

    def on_forget(self, hook: Callable[[int], None]) -> None:
        """Call `hook(row)` after a user's row is erased, so no copy of it outlives erasure."""
        self._forget_hooks.append(hook)

    def tables(self) -> dict[str, NDArray[np.float32]]:
        """The live feature tables (erasure blanks rows in place); read them, never write."""
        return {"user_features": self._user_features, "item_features": self._item_features}

    def user_row(self, user_id: str) -> NDArray[np.float32] | None:
        """The user's stored feature values (data-subject access), None if unknown."""
        row = self._user_row.get(user_id)
        return None if row is None else self._user_features[row].copy()

    def inputs_for(self, user_id: str, item_ids: Sequence[str]) -> dict[str, NDArray[np.generic]]:
        """ONNX inputs for one user and n candidates (hot path: no per-item numpy calls)."""
        n = len(item_ids)
        try:
            item_idx = np.fromiter(map(self._item_row.__getitem__, item_ids), np.int64, n)
        except KeyError:
            item_idx = np.zeros(1, dtype=np.int64)  # reported just below
        if not item_idx.all():  # row 0 is no item: an unknown id
            lookup = self._item_row.get
            raise UnknownItems([k for k, i in enumerate(item_ids) if not lookup(i, 0)])
        user_row = self._user_row.get(user_id, 0)
        return {
            "user_id": np.full(n, user_row, dtype=np.int64),
            "item_id": item_idx,
            # A real copy, not a stride-0 broadcast view: callers concatenate
            # these for micro-batches and onnxruntime wants contiguous input.
            "user_features": np.repeat(self._user_features[user_row : user_row + 1], n, axis=0),
            "item_features": self._item_features[item_idx],
        }
