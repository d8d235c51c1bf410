"""What keyed score perturbation (security/inspection/perturb.py) costs and buys.

    python -m bench.perturbation [--targets 10] [--budget 10000] [--offsets 0,0.004,0.01]

One table. Utility: NDCG@10 of served rankings over the demo data's held-out
impressions (each user's held-out items ranked as one request, clicks as gains),
with and without the perturbation, and the mean and largest score change. Attack:
score-based NES (antithetic Gaussian sampling, projected steps, served scores
rounded to 3 decimals as the default bundle serves them, one row per query so the
offset is at its largest) against catalogue pairs near the label threshold (the
median score; logit 0.5-1.5 from it), success = the real model's label flips within RMS 0.5 z; the
attacker's best sampling radius of those tried is reported. The committed demo
model and data only; no gateway, no network.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.demo import model_bytes
from models.demo.data import generate
from models.demo.evaluate import heldout_inputs
from models.demo.features_build import build_tables
from models.ort import session_from_bytes
from security.inspection.perturb import ScorePerturber

SECRET = b"bench-perturbation-secret-0123456789abcdef"
EPS_RMS = 0.5  # the success criterion: label flip within RMS 0.5 z
DIM = 40


@dataclass
class Model:
    session: Any
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    low: NDArray[np.float64]
    high: NDArray[np.float64]

    def scores(self, x: NDArray[np.float64], users: Any, items: Any) -> NDArray[np.float64]:
        x32 = np.atleast_2d(x).astype(np.float32)
        n = len(x32)
        feeds = {
            "user_id": np.broadcast_to(np.asarray(users, dtype=np.int64), (n,)).copy(),
            "item_id": np.broadcast_to(np.asarray(items, dtype=np.int64), (n,)).copy(),
            "user_features": x32[:, :20],
            "item_features": x32[:, 20:],
        }
        out = self.session.run(None, feeds)[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)


def ndcg_at_10(order_scores: NDArray[np.float64], gains: NDArray[np.float64]) -> float:
    order = np.argsort(-order_scores, kind="stable")[:10]
    discounts = 1.0 / np.log2(np.arange(2, len(order) + 2))
    dcg = float((gains[order] * discounts).sum())
    ideal = np.sort(gains)[::-1][:10]
    idcg = float((ideal * discounts[: len(ideal)]).sum())
    return dcg / idcg if idcg > 0 else float("nan")


def utility(
    model: Model, data: Any, tables: Any, perturber: ScorePerturber, offset: float
) -> tuple[float, float, float, float]:
    """(NDCG@10 unperturbed, perturbed, mean |change|, max |change|) over users' requests."""
    inputs = heldout_inputs(data, tables)
    x = np.concatenate([inputs["user_features"], inputs["item_features"]], axis=1)
    scores = model.scores(x, inputs["user_id"], inputs["item_id"]).astype(np.float32)
    clicks = data.test.click.astype(np.float64)
    users = inputs["user_id"]
    plain, moved, changes = [], [], []
    for user in np.unique(users):
        rows = np.flatnonzero(users == user)
        if len(rows) < 2 or clicks[rows].sum() == 0:
            continue
        keys = perturber.id_keys(f"u{user}", [f"i{i}" for i in inputs["item_id"][rows]])
        served = perturber.apply(scores[rows], keys, offset)
        plain.append(ndcg_at_10(scores[rows].astype(np.float64), clicks[rows]))
        moved.append(ndcg_at_10(served.astype(np.float64), clicks[rows]))
        changes.append(np.abs(served.astype(np.float64) - scores[rows]))
    delta = np.concatenate(changes)
    return float(np.mean(plain)), float(np.mean(moved)), float(delta.mean()), float(delta.max())


def nes(
    served: Callable[[NDArray[np.float64]], float],
    truth: Callable[[NDArray[np.float64]], float],
    x0: NDArray[np.float64],
    model: Model,
    threshold: float,
    *,
    sigma: float,
    samples: int,
    budget: int,
    rng: np.random.Generator,
) -> int | None:
    """Queries until the true label flips (None: not within the budget)."""
    z0 = (x0 - model.mean) / model.std
    start = truth(x0) > threshold
    sign = -1.0 if start else 1.0  # push the score across the threshold
    radius = EPS_RMS * math.sqrt(DIM)
    z = z0.copy()
    queries = 0
    lr = 0.1 * radius
    while queries + 2 * samples <= budget:
        u = rng.standard_normal((samples, DIM))
        grad = np.zeros(DIM)
        for v in u:
            up = served(model.mean + (z + sigma * v) * model.std)
            down = served(model.mean + (z - sigma * v) * model.std)
            grad += (up - down) * v
        queries += 2 * samples
        norm = np.linalg.norm(grad)
        if norm > 0:
            z = z + sign * lr * grad / norm
        step = z - z0
        if np.linalg.norm(step) > radius:
            z = z0 + step * radius / np.linalg.norm(step)
        x = np.clip(model.mean + z * model.std, model.low, model.high)
        z = (x - model.mean) / model.std
        if (truth(x) > threshold) != start:
            return queries
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--offsets", default="0,0.002,0.004,0.01")
    parser.add_argument("--sigmas", default="0.02,0.1,0.3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = generate()
    tables = build_tables(data)
    users, items = tables.user_features.astype(np.float64), tables.item_features.astype(np.float64)
    both = np.concatenate
    model = Model(
        session=session_from_bytes(model_bytes()),
        mean=both([users.mean(0), items.mean(0)]),
        std=np.maximum(both([users.std(0), items.std(0)]), 1e-6),
        low=both([users.min(0), items.min(0)]),
        high=both([users.max(0), items.max(0)]),
    )
    perturber = ScorePerturber(SECRET)
    rng = np.random.default_rng(args.seed)
    pairs = np.stack([rng.integers(1, len(users), 4000), rng.integers(1, len(items), 4000)], 1)
    catalogue = both([users[pairs[:, 0]], items[pairs[:, 1]]], axis=1)
    true_scores = model.scores(catalogue, pairs[:, 0], pairs[:, 1])
    threshold = float(np.median(true_scores))
    logit = np.log(true_scores / (1 - true_scores)) - math.log(threshold / (1 - threshold))
    # Targets a little way from the threshold (logit 0.5 to 1.5): reachable within the
    # budget, but only by following the gradient for several steps.
    band = np.flatnonzero((np.abs(logit) > 0.5) & (np.abs(logit) < 1.5))
    near = rng.choice(band, size=min(args.targets, len(band)), replace=False)
    offsets = [float(v) for v in args.offsets.split(",")]
    sigmas = [float(v) for v in args.sigmas.split(",")]
    rows: list[dict[str, Any]] = []
    for offset in offsets:
        before, after, mean_change, max_change = utility(model, data, tables, perturber, offset)
        by_sigma: dict[float, tuple[float, int]] = {}
        for sigma in sigmas:
            results: list[int | None] = []
            for t in near:
                user, item = int(pairs[t, 0]), int(pairs[t, 1])

                def truth(x: NDArray[np.float64], user: int = user, item: int = item) -> float:
                    return float(model.scores(x, user, item)[0])

                def served(
                    x: NDArray[np.float64], user: int = user, item: int = item, off: float = offset
                ) -> float:
                    x32 = np.clip(x, model.low, model.high).astype(np.float32)
                    feeds = {
                        "user_id": np.array([user], dtype=np.int64),
                        "item_id": np.array([item], dtype=np.int64),
                        "user_features": x32[None, :20],
                        "item_features": x32[None, 20:],
                    }
                    score = model.scores(x32.astype(np.float64), user, item).astype(np.float32)
                    moved = perturber.apply(score, perturber.row_keys(feeds, 1), off)
                    return float(np.round(moved[0], 3))

                results.append(
                    nes(
                        served, truth, catalogue[t], model, threshold,
                        sigma=sigma, samples=10, budget=args.budget,
                        rng=np.random.default_rng(args.seed + int(t)),
                    )
                )  # fmt: skip
            done = sorted(r for r in results if r is not None)
            by_sigma[sigma] = (len(done) / len(results), int(np.median(done)) if done else -1)
        rows.append(
            {
                "max_offset": offset,
                "ndcg10": after,
                "ndcg10_unperturbed": before,
                "mean_change": mean_change,
                "max_change": max_change,
                "nes": by_sigma,
            }
        )
    print(
        f"keyed score perturbation: {args.targets} NES targets (logit 0.5-1.5 from the threshold), "
        f"budget {args.budget} single-row queries, served scores rounded to 3 decimals"
    )
    head = "".join(f" {'NES s=' + format(sg, 'g'):>14}" for sg in sigmas)
    print(f"{'max_offset':>10} {'NDCG@10':>8} {'unpert.':>8} {'mean|d|':>8} {'max|d|':>8}{head}")
    for r in rows:
        cells = "".join(
            f" {f'{ok:.0%} {q if q >= 0 else chr(8212)}q':>14}" for ok, q in r["nes"].values()
        )
        print(
            f"{r['max_offset']:>10g} {r['ndcg10']:>8.4f} {r['ndcg10_unperturbed']:>8.4f} "
            f"{r['mean_change']:>8.5f} {r['max_change']:>8.5f}{cells}"
        )
    print("NES cells: success rate, median queries to the flip (s: sampling radius in z)")
    print(f"({time.perf_counter() - started:.0f} s)")
    return {"rows": rows}


if __name__ == "__main__":
    main()
