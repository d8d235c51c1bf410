"""The watermark end to end: the real gateway serves marked scores when the bundle says so,
and `gateway models watermark-triggers|watermark-check` against a real data directory."""

from __future__ import annotations

import functools
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.cli.root import main
from gateway.derivation import Purpose
from models.demo import model_bytes
from models.demo_package import demo_stats
from models.features import FeatureStore
from models.ort import session_from_bytes
from models.watermark import Standardiser, Watermark, envelope, model_key
from tests.models.conftest import Box

ON = ("watermark: {enabled: false", "watermark: {enabled: true")


def features_path(box: Box) -> Path:
    settings = box.settings()
    return settings.resolve(settings.model.features_path)


def watermark_of(box: Box) -> Watermark:
    """The data directory's mark, rebuilt from its secret and the packaged statistics."""
    secret = box.settings().derived_keys[Purpose.MODEL_WATERMARK]
    stats = demo_stats(features_path(box))  # what `gateway init` packed
    return Watermark(
        model_key(secret, "demo-ranker"), Standardiser.from_stats(stats, ("user_features",))
    )


@functools.cache
def _session() -> Any:
    return session_from_bytes(model_bytes())


def plain_scores(feeds: dict[str, np.ndarray]) -> np.ndarray:
    (scores,) = _session().run(["score"], feeds)
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def test_the_gateway_serves_marked_scores_in_the_models_own_order(box: Box) -> None:
    from privacy.components import open_consent_store
    from privacy.consent_store import ConsentEntry

    box.edit_data_policy(*ON)
    store = FeatureStore.load(features_path(box))
    items = list(store.item_ids[:60])
    watermark = watermark_of(box)
    # A user whose mark is large enough to see at 3 decimals (it is 0 for some users, and
    # ramps to 0 for scores near 0).
    def visible(user: str) -> float:
        feeds = store.inputs_for(user, items)
        shift = 0.04 * envelope(plain_scores(feeds), 0.04) * watermark.signal(feeds)
        return float(np.median(np.abs(shift)))

    user = max((f"u{k}" for k in range(1, 60)), key=visible)
    consent = open_consent_store(box.settings())
    try:
        entry = ConsentEntry("personalization", True, "consent", "default", "test", 0, "test")
        consent.record(None, user, [entry])
    finally:
        consent.close()
    feeds = store.inputs_for(user, items)
    plain = plain_scores(feeds)
    shift = 0.04 * envelope(plain, 0.04) * watermark.signal(feeds)  # the bundle's strength
    assert np.median(abs(shift)) > 0.01
    with TestClient(create_app(box.settings())) as client:
        response = client.post(
            "/v1/rank", json={"user_id": user, "item_ids": items}, headers=box.headers("demo")
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["personalized"] is True
    order = np.argsort(-plain, kind="stable")
    assert [it["item_id"] for it in body["items"]] == [items[i] for i in order]
    got = np.array([it["score"] for it in body["items"]])
    # Rounded to 3 decimals, and the default bundle's keyed score perturbation (stage 7,
    # at most 0.004) on top: the mark (about 0.06 for this user) is what moved the scores.
    np.testing.assert_allclose(got, (plain + shift)[order], atol=0.004 + 0.0005 + 1e-9)
    assert np.median(np.abs(got - plain[order])) > 0.01


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_triggers_and_check_from_the_command_line(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ("--data-dir", str(box.data_dir))
    out = tmp_path / "triggers.json"
    code, stdout, _ = run(capsys, "models", "watermark-triggers", "--out", str(out), *data)
    assert code == 0
    assert "6000 trigger rows" in stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # store rows: private
    triggers = json.loads(out.read_text())
    assert triggers["rows"] == len(triggers["pairs"]) == 6000
    feeds = {
        name: np.asarray(value, dtype=np.float32 if "features" in name else np.int64)
        for name, value in triggers["inputs"].items()
    }
    plain = plain_scores(feeds)

    # A copy of what this gateway serves (marked, rounded): the mark is found.
    served = np.round(plain + 0.04 * envelope(plain, 0.04) * watermark_of(box).signal(feeds), 3)
    scores = tmp_path / "served.json"
    scores.write_text(
        json.dumps({"trigger_set": triggers["trigger_set"], "scores": served.tolist()})
    )
    code, stdout, _ = run(capsys, "models", "watermark-check", "--scores", str(scores), *data)
    assert code == 0, stdout
    assert "verdict: WATERMARK DETECTED" in stdout
    assert "p-value" in stdout

    # Our own unmarked model, one score per line: no accusation.
    lines = tmp_path / "plain.txt"
    lines.write_text("\n".join(f"{v:.6f}" for v in plain))
    code, stdout, _ = run(capsys, "models", "watermark-check", "--scores", str(lines), *data)
    assert code == 1, stdout
    assert "verdict: not detected" in stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("", "empty scores file"),
        ("[0.1, 0.2", "not JSON"),
        ('{"scores": 3}', "expected a list of scores"),
        ("[0.1, 0.2]", "2 scores for a trigger set of 6000 rows"),
        ("[" + ",".join(["0.1"] * 5999) + ", NaN]", "finite"),
        ('{"trigger_set": "ab12", "scores": []}', "not this gateway's"),
        ("0.1\nzero\n", "line 2 is not a number"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_bad_scores_files_give_one_line_and_exit_2(
    box: Box,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    message: str,
) -> None:
    path = tmp_path / "scores.json"
    if content is not None:
        path.write_text(content)
    code, _, stderr = run(
        capsys, "models", "watermark-check", "--scores", str(path), "--data-dir", str(box.data_dir)
    )
    assert code == 2
    assert message in stderr
    assert stderr.count("\n") == 1
    assert stderr.startswith("error: ")


def test_check_refuses_a_bad_alpha_and_a_missing_store(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "scores.json"
    path.write_text("[0.1]")
    data = ("--data-dir", str(box.data_dir))
    code, _, stderr = run(
        capsys, "models", "watermark-check", "--scores", str(path), "--alpha", "0", *data
    )
    assert code == 2
    assert "--alpha" in stderr
    features_path(box).unlink()
    code, _, stderr = run(capsys, "models", "watermark-triggers", "--out", str(path), *data)
    assert code == 2
    assert stderr.startswith("error: feature store")
