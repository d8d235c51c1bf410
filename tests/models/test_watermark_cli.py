"""The watermark end to end: the real gateway serves marked scores (the default bundle turns
the mark on), and `gateway models watermark-triggers|watermark-check` against a real data
directory finds it in a copy of what the gateway served."""

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
from policies.bundle import load_bundle
from policies.install import default_bundle_dir
from tests.models.conftest import Box
from tests.served_scores import assert_served, served_scores

OFF = ("watermark: {enabled: true", "watermark: {enabled: false")
OIP_TYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


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

    # The data directory `gateway init` made, its bundle unedited: the mark is on.
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
    # Rounded to 3 decimals (ids alone: stage 7 does not perturb them): the mark (about
    # 0.06 for this user) is what moved the scores.
    np.testing.assert_allclose(got, (plain + shift)[order], rtol=0, atol=0.0005 + 1e-6)
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


def trigger_feeds(triggers: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(value, dtype=np.float32 if "features" in name else np.int64)
        for name, value in triggers["inputs"].items()
    }


def serve(box: Box, feeds: dict[str, np.ndarray], chunk: int = 250) -> np.ndarray:
    """What the real gateway of `box` answers for `feeds` over OIP REST (raw tensors, the
    trusted scope an operator uses to score its trigger set), in row order."""
    headers = {
        "Authorization": f"Bearer {box.token('demo', ('infer', 'infer:raw'))}",
        "Content-Type": "application/json",
    }
    rows = len(next(iter(feeds.values())))
    served: list[float] = []
    with TestClient(create_app(box.settings())) as client:
        for start in range(0, rows, chunk):
            inputs = [
                {
                    "name": name,
                    "datatype": OIP_TYPES[value.dtype],
                    "shape": [len(part), *value.shape[1:]],
                    "data": part.reshape(-1).tolist(),
                }
                for name, value in feeds.items()
                for part in (value[start : start + chunk],)
            ]
            response = client.post(
                "/v2/models/demo-ranker/infer", json={"inputs": inputs}, headers=headers
            )
            assert response.status_code == 200, response.text
            (out,) = response.json()["outputs"]
            served.extend(out["data"])
    return np.asarray(served, dtype=np.float64)


def check_served(
    capsys: pytest.CaptureFixture[str], box: Box, tmp_path: Path, digest: str, served: np.ndarray
) -> tuple[int, str]:
    path = tmp_path / "served.json"
    path.write_text(json.dumps({"trigger_set": digest, "scores": served.tolist()}))
    code, stdout, _ = run(
        capsys, "models", "watermark-check", "--scores", str(path), "--data-dir", str(box.data_dir)
    )
    return code, stdout


def test_the_mark_is_on_by_default_and_found_in_what_the_gateway_served(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The shipped bundle turns the mark on; `gateway init` installed it unedited.
    shipped = load_bundle(default_bundle_dir()).data.model("demo-ranker")
    assert shipped is not None
    assert shipped.watermark.enabled
    installed = load_bundle(box.data_dir / "policy").data.model("demo-ranker")
    assert installed is not None
    assert installed.watermark == shipped.watermark
    out = tmp_path / "triggers.json"
    code, _, _ = run(
        capsys, "models", "watermark-triggers", "--out", str(out), "--data-dir", str(box.data_dir)
    )
    assert code == 0
    triggers = json.loads(out.read_text())
    feeds = trigger_feeds(triggers)
    served = serve(box, feeds)
    plain = plain_scores(feeds)
    # Exactly the marked scores (up to stage 7's perturbation and rounding), and the mark
    # is what moved them: far more than perturbation and rounding could.
    assert_served(served, served_scores(box.settings(), feeds))
    assert np.median(np.abs(served - plain)) > 0.01
    # A copy of what the gateway served for its trigger set: the mark is found.
    code, stdout = check_served(capsys, box, tmp_path, triggers["trigger_set"], served)
    assert code == 0, stdout
    assert "verdict: WATERMARK DETECTED" in stdout


def test_with_the_mark_turned_off_the_gateway_serves_the_models_scores_unaccused(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box.edit_data_policy(*OFF)
    out = tmp_path / "triggers.json"
    code, _, _ = run(
        capsys, "models", "watermark-triggers", "--out", str(out), "--data-dir", str(box.data_dir)
    )
    assert code == 0
    triggers = json.loads(out.read_text())
    feeds = trigger_feeds(triggers)
    served = serve(box, feeds, chunk=500)
    # The oracle follows the bundle: off, it is onnxruntime's own scores.
    np.testing.assert_array_equal(served_scores(box.settings(), feeds), plain_scores(feeds))
    assert_served(served, plain_scores(feeds))
    code, stdout = check_served(capsys, box, tmp_path, triggers["trigger_set"], served)
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
