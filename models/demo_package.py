"""Package the committed demo model at `gateway init` (encrypted, signed, with statistics).

The demo model's feature statistics come from the installed feature store: one
row per user and per item, which is what the model sees at serving time.
A data directory from before packages existed holds the plaintext
`models/demo-ranker/1/model.onnx`; if it is exactly the committed model, init
replaces it by the package (nothing else is ever deleted).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import ConfigurationError
from models.demo import MODEL_NAME, MODEL_VERSION, load_card, model_bytes
from models.features import FeatureStore, load_arrays
from models.pack import Holdout, PackResult, pack_model
from models.package_errors import PackError
from models.package_format import MANIFEST
from models.stats import FeatureStats, feature_stats
from security import KeyProvider

_LEGACY_FILES = frozenset({"model.onnx", "model_card.json"})


def store_input_arrays(store_path: Path) -> dict[str, np.ndarray]:
    """The demo model's inputs over every row of the feature store (row 0: cold start)."""
    store = FeatureStore.load(store_path)  # verifies the store's digest
    users = np.arange(store.n_users + 1, dtype=np.int64)
    items = np.arange(store.n_items + 1, dtype=np.int64)
    arrays = load_arrays(store_path)
    return {
        "user_id": users,
        "item_id": items,
        "user_features": np.asarray(arrays["user_features"], dtype=np.float32),
        "item_features": np.asarray(arrays["item_features"], dtype=np.float32),
    }


def demo_stats(store_path: Path) -> FeatureStats:
    return feature_stats(store_input_arrays(store_path))


def demo_training_metadata(card: dict[str, Any] | None = None) -> dict[str, Any]:
    card = card or load_card()
    keep = (
        "name",
        "architecture",
        "description",
        "intended_use",
        "seed",
        "data",
        "training",
        "evaluation",
        "model_sha256",
    )
    return {k: card[k] for k in keep if k in card}


def demo_holdout() -> Holdout:
    """The demo model's held-out impressions (inputs, click labels), regenerated from the card."""
    from models.demo.data import generate
    from models.demo.evaluate import heldout_inputs
    from models.demo.features_build import build_tables

    card = load_card()
    data = generate(
        int(card["seed"]),
        n_users=int(card["data"]["n_users"]),
        n_items=int(card["data"]["n_items"]),
    )
    return heldout_inputs(data, build_tables(data)), np.asarray(data.test.click)


def _migrate_legacy(directory: Path) -> bool:
    """Remove a pre-package plaintext demo model if (and only if) it is the committed one."""
    present = {p.name for p in directory.iterdir()}
    if not present <= _LEGACY_FILES:
        return False
    plain = directory / "model.onnx"
    if (
        plain.is_file()
        and hashlib.sha256(plain.read_bytes()).hexdigest()
        != hashlib.sha256(model_bytes()).hexdigest()
    ):
        return False
    shutil.rmtree(directory)
    return True


def package_demo(
    data_dir: Path,
    *,
    keyring: KeyProvider,
    signing_key: Path,
    store_path: Path,
    clock: Callable[[], float] | None = None,
) -> PackResult | None:
    """Package the demo model under `data_dir/models/`; None if a package is already there."""
    root = data_dir / "models"
    directory = root / MODEL_NAME / MODEL_VERSION
    if directory.exists():
        if (directory / MANIFEST).is_file():
            return None
        if not _migrate_legacy(directory):
            raise ConfigurationError(
                f"{directory} exists but is not a model package; move it away and rerun "
                "`gateway init`, or package the model with `gateway models pack`"
            )
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    try:
        return pack_model(
            model_bytes(),
            name=MODEL_NAME,
            version=MODEL_VERSION,
            root=root,
            keyring=keyring,
            signing_key=signing_key,
            feature_stats=demo_stats(store_path),
            training=demo_training_metadata(),
            **extra,
        )
    except PackError as exc:
        raise ConfigurationError(f"cannot package the demo model: {exc}") from exc
