"""bench/watermark: what the served-score watermark costs and whether a surrogate inherits it.

    python -m bench.watermark [--queries 10000] [--strength S] [--surrogates mlp,gbm]
                              [--seed N] [--secret TEXT] [--inputs A,B]

The demo ranker (committed ONNX model, its feature store regenerated from the model
card's seed) runs in a real `Ranker` with the gateway's own `marks` hook (strength and
inputs from the default bundle unless `--strength` says otherwise); served scores are
rounded as the bundle's output policy rounds them. An extraction attacker draws
`--queries` uniform catalogue (user, item) pairs, takes the served scores and fits a
regressor (scikit-learn MLP, gradient-boosted trees) on the standardised features of the
pair, as bench/adversarial's attacker does. `watermark-check`'s test then runs on the
surrogate's scores for the keyed trigger set.

One table: NDCG@10 of the held-out impressions ranked per user (served rankings), with
and without the mark, and its relative change (goal: within 0.5 %); the global AUC and
the mean |score change| (what the mark costs calibration); the check's p-value for a
surrogate fitted on marked answers (goal: < 1e-4), for one fitted on unmarked answers,
for the marked surrogate under another key and for the unmarked model itself (goal for
those: > 0.01, no false accusation).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.demo import MODEL_NAME, load_card, model_bytes
from models.demo.data import DemoData, generate
from models.demo.evaluate import auc
from models.demo.features_build import FeatureTables, build_tables
from models.ranker import Ranker
from models.stats import feature_stats
from models.watermark import (
    NULL_KEYS,
    CheckResult,
    Standardiser,
    Watermark,
    check,
    model_key,
    served_mark,
    trigger_set,
)
from policies.bundle import load_bundle
from policies.in_force import InForce

BENCH_SECRET = b"bench-watermark-secret-0123456789abcdef"
DEFAULT_BUNDLE = "policies/bundles/default"

Feeds = dict[str, NDArray[Any]]


@dataclass
class Lab:
    """The demo model, its data and the gateway's mark, for the bench and the tests."""

    secret: bytes = BENCH_SECRET
    strength: float | None = None  # None: the default bundle's
    inputs: tuple[str, ...] | None = None  # None: the default bundle's
    enabled: bool | None = True  # None: the default bundle's
    decimals: int = 3  # the default bundle's output rounding

    @cached_property
    def data(self) -> DemoData:
        card = load_card()
        return generate(
            int(card["seed"]),
            n_users=int(card["data"]["n_users"]),
            n_items=int(card["data"]["n_items"]),
        )

    @cached_property
    def tables(self) -> FeatureTables:
        return build_tables(self.data)

    @cached_property
    def stats(self) -> dict[str, dict[str, list[float]]]:
        """As `gateway init` packs them (models.demo_package.demo_stats): every store row."""
        t = self.tables
        return feature_stats(
            {
                "user_id": np.arange(t.user_features.shape[0], dtype=np.int64),
                "item_id": np.arange(t.item_features.shape[0], dtype=np.int64),
                "user_features": t.user_features,
                "item_features": t.item_features,
            }
        )

    @cached_property
    def policy(self) -> InForce:
        bundle = load_bundle(_repo_path(DEFAULT_BUNDLE))
        data = bundle.data
        update: dict[str, object] = {}
        if self.strength is not None:
            update["strength"] = self.strength
        if self.enabled is not None:
            update["enabled"] = self.enabled
        if self.inputs is not None:
            update["inputs"] = self.inputs
        if update:
            model = data.models[MODEL_NAME]
            mark = model.watermark.model_copy(update=update)
            models = {**data.models, MODEL_NAME: model.model_copy(update={"watermark": mark})}
            data = data.model_copy(update={"models": models})
        return InForce(data, bundle.content_hash)

    @property
    def key(self) -> bytes:
        return model_key(self.secret, MODEL_NAME)

    @cached_property
    def served(self) -> Ranker:
        """The ranker as the gateway builds it: with the watermark hook."""
        hook = served_mark(self.secret, MODEL_NAME, "1", self.policy, lambda: self.stats)
        return Ranker(name=MODEL_NAME, version="1", model_bytes=model_bytes(), marks=hook)

    @cached_property
    def plain(self) -> Ranker:
        return Ranker(name=MODEL_NAME, version="1", model_bytes=model_bytes())

    @cached_property
    def watermark(self) -> Watermark:
        inputs = self.policy.data.models[MODEL_NAME].watermark.inputs
        return Watermark(self.key, Standardiser.from_stats(self.stats, inputs))

    @cached_property
    def z_all(self) -> Standardiser:
        """The attacker's view: every feature input, standardised."""
        return Standardiser.from_stats(self.stats, ("user_features", "item_features"))

    def feeds(self, users: NDArray[np.int64], items: NDArray[np.int64]) -> Feeds:
        """Model inputs for table rows (store row = 0-based index + 1)."""
        return {
            "user_id": users.astype(np.int64),
            "item_id": items.astype(np.int64),
            "user_features": self.tables.user_features[users],
            "item_features": self.tables.item_features[items],
        }

    def score(self, ranker: Ranker, feeds: Feeds, *, rounded: bool = True) -> NDArray[np.float64]:
        (out,) = ranker.run_sync(feeds).values()
        scores = np.asarray(out, np.float64).ravel()
        return np.round(scores, self.decimals) if rounded else scores

    def catalogue(self, rng: np.random.Generator, n: int) -> Feeds:
        """What an extraction attacker sends: uniform (user, item) pairs of the catalogue."""
        users = rng.integers(1, self.tables.user_features.shape[0], n)
        items = rng.integers(1, self.tables.item_features.shape[0], n)
        return self.feeds(users, items)

    def triggers(self, key: bytes | None = None) -> Feeds:
        return trigger_set(key or self.key, self.tables.arrays()).feeds

    def fit(
        self, kind: str, ranker: Ranker, *, queries: int, seed: int
    ) -> Callable[[Feeds], NDArray[np.float64]]:
        """A surrogate fitted on `queries` answers of `ranker`; returns its score function."""
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.neural_network import MLPRegressor
        from threadpoolctl import threadpool_limits

        x = self.catalogue(np.random.default_rng(seed), queries)
        y = self.score(ranker, x)
        model: Any
        if kind == "mlp":
            model = MLPRegressor(
                hidden_layer_sizes=(64, 32), max_iter=300, early_stopping=True, random_state=seed
            )
        elif kind == "gbm":
            model = HistGradientBoostingRegressor(max_iter=200, random_state=seed)
        else:
            raise ValueError(f"unknown surrogate {kind!r}")
        # One thread: OpenMP's spinning threads on a busy machine make the trees' fit 50x
        # slower, not faster.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")  # sklearn convergence chatter
            model.fit(self.z_all(x), y)

        def predict(feeds: Feeds) -> NDArray[np.float64]:
            return np.asarray(model.predict(self.z_all(feeds)), np.float64)

        return predict

    def check(
        self,
        suspect: Callable[[Feeds], NDArray[np.float64]],
        *,
        key: bytes | None = None,
        null_keys: int = NULL_KEYS,
    ) -> CheckResult:
        """The check as `gateway models watermark-check` runs it, on this key's triggers."""
        used = key or self.key
        mark = self.policy.data.models[MODEL_NAME].watermark
        watermark = Watermark(used, Standardiser.from_stats(self.stats, mark.inputs))
        feeds = self.triggers(used)
        reference = self.score(self.plain, feeds, rounded=False)
        return check(
            watermark,
            feeds,
            suspect(feeds),
            reference,
            strength=mark.strength,
            null_keys=null_keys,
        )

    # -- utility -----------------------------------------------------------------------

    def heldout(self) -> Feeds:
        return self.feeds(self.data.test.user + 1, self.data.test.item + 1)

    def ndcg_at_10(self, scores: NDArray[np.float64]) -> float:
        """Mean NDCG@10 over users with a click among their held-out impressions, each
        user's impressions ranked by score (ties: in impression order)."""
        users = self.data.test.user
        clicks = self.data.test.click.astype(np.float64)
        order = np.lexsort((-scores, users))
        users, clicks = users[order], clicks[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], users.shape[0]]
        discount = 1.0 / np.log2(np.arange(2, 12))
        total, count = 0.0, 0
        for s, e in zip(starts, ends, strict=True):
            gains = clicks[s:e]
            if not gains.any():
                continue
            top = gains[:10]
            ideal = np.sort(gains)[::-1][:10]
            total += float(top @ discount[: top.size]) / float(ideal @ discount[: ideal.size])
            count += 1
        return total / count


def _repo_path(relative: str) -> Any:
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / relative


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--strength", type=float, default=None)
    parser.add_argument("--surrogates", default="mlp,gbm")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--secret", default=None, help="the gateway secret to key the mark by")
    parser.add_argument("--inputs", default=None, help="the mark's inputs, comma-separated")
    args = parser.parse_args(argv)

    secret = args.secret.encode() if args.secret else BENCH_SECRET
    inputs = tuple(args.inputs.split(",")) if args.inputs else None
    lab = Lab(secret=secret, strength=args.strength, inputs=inputs)
    mark = lab.policy.data.models[MODEL_NAME].watermark
    held = lab.heldout()
    plain, served = lab.score(lab.plain, held), lab.score(lab.served, held)
    ndcg_plain, ndcg_served = lab.ndcg_at_10(plain), lab.ndcg_at_10(served)
    labels = lab.data.test.click
    other_key = model_key(b"another gateway's secret, same model", MODEL_NAME)

    rows: list[tuple[str, str]] = [
        ("mark", f"strength {mark.strength}, inputs {','.join(mark.inputs)}"),
        ("NDCG@10 unmarked / marked", f"{ndcg_plain:.5f} / {ndcg_served:.5f}"),
        ("NDCG@10 relative change", f"{(ndcg_served / ndcg_plain - 1) * 100:+.3f} %"),
        ("global AUC unmarked / marked", f"{auc(labels, plain):.5f} / {auc(labels, served):.5f}"),
        ("mean |score change|", f"{np.abs(served - plain).mean():.4f}"),
    ]

    def result(name: str, found: CheckResult, seconds: float) -> None:
        verdict = "DETECTED" if found.detected else "not detected"
        rows.append(
            (
                name,
                f"p {found.p_value:.2e} (rank p {found.p_rank:.1e}, z {found.z:.2f}), "
                f"{verdict}, {seconds:.0f} s",
            )
        )

    started = time.perf_counter()
    result("unmarked model itself", lab.check(lambda f: lab.score(lab.plain, f)), 0.0)
    for kind in [k for k in args.surrogates.split(",") if k]:
        for label, ranker in (("marked", lab.served), ("unmarked", lab.plain)):
            started = time.perf_counter()
            suspect = lab.fit(kind, ranker, queries=args.queries, seed=args.seed)
            found = lab.check(suspect)
            result(
                f"{kind} surrogate, {args.queries} {label} answers",
                found,
                time.perf_counter() - started,
            )
            if label == "marked":
                result(f"{kind} surrogate, marked, checked with another key",
                       lab.check(suspect, key=other_key), 0.0)
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
