"""Erasure from the feature store: the user's row is overwritten on disk and in memory.

The store is an `.npz` snapshot. Deleting the row would shift every later row
index, and the model addresses its user embedding by row index, so the row is
kept but emptied instead: its id becomes "" (a tombstone that no lookup finds)
and its feature values become the cold-start row's. The file is rewritten
atomically (temporary file in the same directory, fsync, rename), so no file in
the data directory holds the old values afterwards, and the in-memory store
forgets the user, who is then ranked as unknown.

Erasures are remembered in the consent store (a keyed handle of the user id), and
`reapply` runs at start-up: a feature store regenerated or restored from a backup
after an erasure is cleaned again before the first request.

Not covered: the trained model's own weights (the demo model has a per-row user
embedding, learned from the data before the erasure). The public API can no
longer reach that row (the user is unknown; the row's id is gone); a model that
must forget too is retrained. The OIP endpoint takes raw row indices by design.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.files import replace_private
from models import FeatureStore, digest_arrays, load_arrays

_LOCK = threading.Lock()


def erase_rows(path: Path, user_ids: Iterable[str]) -> int:
    """Rewrite the snapshot without these users' ids and values; returns rows erased."""
    targets = set(user_ids)
    with _LOCK:
        arrays = load_arrays(path)
        ids = arrays["user_ids"]
        rows = [i for i, uid in enumerate(ids.tolist()) if i and str(uid) in targets]
        if not rows:
            return 0
        ids = ids.copy()
        features = arrays["user_features"].copy()
        for row in rows:
            ids[row] = ""
            features[row] = features[0]
        fresh: dict[str, Any] = {**arrays, "user_ids": ids, "user_features": features}
        fresh["digest"] = np.array(digest_arrays(fresh), dtype=np.str_)
        replace_private(path, lambda fh: np.savez(fh, allow_pickle=False, **fresh))
        return len(rows)


def erase_user(path: Path, store: FeatureStore, user_id: str) -> bool:
    """Blocking. True if the user had a row (on disk or in memory)."""
    in_memory = store.forget_user(user_id)
    on_disk = erase_rows(path, [user_id]) > 0
    return in_memory or on_disk


def reapply(path: Path, store: FeatureStore, erased: Callable[[str], bool]) -> int:
    """Erase every user of the snapshot that `erased` says was erased before (start-up)."""
    ids = [str(u) for u in load_arrays(path)["user_ids"].tolist()[1:] if u]
    gone = [u for u in ids if erased(u)]
    for user_id in gone:
        store.forget_user(user_id)
    return erase_rows(path, gone) if gone else 0
