"""Drift gauges (models.drift) on the demo world's own data, and through the real app."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import Settings
from models.demo_package import store_input_arrays
from models.drift import BINS, DriftBoard, _Window, psi
from models.stats import feature_stats

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def arrays(settings: Settings) -> dict[str, np.ndarray]:
    return store_input_arrays(settings.resolve(settings.model.features_path))


def gauges(board: DriftBoard) -> dict[tuple[str, ...], float]:
    found: dict[tuple[str, ...], float] = {}
    for family in board.collect():
        for sample in family.samples:
            found[(sample.name, *sample.labels.values())] = sample.value
    return found


def test_psi_matches_its_definition() -> None:
    counts = np.array([[30, 10, 10, 10, 10, 10, 10, 10, 0, 0]], dtype=np.int64)
    expected = np.full(BINS, 1 / BINS)
    smoothed = (counts[0] + 0.5) / (counts[0] + 0.5).sum()
    by_hand = sum((p - q) * np.log(p / q) for p, q in zip(smoothed, expected, strict=True))
    assert psi(counts, expected)[0] == pytest.approx(by_hand)
    assert psi(np.full((1, BINS), 1000), expected)[0] == pytest.approx(0.0, abs=1e-12)


def test_item_features_from_the_catalogue_do_not_drift_and_shifted_ones_do(
    arrays: dict[str, np.ndarray],
) -> None:
    now = [1_000.0]
    stats = feature_stats({"item_features": arrays["item_features"]})
    board = DriftBoard(lambda _n, _v: stats, min_rows=200, clock=lambda: now[0])
    rng = np.random.default_rng(7)
    items = arrays["item_features"]
    watch = board.watcher("m", "1")
    # Each request's inputs are sampled (models.drift.SAMPLED_ROWS): 120 requests of 100
    # rows put some 1,800 rows in the window.
    for _ in range(120):
        rows = items[rng.integers(0, len(items), 100)]
        watch({"item_features": rows}, rng.normal(size=100))
    calm = gauges(board)
    values = [v for k, v in calm.items() if k[0] == "gateway_feature_drift_psi"]
    assert len(values) == items.shape[1]
    assert max(values) < 0.05
    # The same population, one column moved by one standard deviation: a large shift there.
    now[0] += 10_000  # past the window: the calm rows age out
    # The most continuous column (a flag shifted by its std is just another flag).
    moved_column = int(np.argmax([len(np.unique(items[:, c])) for c in range(items.shape[1])]))
    shifted = items.copy()
    shifted[:, moved_column] += items[:, moved_column].std()
    for _ in range(120):
        watch({"item_features": shifted[rng.integers(0, len(items), 100)]}, rng.normal(size=100))
    moved = gauges(board)
    column = {int(k[4]): v for k, v in moved.items() if k[0] == "gateway_feature_drift_psi"}
    assert column[moved_column] > 0.25
    assert max(v for c, v in column.items() if c != moved_column) < 0.05


def test_scores_drift_against_the_versions_own_first_scores() -> None:
    now = [0.0]
    board = DriftBoard(lambda _n, _v: None, baseline_rows=2_000, min_rows=200, clock=lambda: now[0])
    rng = np.random.default_rng(3)
    watch = board.watcher("m", "2")
    for _ in range(30):
        watch({}, rng.normal(0.0, 1.0, 100))
    assert gauges(board)[("gateway_score_drift_psi", "m", "2")] < 0.05
    now[0] += 10_000
    for _ in range(10):
        watch({}, rng.normal(1.0, 1.0, 100))  # a degraded model: scores moved up
    assert gauges(board)[("gateway_score_drift_psi", "m", "2")] > 0.25


def test_rows_binned_a_window_late_never_wipe_newer_counts() -> None:
    window = _Window(1, window_s=900.0, slots=15)
    window.add(2_000.0, np.ones((1, BINS), dtype=np.int64))
    # 900 s older: the same slot, a slice that has left the window.
    window.add(1_100.0, np.full((1, BINS), 5, dtype=np.int64))
    assert window.total(2_000.0).tolist() == [[1] * BINS]


def test_pending_rows_count_in_the_slot_of_their_own_time() -> None:
    now = [0.0]
    board = DriftBoard(lambda _n, _v: None, baseline_rows=100, min_rows=200, clock=lambda: now[0])
    watch = board.watcher("m", "1")
    rng = np.random.default_rng(5)
    watch({}, rng.normal(0.0, 1.0, 100))  # the baseline
    for _ in range(3):  # binned only when read: still pending here
        watch({}, rng.normal(0.0, 1.0, 100))
    now[0] += 10_000  # a window later, these rows have aged out: nothing to report
    assert gauges(board) == {}


def test_a_short_window_reports_nothing() -> None:
    board = DriftBoard(lambda _n, _v: None, baseline_rows=10, min_rows=200, clock=lambda: 0.0)
    board.watcher("m", "1")({}, np.zeros(50))
    assert gauges(board) == {}


def test_the_served_app_exports_drift_per_model_version(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    arrays: dict[str, np.ndarray],
) -> None:
    store = client.app.state.components.serving.features  # type: ignore[attr-defined]
    rng = np.random.default_rng(11)
    for n in range(16):  # 15 sampled input rows each: past the window's 200-row minimum
        items = [store.item_ids[i] for i in rng.choice(len(store.item_ids), 100, replace=False)]
        response = client.post(
            "/v1/rank", json={"user_id": f"u{n + 1}", "item_ids": items}, headers={**auth(), **JSON}
        )
        assert response.status_code == 200, response.text
    text = client.get("/metrics", headers=auth(("admin",))).text
    samples = {
        (s.name, s.labels.get("input"), s.labels.get("column")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "gateway_feature_drift_psi" and s.labels["model"] == "demo-ranker"
    }
    item_columns = [v for (_, name, _), v in samples.items() if name == "item_features"]
    assert len(item_columns) == arrays["item_features"].shape[1]
    assert all(np.isfinite(item_columns))
