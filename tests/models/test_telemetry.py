"""onnxruntime must not write telemetry or device ids under the home directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.settings import Settings
from models.demo import ASSETS_DIR, MODEL_ASSET

SCRIPT = """
import os, sys
import gateway  # sets ORT_DISABLE_TELEMETRY before anything imports onnxruntime
assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"
from models.ranker import Ranker
from models.features import FeatureStore
from pathlib import Path
ranker = Ranker.from_file(Path(sys.argv[1]), name="demo-ranker", version="1")
store = FeatureStore.load(Path(sys.argv[2]))
out = ranker.run_sync(store.inputs_for("u1", list(store.item_ids[:10])))
assert out["score"].shape == (10,)
ranker.close()
print("ran")
"""


def test_no_files_under_home_after_inference(tmp_path: Path, settings: Settings) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(
        HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config")
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(ASSETS_DIR / MODEL_ASSET),
            str(settings.resolve(settings.model.features_path)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ran" in result.stdout
    assert list(home.rglob("*")) == []
