"""Ranker runtime, feature store and the demo recommender.

The environment default below comes first so that any later import of
onnxruntime from this package (only `models.ort` does it) sees it: onnxruntime
otherwise writes a device id under the home directory and may phone home.
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# The package's interface to the other concern packages (after the environment default).
from models.features import FeatureStore, digest_arrays, load_arrays

__all__ = ["FeatureStore", "digest_arrays", "load_arrays"]
