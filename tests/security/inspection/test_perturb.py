"""Keyed score perturbation: rankings kept exactly, answers repeatable, offsets keyed,
and finite differences turned to noise; the hook as stage 7 calls it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from gateway.datadir import InitReport
from gateway.pipeline import InferQuery, RankQuery
from gateway.settings import load_settings
from policies.bundle import load_bundle
from policies.data_policy import DataPolicy, ScorePerturbation
from policies.in_force import InForce
from security.inspection.perturb import ScorePerturber
from security.inspection.wiring import build_inspection

BUNDLE = Path(__file__).parents[3] / "policies" / "bundles" / "default"


def test_the_order_within_a_request_never_changes() -> None:
    perturber = ScorePerturber(b"s" * 32)
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(1, 200))
        scores = rng.random(n).astype(np.float32)
        if trial % 3 == 0:  # near ties and exact ties, as rounded or saturated scores make
            scores = np.round(scores, 2).astype(np.float32)
        keys = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        served = perturber.apply(scores, keys, 0.01)
        assert served.dtype == scores.dtype
        assert np.abs(served.astype(np.float64) - scores).max() <= 0.01 + 1e-6
        before = np.argsort(-scores, kind="stable")
        after = np.argsort(-served, kind="stable")
        # Same order; tied scores stay tied (so the client's order breaks them, as before).
        np.testing.assert_array_equal(before, after)
        np.testing.assert_array_equal(scores[before] == np.roll(scores[before], 1),
                                      served[after] == np.roll(served[after], 1))  # fmt: skip


def test_repeatable_keyed_and_moving() -> None:
    a, b = ScorePerturber(b"a" * 32), ScorePerturber(b"b" * 32)
    scores = np.array([0.5], dtype=np.float32)
    feeds = {"user_id": np.array([3]), "item_id": np.array([4]), "x": np.ones((1, 5), np.float32)}
    first = a.apply(scores, a.row_keys(feeds, 1), 0.01)
    assert a.apply(scores, a.row_keys(feeds, 1), 0.01) == first  # no averaging it away
    assert first != scores  # a lone row moves by up to max_offset
    assert b.apply(scores, b.row_keys(feeds, 1), 0.01) != first  # another key, another offset
    # Rank keys: one per (user, item), the same for the same pair whatever the request.
    keys = a.id_keys("u1", ["i1", "i2", "i1"])
    assert keys[0] == keys[2] != keys[1]
    assert a.id_keys("u2", ["i1"])[0] != keys[0]


def test_finite_differences_turn_to_noise() -> None:
    """A linear score, probed coordinate by coordinate with step h as ZOO does: with the
    offsets (0.004) the estimated gradient points nowhere near the true one."""
    perturber = ScorePerturber(b"k" * 32)
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, 40) / 40
    x0 = rng.normal(0, 1, 40)

    def served(x: Any, offset: float) -> float:
        score = np.array([0.5 + float(w @ x)], dtype=np.float64)
        feeds = {"x": np.asarray(x, dtype=np.float32)[None, :]}
        return float(perturber.apply(score, perturber.row_keys(feeds, 1), offset)[0])

    def estimate(h: float, offset: float) -> Any:
        base = served(x0, offset)
        return np.array([(served(x0 + h * e, offset) - base) / h for e in np.eye(40)])

    def cosine(g: Any) -> float:
        return float(g @ w / np.linalg.norm(g) / np.linalg.norm(w))

    assert cosine(estimate(1e-3, 0.0)) > 0.999
    assert cosine(estimate(1e-3, 0.004)) < 0.3


def test_the_hook_follows_the_bundle(report: InitReport, tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=report.data_dir,
        config_file=report.config,
        audit={"sqlite_path": str(tmp_path / "a.db")},
    )
    shipped: DataPolicy = load_bundle(BUNDLE).data
    assert shipped.detection.perturbation.enabled  # on by default: it costs no ranking
    off = shipped.model_copy(
        update={
            "detection": shipped.detection.model_copy(
                update={"perturbation": ScorePerturbation(enabled=False)}
            )
        }
    )
    rank = RankQuery(user_id="u1", item_ids=("i1", "i2", "i3"), top_k=3)
    feeds = {
        "user_id": np.array([1, 1, 1]),
        "item_id": np.array([1, 2, 3]),
        "user_features": np.zeros((3, 2), dtype=np.float32),
        "item_features": np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], dtype=np.float32),
    }
    raw = InferQuery(id=None, feeds=feeds)  # client_inputs None: every value the client's
    by_ids = InferQuery(id=None, feeds=feeds, client_inputs=frozenset({"user_id", "item_id"}))
    declared = InferQuery(
        id=None, feeds=feeds, client_inputs=frozenset({"user_id", "item_id", "item_features"})
    )
    scores = np.array([[0.3], [0.9], [0.31]], dtype=np.float32)
    for data, on in ((shipped, True), (off, False)):
        inspection = build_inspection(
            settings, InForce(data, "t"), CollectorRegistry(), lambda: 0.0, model_loaded=False
        )
        for query, chose_values in ((raw, True), (declared, True), (by_ids, False), (rank, False)):
            served = inspection.perturb(query, scores)
            assert served.shape == scores.shape
            assert (not np.array_equal(served, scores)) is (on and chose_values), query
            assert np.argsort(-served.reshape(-1)).tolist() == [1, 2, 0]
