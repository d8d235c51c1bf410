"""The A/B simulator: users of the demo world clicking by the demo generator's own
ground truth, against arms that rank the same candidates differently.

The world is the generator's (models.demo.data.generate): the same seed replays the
same draws, in the same order, to recover what `generate` keeps to itself (user and
item tastes, biases, the popularity term and the affinity's standardisation); a test
checks that the replay reproduces every impression and click `generate` returns. A
simulated user is shown the top `shown` of `candidates` items drawn by popularity
(as the generator draws impressions) and clicks each with the generator's click
probability, sigmoid(-1.9 + 1.3 affinity + 0.35 popularity + biases + 0.3 noise).

Arms score the candidates: the trained demo model (onnxruntime, the feature store's
tables) or `popularity_model_bytes()`, a real ONNX model of the same signature that
ranks by popularity alone (log impressions), packaged as a second version for the
gateway's variants. A third, "misbehaving" arm serves like the first but with the
error rate and latency the guardrails are there to catch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper

from models.demo.data import DEFAULT_SEED, GENRE_COUNTS, DemoData, generate
from models.demo.features_build import FeatureTables, build_tables
from models.demo.onnx_graph import IR_VERSION, OPSET, OUTPUT_NAME
from models.experiments.guardrails import check
from models.experiments.report import build_report
from models.experiments.stats import Look, fixed_horizon_n, msprt_ratio
from models.experiments.store import ArmHealth, ArmKey, ArmStop
from models.ort import session_from_bytes
from policies import ExperimentPolicy, Variant

POPULARITY_COLUMN = "item.log1p_impressions"
NOISE_SD = 0.3
# Gauss-Hermite nodes: the expected click probability over the generator's logit noise.
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(24)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class World:
    """What the generator drew, as `generate` drew it (see the module doc)."""

    data: DemoData
    user_vec: NDArray[np.float64]
    item_vec: NDArray[np.float64]
    user_bias: NDArray[np.float64]
    item_bias: NDArray[np.float64]
    pop_z: NDArray[np.float64]
    log_pop: NDArray[np.float64]
    affinity_mean: float
    affinity_std: float
    replayed_clicks: NDArray[np.int8]  # every impression's click, in generation order
    replayed_items: NDArray[np.int64]
    replayed_users: NDArray[np.int64]

    def logit(self, users: NDArray[np.int64], items: NDArray[np.int64]) -> NDArray[np.float64]:
        """The generator's click logit without its per-impression noise."""
        dim = self.user_vec.shape[1]
        raw = np.einsum("...d,...d->...", self.user_vec[users], self.item_vec[items]) / np.sqrt(dim)
        affinity = (raw - self.affinity_mean) / self.affinity_std
        logit = (
            -1.9
            + 1.3 * affinity
            + 0.35 * self.pop_z[items]
            + self.item_bias[items]
            + self.user_bias[users]
        )
        return np.asarray(logit, dtype=np.float64)

    def click_probability(
        self, users: NDArray[np.int64], items: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """Expected over the generator's logit noise: the true CTR of showing `items`."""
        logit = self.logit(users, items)[..., None] + NOISE_SD * _NODES
        return np.asarray((_sigmoid(logit) * _WEIGHTS).sum(axis=-1), dtype=np.float64)


def replay_world(seed: int = DEFAULT_SEED) -> World:
    """`generate(seed)` again, draw for draw, keeping what it does not return."""
    data = generate(seed)
    n_users, n_items, dim, zipf_s = data.n_users, data.n_items, 8, 1.0
    rng = np.random.default_rng(seed)
    n_genres = len(GENRE_COUNTS)
    genre_log_w = np.log(np.array([c for _, c in GENRE_COUNTS], dtype=np.float64))
    u = rng.random(n_items)
    n_item_genres = np.where(u < 0.5, 1, np.where(u < 0.85, 2, 3)).astype(np.int64)
    _gumbel(rng, np.tile(genre_log_w, (n_items, 1)), n_item_genres)
    item_genres = data.item_genres
    rank = rng.permutation(n_items).astype(np.float64) + 1.0
    log_pop = np.log(1.0 / rank**zipf_s)
    pop_z = (log_pop - log_pop.mean()) / log_pop.std()
    genre_vec = rng.standard_normal((n_genres, dim))
    gcount = item_genres.sum(axis=1, keepdims=True).astype(np.float64)
    item_vec = (item_genres.astype(np.float64) @ genre_vec) / gcount
    item_vec = item_vec + 0.5 * rng.standard_normal((n_items, dim))
    n_fav = rng.integers(1, 4, size=n_users).astype(np.int64)
    fav_lists = _gumbel(rng, np.tile(genre_log_w, (n_users, 1)) * 0.5, n_fav)
    fav = np.zeros((n_users, n_genres), dtype=np.float64)
    for r, gs in enumerate(fav_lists):
        fav[r, gs] = 1.0 / len(gs)
    user_vec = (fav @ genre_vec) + 0.4 * rng.standard_normal((n_users, dim))
    user_bias = 0.3 * rng.standard_normal(n_users)
    item_bias = 0.3 * rng.standard_normal(n_items)
    n_imp = rng.integers(60, 101, size=n_users).astype(np.int64)
    shown = _gumbel(rng, np.tile(log_pop, (n_users, 1)), n_imp)
    users = np.repeat(np.arange(n_users, dtype=np.int64), n_imp)
    items = np.concatenate(shown)
    raw = np.einsum("nd,nd->n", user_vec[users], item_vec[items]) / np.sqrt(dim)
    mean, std = float(raw.mean()), float(raw.std())
    logit = (
        -1.9
        + 1.3 * (raw - mean) / std
        + 0.35 * pop_z[items]
        + item_bias[items]
        + user_bias[users]
        + NOISE_SD * rng.standard_normal(users.shape[0])
    )
    clicks = (rng.random(users.shape[0]) < _sigmoid(logit)).astype(np.int8)
    return World(
        data=data,
        user_vec=user_vec,
        item_vec=item_vec,
        user_bias=user_bias,
        item_bias=item_bias,
        pop_z=pop_z,
        log_pop=log_pop,
        affinity_mean=mean,
        affinity_std=std,
        replayed_clicks=clicks,
        replayed_items=items,
        replayed_users=users,
    )


def _gumbel(
    rng: np.random.Generator, log_weights: NDArray[np.float64], k: NDArray[np.int64]
) -> list[NDArray[np.int64]]:
    """The generator's weighted sampling without replacement (same draws, same order)."""
    rows, cols = log_weights.shape
    keys = log_weights - np.log(-np.log(rng.random((rows, cols))))
    order = np.argsort(-keys, axis=1, kind="stable")
    return [np.sort(order[r, : int(k[r])]).astype(np.int64) for r in range(rows)]


# -- arms ---------------------------------------------------------------------------------

Scorer = Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.float32]]


def popularity_model_bytes(tables: FeatureTables) -> bytes:
    """An ONNX ranker with the demo model's signature that scores by popularity alone."""
    column = list(tables.item_feature_names).index(POPULARITY_COLUMN)
    n_user, n_item = tables.user_features.shape[1], tables.item_features.shape[1]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["item_features", "column"], ["picked"], axis=1),
            helper.make_node("Reshape", ["picked", "flat"], [OUTPUT_NAME]),
        ],
        "popularity-ranker",
        [
            helper.make_tensor_value_info("user_id", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("item_id", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("user_features", TensorProto.FLOAT, ["N", n_user]),
            helper.make_tensor_value_info("item_features", TensorProto.FLOAT, ["N", n_item]),
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=[
            helper.make_tensor("column", TensorProto.INT64, [1], [column]),
            helper.make_tensor("flat", TensorProto.INT64, [1], [-1]),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="models.experiments.sim",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def onnx_scorer(blob: bytes, tables: FeatureTables) -> Scorer:
    """Scores (user, item) index pairs (0-based) with an ONNX ranker over the tables."""
    session = session_from_bytes(blob)

    def score(users: NDArray[np.int64], items: NDArray[np.int64]) -> NDArray[np.float32]:
        user_rows, item_rows = users.reshape(-1) + 1, items.reshape(-1) + 1
        (scores,) = session.run(
            [OUTPUT_NAME],
            {
                "user_id": user_rows.astype(np.int64),
                "item_id": item_rows.astype(np.int64),
                "user_features": tables.user_features[user_rows],
                "item_features": tables.item_features[item_rows],
            },
        )
        return np.asarray(scores, dtype=np.float32).reshape(items.shape)

    return score


# -- the experiment ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """Simulated requests, each ranked by every arm: per request and arm, the click
    probability of each item shown."""

    users: NDArray[np.int64]  # [R]
    shown_p: dict[str, NDArray[np.float64]]  # arm -> [R, shown]

    def true_ctr(self, arm: str) -> float:
        return float(self.shown_p[arm].mean())


def make_pool(
    world: World,
    scorers: dict[str, Scorer],
    *,
    requests: int,
    candidates: int = 20,
    shown: int = 5,
    seed: int = 1,
) -> Pool:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, world.data.n_users, size=requests).astype(np.int64)
    # Candidates drawn by popularity, as the generator draws what users are shown.
    keys = world.log_pop - np.log(-np.log(rng.random((requests, world.data.n_items))))
    cands = np.argsort(-keys, axis=1)[:, :candidates].astype(np.int64)
    grid_users = np.repeat(users[:, None], candidates, axis=1)
    probability = world.click_probability(grid_users, cands)
    shown_p = {}
    for arm, scorer in scorers.items():
        order = np.argsort(-scorer(grid_users, cands), axis=1, kind="stable")[:, :shown]
        shown_p[arm] = np.take_along_axis(probability, order, axis=1)
    return Pool(users=users, shown_p=shown_p)


@dataclass(frozen=True)
class Misbehaviour:
    """How an arm serves badly: its failure rate and latency (ms) distribution."""

    error_rate: float = 0.0
    latency_ms: Callable[[np.random.Generator, int], NDArray[np.float64]] = field(
        default=lambda rng, n: rng.lognormal(np.log(12.0), 0.35, n)
    )


@dataclass(frozen=True)
class Outcome:
    impressions: dict[str, int]
    clicks: dict[str, int]
    decided_at: int | None  # impressions per arm (the smaller) at the decision
    winner: str | None
    stopped_at: int | None  # requests served when a guardrail stopped the second arm
    health: dict[str, ArmHealth]
    looks: list[tuple[int, dict[str, tuple[int, int]]]]  # (requests, arm -> (impr, clicks))


def run_experiment(
    pool: Pool,
    arms: tuple[str, str],
    policy: ExperimentPolicy,
    *,
    requests: int,
    seed: int,
    look_every: int = 50,
    misbehaviour: dict[str, Misbehaviour] | None = None,
    stop_on_decision: bool = True,
) -> Outcome:
    """One A/B experiment: `requests` users split 50/50, clicks drawn from the truth.
    Stops at the sequential test's decision (when asked) or at the horizon; the second
    arm's users go to the control once a guardrail stops it (the bundle's `stop`)."""
    rng = np.random.default_rng(seed)
    control, treatment = arms
    behaviour = misbehaviour or {}
    picks = rng.integers(0, pool.users.shape[0], size=requests)
    assigned = rng.random(requests) < 0.5  # True: treatment
    shown = pool.shown_p[control].shape[1]
    impressions = dict.fromkeys(arms, 0)
    clicks = dict.fromkeys(arms, 0)
    health = {arm: ArmHealth() for arm in arms}
    p_value = 1.0
    looks: list[tuple[int, dict[str, tuple[int, int]]]] = []
    decided_at = winner = stopped_at = None
    for start in range(0, requests, look_every):
        for index in range(start, min(requests, start + look_every)):
            arm = treatment if assigned[index] and stopped_at is None else control
            fault = behaviour.get(arm, Misbehaviour())
            failed = bool(rng.random() < fault.error_rate)
            health[arm].observe(
                error=failed, flagged=False, latency_ms=float(fault.latency_ms(rng, 1)[0])
            )
            if failed:
                continue  # nothing shown, nothing to click
            p = pool.shown_p[arm][picks[index]]
            impressions[arm] += shown
            clicks[arm] += int((rng.random(shown) < p).sum())
        served = min(requests, start + look_every)
        looks.append((served, {a: (impressions[a], clicks[a]) for a in arms}))
        if (
            stopped_at is None
            and policy.guardrails.action == "stop"
            and any(c.breached for c in check(health[treatment], policy.guardrails))
        ):
            stopped_at = served
        if decided_at is None:
            look = Look(
                impressions[control], clicks[control], impressions[treatment], clicks[treatment]
            )
            # One look more of the same always-valid test (stats.sequential, incrementally).
            p_value = min(p_value, _look_p(look, policy))
            if p_value <= policy.alpha:
                decided_at = min(impressions[control], impressions[treatment])
                rates = {a: clicks[a] / max(1, impressions[a]) for a in arms}
                winner = max(arms, key=lambda a: rates[a])
                if stop_on_decision:
                    break
    return Outcome(impressions, clicks, decided_at, winner, stopped_at, health, looks)


def _look_p(look: Look, policy: ExperimentPolicy) -> float:
    """1/Lambda at one look (1 while the look is too early or undefined)."""
    if min(look.n_a, look.n_b) < policy.min_samples:
        return 1.0
    ratio = msprt_ratio(look.clicks_a, look.n_a, look.clicks_b, look.n_b, tau=policy.mixture_sd)
    return 1.0 if not ratio else min(1.0, 1.0 / ratio)


@dataclass(frozen=True)
class Summary:
    true_ctr: dict[str, float]
    power: float
    median_decision: float | None  # impressions per arm, over experiments that decided
    fixed_horizon: int | None  # impressions per arm a fixed test of the same power needs
    aa_false_positive_rate: float
    correct_direction: float  # among decisions, the share naming the truly better arm


def summarise(
    pool: Pool,
    arms: tuple[str, str],
    policy: ExperimentPolicy,
    *,
    experiments: int,
    requests: int,
    seed: int = 0,
    look_every: int = 50,
) -> Summary:
    """Many seeded experiments of `arms`, and as many A/A ones (the control against itself)."""
    truth = {arm: pool.true_ctr(arm) for arm in arms}
    better = max(arms, key=lambda a: truth[a])
    runs = [
        run_experiment(pool, arms, policy, requests=requests, seed=seed + i, look_every=look_every)
        for i in range(experiments)
    ]
    decided = [r for r in runs if r.decided_at is not None]
    power = len(decided) / experiments
    aa = [
        run_experiment(
            pool,
            (arms[0], arms[0]),
            policy,
            requests=requests,
            seed=10_000 + seed + i,
            look_every=look_every,
        )
        for i in range(experiments)
    ]
    fixed = None
    if 0 < power < 1 and truth[arms[0]] != truth[arms[1]]:
        fixed = fixed_horizon_n(truth[arms[0]], truth[arms[1]], alpha=policy.alpha, power=power)
    elif power >= 1 and truth[arms[0]] != truth[arms[1]]:
        fixed = fixed_horizon_n(truth[arms[0]], truth[arms[1]], alpha=policy.alpha, power=0.99)
    return Summary(
        true_ctr=truth,
        power=power,
        median_decision=float(np.median([r.decided_at for r in decided])) if decided else None,
        fixed_horizon=fixed,
        aa_false_positive_rate=sum(r.decided_at is not None for r in aa) / experiments,
        correct_direction=(
            sum(r.winner == better for r in decided) / len(decided) if decided else 0.0
        ),
    )


def demo_arms(world: World) -> tuple[FeatureTables, dict[str, Scorer]]:
    """The trained demo model and the popularity-only model, as scorers."""
    from models.demo import model_bytes

    tables = build_tables(world.data)
    return tables, {
        "model": onnx_scorer(model_bytes(), tables),
        "popularity": onnx_scorer(popularity_model_bytes(tables), tables),
    }


def outcome_report(
    outcome: Outcome,
    arms: tuple[str, str],
    policy: ExperimentPolicy,
    *,
    model: str = "demo-ranker",
    generated_ms: int = 0,
) -> dict[str, Any]:
    """The report the gateway would print for this simulated experiment (arm A: the
    control, B: the other), with the simulation's looks as the series."""
    keys = {arm: ArmKey(model, arm, label) for arm, label in zip(arms, ("A", "B"), strict=True)}

    def counts(at: dict[str, tuple[int, int]]) -> dict[ArmKey, dict[str, int]]:
        return {
            keys[arm]: {"impression": shown, "click": clicked, "conversion": 0}
            for arm, (shown, clicked) in at.items()
        }

    final = outcome.looks[-1][1]
    stops = [] if outcome.stopped_at is None else [ArmStop(keys[arms[1]], "guardrail", 0)]
    return build_report(
        model,
        variants=[Variant(version=arm, weight=0.5) for arm in arms],
        policy=policy,
        counts=counts(final),
        series=[(served, counts(at)) for served, at in outcome.looks],
        health={keys[arm]: outcome.health[arm] for arm in arms},
        stops=stops,
        generated_ms=generated_ms,
    )
