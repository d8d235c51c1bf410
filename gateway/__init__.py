"""The gateway: app factory, settings, routes, pipeline, errors, CLI."""

import os

# onnxruntime reads this at import; the gateway package is imported before any model code.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
