"""What the gateway serves for given model inputs, computed apart from it: the oracle of
every test that checks served scores.

onnxruntime on the demo model gives the model's scores; the watermark the data
directory's policy bundle sets (models.watermark, on in the default bundle) is applied as
the gateway applies it, keyed by the data directory's derived watermark key and the
served package's feature statistics. What is left between that and a served score is
the output policy's rounding to 3 decimals and, where the client chose feature values
(raw tensors), stage 7's keyed perturbation (`detection.perturbation.max_offset`, 0.004
in the default bundle): TOLERANCE, or UNPERTURBED for answers to ids alone (/v1/rank, OIP
by ids), nothing wider. A test that compared served scores with plain onnxruntime within
the mark's size (up to 0.057) would not see a wrong mark, nor a missing one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.derivation import Purpose
from gateway.settings import Settings
from models.demo import model_bytes
from models.ort import session_from_bytes
from models.watermark import Standardiser, Watermark, model_key
from policies.bundle import load_bundle

MODEL = "demo-ranker"
VERSION = "1"  # what `gateway init` packs and serves
PERTURBATION = 0.004  # the default bundle's detection.perturbation.max_offset
ROUNDING = 0.0005  # half the last of the 3 decimals the default output policy keeps
# float32 on the wire (and the mark computed in float64, then cast, as the ranker does).
TOLERANCE = PERTURBATION + ROUNDING + 1e-6
UNPERTURBED = ROUNDING + 1e-6


@functools.cache
def _session() -> Any:
    return session_from_bytes(model_bytes())


def onnx_scores(feeds: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
    """The demo model's own scores for `feeds`, one per row (unmarked, unrounded)."""
    (scores,) = _session().run(["score"], dict(feeds))
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def served_watermark(
    settings: Settings, model: str = MODEL, version: str = VERSION
) -> tuple[Watermark, float] | None:
    """The mark the data directory's bundle puts on `model` and its strength (None: off),
    rebuilt from what the gateway reads: the bundle, the derived key, the package."""
    policy = load_bundle(settings.resolve(settings.policy.bundle)).data.model(model)
    if policy is None or not policy.watermark.enabled:
        return None
    manifest = settings.resolve(settings.packages.directory) / model / version / "manifest.json"
    stats = json.loads(manifest.read_text())["feature_stats"]
    secret = settings.derived_keys[Purpose.MODEL_WATERMARK]
    watermark = Watermark(
        model_key(secret, model), Standardiser.from_stats(stats, policy.watermark.inputs)
    )
    return watermark, policy.watermark.strength


def served_scores(
    settings: Settings,
    feeds: Mapping[str, NDArray[Any]],
    *,
    model: str = MODEL,
    version: str = VERSION,
) -> NDArray[np.float64]:
    """What the gateway of `settings` serves for `feeds` (the model's inputs, rows in
    request order), before stage 7's perturbation and rounding: compare within TOLERANCE."""
    plain = onnx_scores(feeds)
    found = served_watermark(settings, model, version)
    if found is None:
        return plain
    watermark, strength = found
    # As the ranker does: the mark on the float32 output, cast back to float32.
    raw = plain.astype(np.float32)
    marked = watermark.mark(raw, watermark.signal(feeds), strength)
    return np.asarray(marked, dtype=np.float64).reshape(-1)


def assert_served(got: Any, expected: Any, *, perturbed: bool = True) -> None:
    """Served scores against `served_scores`: only the perturbation and rounding apart
    (`perturbed=False`: an answer to ids alone, which stage 7 does not perturb)."""
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64),
        expected,
        rtol=0,
        atol=TOLERANCE if perturbed else UNPERTURBED,
    )
