"""The served-score watermark (models.watermark): the real demo model in a real Ranker with
the gateway's hook, surrogates fitted the way an extraction attacker fits them, the check
`gateway models watermark-check` runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from bench.watermark import Lab
from models.demo import MODEL_NAME
from models.watermark import (
    ServedMark,
    Standardiser,
    Watermark,
    WatermarkError,
    check,
    envelope,
    model_key,
    scores_vector,
    trigger_set,
)

pytest.importorskip("sklearn")

Suspect = Callable[[dict[str, NDArray[Any]]], NDArray[np.float64]]
QUERIES = 10_000  # the goal's extraction budget
NULL = 2000  # null keys (the CLI draws 10,000): p-values from the normal tail either way


@pytest.fixture(scope="module")
def lab() -> Lab:
    return Lab(strength=0.04)


@pytest.fixture(scope="module")
def marked_surrogate(lab: Lab) -> Suspect:
    """Gradient-boosted trees on 10,000 marked answers (the harder learner for an oblique
    mark than an MLP; bench/watermark.py measures both)."""
    return lab.fit("gbm", lab.served, queries=QUERIES, seed=3)


def test_the_mark_moves_scores_but_never_a_requests_ranking(lab: Lab) -> None:
    rng = np.random.default_rng(0)
    for user in rng.integers(1, 3001, size=20):
        items = rng.permutation(np.arange(1, 1501))[:100]
        feeds = lab.feeds(np.full(100, user), items)
        plain = lab.score(lab.plain, feeds, rounded=False)
        served = lab.score(lab.served, feeds, rounded=False)
        # One mark per request (one user), ramped near 0 and 1: a monotone map of the
        # scores, so the order of its items is the model's own, even among the lowest.
        mid = envelope(plain, 0.04) > 0.2
        mark = (served - plain)[mid] / envelope(plain, 0.04)[mid]
        np.testing.assert_allclose(mark, mark[0], atol=1e-4)
        assert list(np.argsort(-served, kind="stable")) == list(np.argsort(-plain, kind="stable"))
        assert abs(mark[0]) <= np.sqrt(2) * 0.04 + 1e-4
        assert ((served >= 0) & (served <= 1)).all()
    # ... and the shift differs between users: it is a function of the user's features.
    many = lab.feeds(np.arange(1, 501), np.full(500, 7))
    shifts = lab.score(lab.served, many, rounded=False) - lab.score(lab.plain, many, rounded=False)
    assert shifts.std() > 0.015


def test_the_mark_follows_the_bundle_and_the_key(lab: Lab) -> None:
    feeds = lab.feeds(np.arange(1, 201), np.arange(1, 201))
    plain = lab.score(lab.plain, feeds, rounded=False)
    off = Lab(strength=0.04, enabled=False)
    np.testing.assert_array_equal(off.score(off.served, feeds, rounded=False), plain)
    other = Lab(secret=b"another gateway's secret", strength=0.04)
    ours = lab.score(lab.served, feeds, rounded=False) - plain
    theirs = other.score(other.served, feeds, rounded=False) - plain
    assert abs(np.corrcoef(ours, theirs)[0, 1]) < 0.3  # independent keys, unrelated marks


def test_ndcg_cost_of_served_rankings_is_within_half_a_percent(lab: Lab) -> None:
    held = lab.heldout()
    plain = lab.ndcg_at_10(lab.score(lab.plain, held))
    served = lab.ndcg_at_10(lab.score(lab.served, held))
    assert abs(served / plain - 1) <= 0.005


def test_a_surrogate_fitted_on_marked_answers_is_detected(
    lab: Lab, marked_surrogate: Suspect
) -> None:
    found = lab.check(marked_surrogate, null_keys=NULL)
    assert found.p_value < 1e-4, found
    assert found.detected
    assert found.p_rank == 1 / (found.null_keys + 1)  # no null key comes near


def test_another_key_does_not_accuse_that_surrogate(lab: Lab, marked_surrogate: Suspect) -> None:
    other = model_key(b"another gateway's secret", MODEL_NAME)
    found = lab.check(marked_surrogate, key=other, null_keys=NULL)
    assert found.p_value > 0.01, found
    assert not found.detected


def test_a_clean_surrogate_and_the_unmarked_model_are_not_accused(lab: Lab) -> None:
    clean = lab.fit("gbm", lab.plain, queries=QUERIES, seed=3)
    found = lab.check(clean, null_keys=NULL)
    assert found.p_value > 0.01, found
    assert not found.detected
    itself = lab.check(lambda feeds: lab.score(lab.plain, feeds), null_keys=NULL)
    assert itself.p_value > 0.01
    assert not itself.detected


def test_trigger_set_is_keyed_and_skips_erased_users(lab: Lab) -> None:
    arrays = lab.tables.arrays()
    ours, again = trigger_set(lab.key, arrays), trigger_set(lab.key, arrays)
    assert ours.digest == again.digest
    assert len(ours) == 6000
    assert len(set(ours.user_ids)) == 2000
    other = trigger_set(model_key(b"x", MODEL_NAME), arrays)
    assert other.digest != ours.digest
    erased = dict(arrays)
    user_ids = np.array(arrays["user_ids"], copy=True)
    user_ids[1:] = ""  # every user erased but one
    user_ids[5] = "u5"
    erased["user_ids"] = user_ids
    only = trigger_set(lab.key, erased)
    assert set(only.user_ids) == {"u5"}
    user_ids[5] = ""
    with pytest.raises(WatermarkError, match="no users"):
        trigger_set(lab.key, erased)


def test_bad_scores_are_refused(lab: Lab) -> None:
    with pytest.raises(WatermarkError, match="5 scores for a trigger set of 6000"):
        scores_vector([0.1] * 5, 6000)
    with pytest.raises(WatermarkError, match="finite"):
        scores_vector([0.1, float("nan")], 2)
    with pytest.raises(WatermarkError, match="numbers"):
        scores_vector(["a", "b"], 2)
    with pytest.raises(WatermarkError, match="one number per"):
        scores_vector([[0.1, 0.2]], 1)
    with pytest.raises(WatermarkError, match="no feature statistics"):
        Standardiser.from_stats({}, ("user_features",))
    watermark = Watermark(lab.key, Standardiser.from_stats(lab.stats, ("user_features",)))
    feeds = lab.triggers()
    n = feeds["user_id"].shape[0]
    with pytest.raises(WatermarkError, match="alpha"):
        check(watermark, feeds, np.zeros(n), np.zeros(n), strength=0.04, alpha=0.0)
    with pytest.raises(WatermarkError, match="differ in length"):
        check(watermark, feeds, np.zeros(n), np.zeros(n - 1), strength=0.04)


def test_a_model_without_statistics_is_served_unmarked_and_says_so(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    settings = (True, 0.04, ("user_features",))
    feeds = lab.feeds(np.arange(1, 11), np.arange(1, 11))
    scores = lab.score(lab.plain, feeds, rounded=False).astype(np.float32)
    pending = ServedMark(lab.key, lambda: settings, lambda: None, label="demo-ranker 1")
    assert pending(feeds, scores) is scores  # not registered yet: asks again next time
    bare = ServedMark(lab.key, lambda: settings, lambda: {}, label="demo-ranker 1")
    with caplog.at_level("WARNING", logger="gateway.models"):
        assert bare(feeds, scores) is scores
        assert bare(feeds, scores) is scores
    warnings = [r for r in caplog.records if "without its watermark" in r.getMessage()]
    assert len(warnings) == 1  # once, not per request
    ready = ServedMark(lab.key, lambda: settings, lambda: lab.stats, label="demo-ranker 1")
    marked = ready(feeds, scores)
    assert marked.dtype == np.float32
    assert not np.array_equal(marked, scores)
