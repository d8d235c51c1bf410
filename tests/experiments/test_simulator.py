"""The simulator plays the demo generator's own world, and its experiments decide:
the better arm is found with the sequential test stopping early, A/A experiments stay
within alpha, and a misbehaving arm is stopped by its guardrail."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.demo.data import generate
from models.experiments.sim import (
    Misbehaviour,
    Pool,
    World,
    demo_arms,
    make_pool,
    popularity_model_bytes,
    replay_world,
    run_experiment,
    summarise,
)
from models.ort import session_from_bytes
from policies import ExperimentPolicy, Guardrails


@pytest.fixture(scope="module")
def world() -> World:
    return replay_world()


def test_the_replay_is_the_generators_world(world: World) -> None:
    """Oracle: `generate` itself. Every (user, item) impression it returns, with its
    click, is one the replay drew, and none is missing."""
    data = generate()
    n_items = data.n_items
    replayed = dict(
        zip(
            (world.replayed_users * n_items + world.replayed_items).tolist(),
            world.replayed_clicks.tolist(),
            strict=True,
        )
    )
    for split in (data.train, data.test):
        keys = (split.user * n_items + split.item).tolist()
        assert [replayed[k] for k in keys] == split.click.tolist()
    assert len(replayed) == len(data.train) + len(data.test)


def test_the_click_model_predicts_the_generated_clicks(world: World) -> None:
    p = world.click_probability(world.replayed_users, world.replayed_items)
    clicks = world.replayed_clicks.astype(np.float64)
    # Calibrated: expected and observed CTR agree, overall and per decile of p.
    assert abs(p.mean() - clicks.mean()) < 0.005
    deciles = np.quantile(p, np.linspace(0, 1, 11))
    for low, high in itertools.pairwise(deciles):
        inside = (p >= low) & (p < high)
        assert abs(p[inside].mean() - clicks[inside].mean()) < 0.02


def test_the_popularity_model_is_a_real_onnx_ranker_of_the_same_signature(world: World) -> None:
    tables, _ = demo_arms(world)
    session = session_from_bytes(popularity_model_bytes(tables))
    rows = np.arange(1, 11, dtype=np.int64)
    (scores,) = session.run(
        ["score"],
        {
            "user_id": rows,
            "item_id": rows,
            "user_features": tables.user_features[rows],
            "item_features": tables.item_features[rows],
        },
    )
    column = list(tables.item_feature_names).index("item.log1p_impressions")
    np.testing.assert_array_equal(scores, tables.item_features[rows, column])


@pytest.fixture(scope="module")
def pool(world: World) -> Pool:
    _, scorers = demo_arms(world)
    return make_pool(world, scorers, requests=6000, seed=3)


def test_the_experiment_finds_the_better_arm_early(pool: Pool) -> None:
    assert pool.true_ctr("model") > pool.true_ctr("popularity") + 0.03
    policy = ExperimentPolicy()
    summary = summarise(pool, ("popularity", "model"), policy, experiments=40, requests=3000)
    assert summary.power >= 0.95
    assert summary.correct_direction == 1.0
    # Early: far fewer impressions than the horizon offered (3000 requests x 5 / 2 arms).
    assert summary.median_decision is not None
    assert summary.median_decision < 7500 / 4
    assert summary.aa_false_positive_rate <= policy.alpha


def test_a_guardrail_stops_a_misbehaving_arm(pool: Pool) -> None:
    policy = ExperimentPolicy(
        guardrails=Guardrails(max_error_rate=0.02, max_p99_ms=200, min_requests=100, action="stop")
    )
    broken = Misbehaviour(error_rate=0.08)
    outcome = run_experiment(
        pool,
        ("model", "popularity"),
        policy,
        requests=2000,
        seed=5,
        misbehaviour={"popularity": broken},
        stop_on_decision=False,
    )
    assert outcome.stopped_at is not None
    # Once stopped, the arm serves nobody: its count freezes from the next look on.
    served = outcome.health["popularity"].served
    assert served < 2000 / 2
    assert outcome.health["model"].served == 2000 - served
    # With alert only, the same arm keeps serving.
    alert = ExperimentPolicy(guardrails=policy.guardrails.model_copy(update={"action": "alert"}))
    kept = run_experiment(
        pool,
        ("model", "popularity"),
        alert,
        requests=2000,
        seed=5,
        misbehaviour={"popularity": broken},
        stop_on_decision=False,
    )
    assert kept.stopped_at is None
    assert kept.health["popularity"].served > 900
    # A slow arm (p99 over the limit) is caught too.
    slow = Misbehaviour(latency_ms=lambda rng, n: rng.lognormal(np.log(150.0), 0.5, n))
    late = run_experiment(
        pool,
        ("model", "popularity"),
        policy,
        requests=2000,
        seed=6,
        misbehaviour={"popularity": slow},
        stop_on_decision=False,
    )
    assert late.stopped_at is not None
