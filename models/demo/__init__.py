"""The demo recommender: synthetic data, feature store and a committed ONNX ranker.

`install_demo` is what `gateway init` uses: it regenerates the feature store
from the model card's seed (numpy only, a second or so) and refuses to continue
if the regenerated store is not the one the model was trained against. It never
needs torch. The model itself is not copied: `gateway init` packages it
(encrypted, signed; models/demo_package.py), because the gateway serves only
packages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.errors import ConfigurationError
from gateway.files import replace_private

MODEL_NAME = "demo-ranker"
MODEL_VERSION = "1"
MODEL_ASSET = "demo-ranker.onnx"
CARD_NAME = "model_card.json"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

__all__ = [
    "ASSETS_DIR",
    "CARD_NAME",
    "MODEL_ASSET",
    "MODEL_NAME",
    "MODEL_VERSION",
    "DemoInstall",
    "install_demo",
    "load_card",
    "model_bytes",
]


def _asset(name: str) -> bytes:
    return resources.files(__name__).joinpath("assets", name).read_bytes()


def model_bytes() -> bytes:
    """The committed, trained ONNX model."""
    return _asset(MODEL_ASSET)


def load_card() -> dict[str, Any]:
    card: dict[str, Any] = json.loads(_asset(CARD_NAME))
    return card


@dataclass(frozen=True)
class DemoInstall:
    feature_store: Path
    model_card: Path
    feature_digest: str
    model_sha256: str
    created: bool  # False when everything was already in place


def _write_atomic(path: Path, data: bytes) -> None:
    replace_private(path, data)


def _store_digest(path: Path) -> str | None:
    """Digest recomputed from the arrays of an existing store (not its stored field)."""
    from models.features import digest_arrays, load_arrays

    try:
        return digest_arrays(load_arrays(path))
    except (OSError, ValueError, KeyError):
        return None


def install_demo(data_dir: Path, *, card: Mapping[str, Any] | None = None) -> DemoInstall:
    """Install the demo feature store and model under `data_dir`; idempotent.

    `card` defaults to the committed model card; passing another is how a test
    (or a retrained model under review) checks the digest guard.
    """
    from models.demo.data import generate
    from models.demo.features_build import build_tables, write_feature_store

    if card is None:
        card = load_card()
    blob = model_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    if sha != card["model_sha256"]:
        raise ConfigurationError(
            f"committed {MODEL_ASSET} does not match its model card (sha256 {sha[:12]}…)"
        )
    expected = str(card["features"]["store_digest"])

    store = data_dir / "demo" / "features.npz"
    card_path = data_dir / "demo" / CARD_NAME
    card_bytes = (json.dumps(card, indent=2, sort_keys=True) + "\n").encode()
    created = False

    if not store.is_file() or _store_digest(store) != expected:
        data = generate(
            int(card["seed"]),
            n_users=int(card["data"]["n_users"]),
            n_items=int(card["data"]["n_items"]),
        )
        tables = build_tables(data)
        digest = tables.digest()
        if digest != expected:
            raise ConfigurationError(
                f"regenerated demo feature store digest {digest[:12]}… does not match the model "
                f"card's {expected[:12]}…; retrain with `python -m models.demo.train`"
            )
        write_feature_store(store, tables)
        created = True
    if not card_path.is_file() or card_path.read_bytes() != card_bytes:
        _write_atomic(card_path, card_bytes)
        created = True
    return DemoInstall(
        feature_store=store,
        model_card=card_path,
        feature_digest=expected,
        model_sha256=sha,
        created=created,
    )
