"""bench/adversarial: ART attacks and benign replay through the gateway's HTTP API.

    python -m bench.adversarial [--runs 10] [--benign 1500] [--extraction-queries 2000]
                                [--hsj-iter 10] [--hsj-eval 200] [--zoo-iter 20] [--eps 0.5]

Gateways (real uvicorn processes, one data directory, three signed bundles):
- `flag`: detection action flag (verdicts answered in X-Inspection-Verdict, dev
  mode only), full-precision scores, generous rate limits: attacks run undisturbed,
  so this gives "success without defence", "flagged" and "queries to first flag";
- `block`: detection action block, same otherwise: "success with blocking on";
- `rounded(1)`, `rank_only` and `top_k=1`: the flag gateway's bundle with output
  hardening (OIP answers: scores rounded to 1 decimal; each row's rank within the
  request; only the best row named), for the extraction runs.
The attacker is a black box: ART `BlackBoxClassifier` whose predict calls OIP v2
infer with a bearer token. The model outputs one CTR score p; the classifier
exposes two classes around the median benign score t, [1-q, q] with
q = sigmoid(logit p - logit t) (above/below the median: "ranked high or not").
Inputs are [user_id, item_id, 20 user features, 20 item features]; HopSkipJump
runs with a mask that keeps the ids fixed. Success: the gateway's label flips with
a perturbation of at most `--eps` (RMS over the 40 features, in training standard
deviations). Each run uses its own client id (its own detector state).
Prints one table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from bench.servers import (
    BUDGET_EDIT,
    RATE_LIMIT_EDIT,
    edit_bundle,
    free_port,
    gateway_command,
    gateway_env,
    running,
)
from gateway.datadir import init_data_dir
from gateway.settings import ClientConfig, load_settings
from models import demo
from models.features import load_arrays
from models.ort import session_from_bytes
from security.issuer import EmbeddedIssuer, load_signing_key

with warnings.catch_warnings():
    # ART warns at import that PyTorch is absent; nothing here needs it.
    warnings.simplefilter("ignore")
    from art.attacks.evasion import FastGradientMethod, HopSkipJump, ZooAttack
    from art.estimators.classification import BlackBoxClassifier, SklearnClassifier

N_FEATURES = 40
DIM = 2 + N_FEATURES  # ids, then features
PERMISSIVE = RATE_LIMIT_EDIT
BUDGET = BUDGET_EDIT


class RefusedError(Exception):
    """The gateway refused a query (403 block or 429 throttle): the attack stops."""


@dataclass
class Space:
    """The input space as the bench knows it (the attacker gets only bounds and the API)."""

    users: NDArray[np.float32]
    items: NDArray[np.float32]
    lo: NDArray[np.float32]  # per input column, ids included
    hi: NDArray[np.float32]
    mean: NDArray[np.float32]  # per feature column
    std: NDArray[np.float32]
    session: Any  # onnxruntime, for ground truth and the threshold only
    threshold: float = 0.5

    @classmethod
    def load(cls, data_dir: Path) -> Space:
        arrays = load_arrays(data_dir / "demo" / "features.npz")
        users = arrays["user_features"].astype(np.float32)
        items = arrays["item_features"].astype(np.float32)
        feats = np.concatenate([users[1:].min(0), items[1:].min(0)])
        feats_hi = np.concatenate([users[1:].max(0), items[1:].max(0)])
        lo = np.concatenate([[0.0, 1.0], feats]).astype(np.float32)
        hi = np.concatenate([[users.shape[0] - 1, items.shape[0] - 1], feats_hi]).astype(np.float32)
        mean = np.concatenate([users.mean(0), items.mean(0)]).astype(np.float32)
        std = np.maximum(np.concatenate([users.std(0), items.std(0)]), 1e-3).astype(np.float32)
        # Ground truth from the committed model: the data dir holds only the encrypted package.
        space = cls(users, items, lo, hi, mean, std, session_from_bytes(demo.model_bytes()))
        return space

    def x(self, user: int, item: int) -> NDArray[np.float32]:
        return np.concatenate([[user, item], self.users[user], self.items[item]]).astype(np.float32)

    def feeds(self, x: NDArray[np.float32]) -> dict[str, NDArray[Any]]:
        x = np.atleast_2d(x)
        return {
            "user_id": np.rint(x[:, 0]).astype(np.int64),
            "item_id": np.rint(x[:, 1]).astype(np.int64),
            "user_features": x[:, 2:22].astype(np.float32),
            "item_features": x[:, 22:42].astype(np.float32),
        }

    def true_scores(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        (scores,) = self.session.run(["score"], self.feeds(x))
        return np.asarray(scores, dtype=np.float64).reshape(-1)

    def label(self, scores: NDArray[np.float64]) -> NDArray[np.int64]:
        return (scores > self.threshold).astype(np.int64)

    def distance(self, a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
        """RMS distance over the features, in training standard deviations."""
        d = (np.atleast_2d(a)[:, 2:] - np.atleast_2d(b)[:, 2:]) / self.std
        return float(np.sqrt((d * d).mean()))


def probabilities(scores: NDArray[np.float64], threshold: float) -> NDArray[np.float32]:
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p)) - math.log(threshold / (1 - threshold))
    q = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([1 - q, q], axis=1).astype(np.float32)


@dataclass
class Oracle:
    """The attacker's view: OIP v2 infer over HTTP with a bearer token."""

    url: str
    token: str
    space: Space
    http: httpx.Client
    queries: int = 0
    first_flag: int | None = None
    refused: bool = False
    sent: list[NDArray[np.float32]] | None = None  # every query, when recording

    def scores(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        x = np.atleast_2d(np.clip(x, self.space.lo, self.space.hi))
        out = []
        for start in range(0, len(x), 1000):
            out.append(self._call(x[start : start + 1000]))
        return np.concatenate(out)

    def _call(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        if self.refused:
            raise RefusedError
        if self.sent is not None:
            self.sent.append(x.copy())
        feeds = self.space.feeds(x)
        n = len(x)
        body = {
            "inputs": [
                {
                    "name": "user_id",
                    "datatype": "INT64",
                    "shape": [n],
                    "data": feeds["user_id"].tolist(),
                },
                {
                    "name": "item_id",
                    "datatype": "INT64",
                    "shape": [n],
                    "data": feeds["item_id"].tolist(),
                },
                {
                    "name": "user_features",
                    "datatype": "FP32",
                    "shape": [n, 20],
                    "data": feeds["user_features"].reshape(-1).tolist(),
                },
                {
                    "name": "item_features",
                    "datatype": "FP32",
                    "shape": [n, 20],
                    "data": feeds["item_features"].reshape(-1).tolist(),
                },
            ]
        }
        response = self.http.post(
            self.url, json=body, headers={"Authorization": f"Bearer {self.token}"}
        )
        self.queries += n
        if response.status_code in (403, 429):
            self.refused = True
            if self.first_flag is None:
                self.first_flag = self.queries
            raise RefusedError
        response.raise_for_status()
        if (
            response.headers.get("x-inspection-verdict", "allow") != "allow"
            and self.first_flag is None
        ):
            self.first_flag = self.queries
        return np.asarray(response.json()["outputs"][0]["data"], dtype=np.float64)

    def predict(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return probabilities(self.scores(x), self.space.threshold)

    def classifier(self, ids: tuple[int, int] | None = None) -> BlackBoxClassifier:
        """ART sees inputs scaled to [0, 1] per column (ZOO takes scalar clip values only).

        With `ids`, the classifier's input is the 40 features only and the ids are
        fixed (ZOO has no mask); without, all 42 columns (HopSkipJump, with a mask)."""
        space = self.space
        lo, span = space.lo, np.maximum(space.hi - space.lo, 1e-6)

        def predict(u: NDArray[np.float32]) -> NDArray[np.float32]:
            u = np.atleast_2d(u)
            if ids is not None:
                fixed = np.tile(np.asarray(ids, dtype=np.float32), (len(u), 1))
                u = np.concatenate([(fixed - lo[:2]) / span[:2], u], axis=1)
            return self.predict((lo + u * span).astype(np.float32))

        dim = N_FEATURES if ids is not None else DIM
        return BlackBoxClassifier(predict, (dim,), 2, clip_values=(0.0, 1.0))

    def to_unit(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        span = np.maximum(self.space.hi - self.space.lo, 1e-6)
        return ((x - self.space.lo) / span).astype(np.float32)

    def from_unit(self, u: NDArray[np.float32]) -> NDArray[np.float32]:
        span = np.maximum(self.space.hi - self.space.lo, 1e-6)
        return (self.space.lo + u * span).astype(np.float32)


@dataclass
class AttackRow:
    name: str
    runs: int = 0
    success_open: int = 0  # against the flag gateway (served)
    flagged: int = 0
    first_flags: list[int] = field(default_factory=list)
    success_blocked: int = 0
    queries: list[int] = field(default_factory=list)
    sent: list[NDArray[np.float32]] = field(default_factory=list, repr=False)


def _success(
    space: Space, x0: NDArray[np.float32], adv: NDArray[np.float32] | None, eps: float
) -> bool:
    if adv is None:
        return False
    flipped = space.label(space.true_scores(adv))[0] != space.label(space.true_scores(x0))[0]
    return bool(flipped and space.distance(adv, x0) <= eps)


def run_attack(
    make: Callable[[BlackBoxClassifier], Any],
    oracle: Oracle,
    x0: NDArray[np.float32],
    *,
    masked: bool,
) -> NDArray[np.float32] | None:
    """HopSkipJump-style (masked: all columns, ids masked) or ZOO-style (features only)."""
    u0 = oracle.to_unit(x0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if masked:
                mask = np.ones(DIM, dtype=np.float32)
                mask[:2] = 0.0  # ids stay fixed
                attack = make(oracle.classifier())
                u_adv = np.asarray(attack.generate(u0[None, :], mask=mask), dtype=np.float32)
            else:
                ids = (int(x0[0]), int(x0[1]))
                attack = make(oracle.classifier(ids))
                feats = np.asarray(attack.generate(u0[None, 2:]), dtype=np.float32)
                u_adv = np.concatenate([u0[None, :2], feats], axis=1)
    except RefusedError:
        return None
    return oracle.from_unit(u_adv)


def pick_targets(space: Space, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """Benign pairs near the decision boundary (the interesting ones to flip)."""
    users = rng.integers(1, space.users.shape[0], size=4000)
    items = rng.integers(1, space.items.shape[0], size=4000)
    x = np.stack([space.x(u, i) for u, i in zip(users, items, strict=True)])
    scores = space.true_scores(x)
    margin = np.abs(
        np.log(scores / (1 - scores)) - math.log(space.threshold / (1 - space.threshold))
    )
    order = np.argsort(margin)[: n * 4]
    chosen = rng.choice(order, size=n, replace=False)
    return [(int(users[i]), int(items[i])) for i in chosen]


@dataclass
class Gateways:
    urls: dict[str, str]
    issuer: EmbeddedIssuer
    counter: int = 0

    def oracle(self, name: str, space: Space, http: httpx.Client, **kw: Any) -> Oracle:
        self.counter += 1
        # Tokens are minted here with the issuer's key: no secret is ever checked.
        client = ClientConfig(
            client_id=f"bench-{self.counter}",
            secret_hash="unused",  # noqa: S106
            scopes=("infer",),
        )
        token = self.issuer.mint(client, ("infer",))["access_token"]
        return Oracle(self.urls[name] + "/v2/models/demo-ranker/infer", token, space, http, **kw)


def attacks(
    args: argparse.Namespace, space: Space, gw: Gateways, http: httpx.Client
) -> list[AttackRow]:
    rng = np.random.default_rng(args.seed)
    targets = pick_targets(space, rng, args.runs)
    hsj = AttackRow("HopSkipJump (mask: ids fixed)")
    zoo = AttackRow("ZOO")

    def make_hsj(c: BlackBoxClassifier) -> HopSkipJump:
        return HopSkipJump(
            c,
            targeted=False,
            max_iter=args.hsj_iter,
            max_eval=args.hsj_eval,
            init_eval=min(20, args.hsj_eval),
            init_size=100,
            batch_size=64,
            verbose=False,
        )

    def make_zoo(c: BlackBoxClassifier) -> ZooAttack:
        return ZooAttack(
            c,
            targeted=False,
            max_iter=args.zoo_iter,
            learning_rate=0.1,
            binary_search_steps=1,
            initial_const=10.0,
            use_resize=False,
            use_importance=False,
            nb_parallel=N_FEATURES,
            variable_h=1e-3,
            abort_early=True,
            verbose=False,
        )

    chosen = [
        (row, make, masked, name)
        for row, make, masked, name in (
            (hsj, make_hsj, True, "hsj"),
            (zoo, make_zoo, False, "zoo"),
        )
        if name in args.only
    ]
    for row, make, masked, _ in chosen:
        for user, item in targets:
            x0 = space.x(user, item)
            open_oracle = gw.oracle("flag", space, http, sent=[])
            adv = run_attack(make, open_oracle, x0, masked=masked)
            assert open_oracle.sent is not None
            row.sent.extend(open_oracle.sent)
            row.runs += 1
            row.queries.append(open_oracle.queries)
            row.success_open += _success(space, x0, adv, args.eps)
            if open_oracle.first_flag is not None:
                row.flagged += 1
                row.first_flags.append(open_oracle.first_flag)
            blocked_oracle = gw.oracle("block", space, http)
            adv_b = run_attack(make, blocked_oracle, x0, masked=masked)
            row.success_blocked += _success(space, x0, adv_b, args.eps)
    return [row for row, *_ in chosen]


def sample_space(space: Space, rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    """An extraction attacker's queries: uniform over the published bounds, random ids."""
    x = rng.uniform(space.lo, space.hi, size=(n, DIM)).astype(np.float32)
    x[:, :2] = np.rint(x[:, :2])
    return x


def catalogue_pairs(space: Space, rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    """Real (user, item) pairs with the store's features: on the data manifold."""
    users = rng.integers(1, space.users.shape[0], size=n)
    items = rng.integers(1, space.items.shape[0], size=n)
    return np.stack([space.x(int(u), int(i)) for u, i in zip(users, items, strict=True)])


def extraction(
    args: argparse.Namespace,
    space: Space,
    gw: Gateways,
    http: httpx.Client,
    gateway: str,
    strategy: str,
) -> tuple[float, AttackRow, Any]:
    """Query, train a surrogate on the answers, and measure its agreement with the model
    on held-out benign pairs (same above/below-median decision)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(args.seed + 1)
    oracle = gw.oracle(gateway, space, http)
    n, batch = args.extraction_queries, args.extraction_batch
    sample = sample_space if strategy == "synthetic" else catalogue_pairs
    x = sample(space, rng, n)
    answers = np.concatenate([oracle.scores(x[i : i + batch]) for i in range(0, n, batch)])
    z = (x[:, 2:] - space.mean) / space.std
    test = catalogue_pairs(space, np.random.default_rng(args.seed + 99), 2000)
    z_test = (test[:, 2:] - space.mean) / space.std
    truth = space.label(space.true_scores(test))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn convergence chatter
        if gateway == "top1":
            # Only the best row of each batch is named (rank 1; the others answer 0).
            labels = (answers == 1).astype(np.int64)
        elif gateway == "rank_only":
            # Ranks within each batch: the best the attacker can do is "top half of the batch".
            labels = np.concatenate(
                [answers[i : i + batch] <= min(batch, n - i) / 2 for i in range(0, n, batch)]
            ).astype(np.int64)
        else:
            # Above the median of the answers (with full scores on catalogue pairs, that is
            # the benign median; rounded answers blur it).
            labels = (answers > np.median(answers)).astype(np.int64)
        if len(set(labels.tolist())) > 1:
            model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0)
            guess = model.fit(z, labels).predict(z_test)
        else:
            guess = np.full_like(truth, labels[0])
        linear = LogisticRegression(max_iter=1000).fit(z, labels) if len(set(labels)) > 1 else None
    agreement = float((guess == truth).mean())
    row = AttackRow(f"extraction, {strategy} queries", runs=1, queries=[oracle.queries])
    if oracle.first_flag is not None:
        row.flagged, row.first_flags = 1, [oracle.first_flag]
    return agreement, row, linear


def fgsm_transfer(
    args: argparse.Namespace, space: Space, gw: Gateways, http: httpx.Client, surrogate: Any
) -> AttackRow:
    """FGSM on a logistic surrogate (extracted from the open gateway), sent once each."""
    rng = np.random.default_rng(args.seed + 2)
    row = AttackRow("FGSM transferred (1 query each)")
    if surrogate is None:
        return row
    estimator = SklearnClassifier(surrogate)
    targets = pick_targets(space, rng, args.runs)
    x0 = np.stack([space.x(u, i) for u, i in targets])
    z0 = ((x0[:, 2:] - space.mean) / space.std).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fgsm = FastGradientMethod(estimator, eps=args.eps, norm=np.inf)
        z_adv = fgsm.generate(z0)
    adv = x0.copy()
    adv[:, 2:] = z_adv * space.std + space.mean
    adv = np.clip(adv, space.lo, space.hi)
    open_oracle = gw.oracle("flag", space, http)
    blocked_oracle = gw.oracle("block", space, http)
    for i in range(len(adv)):
        before = open_oracle.first_flag
        open_oracle.first_flag = None
        served = open_oracle.scores(adv[i : i + 1])
        row.runs += 1
        flipped = space.label(served)[0] != space.label(space.true_scores(x0[i : i + 1]))[0]
        row.success_open += bool(flipped and space.distance(adv[i], x0[i]) <= args.eps)
        if open_oracle.first_flag is not None:
            row.flagged += 1
        open_oracle.first_flag = before
        try:
            blocked = blocked_oracle.scores(adv[i : i + 1])
            flipped_b = space.label(blocked)[0] != space.label(space.true_scores(x0[i : i + 1]))[0]
            row.success_blocked += bool(flipped_b and space.distance(adv[i], x0[i]) <= args.eps)
        except RefusedError:
            blocked_oracle.refused = False  # one refusal per example; the next is a new try
    row.queries = [1] * row.runs
    return row


def fgsm_points(space: Space, surrogate: Any, x0: NDArray[np.float32], eps: float) -> Any:
    z0 = ((x0[:, 2:] - space.mean) / space.std).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z_adv = FastGradientMethod(SklearnClassifier(surrogate), eps=eps, norm=np.inf).generate(z0)
    adv = x0.copy()
    adv[:, 2:] = z_adv * space.std + space.mean
    return np.clip(adv, space.lo, space.hi)


def learned_detector(
    args: argparse.Namespace, space: Space, surrogate: Any, rows: list[AttackRow]
) -> dict[str, float]:
    """Issue item 6: an ART BinaryInputDetector (a small sklearn MLP) trained on clean
    catalogue rows vs FGSM rows, judged per query at a <= 1 % false-flag threshold."""
    from art.defences.detector.evasion import BinaryInputDetector
    from art.estimators.classification.scikitlearn import ScikitlearnClassifier
    from sklearn.neural_network import MLPClassifier

    class _Fit(ScikitlearnClassifier):  # type: ignore[misc]
        """BinaryInputDetector passes Keras-style fit options sklearn does not take."""

        def fit(self, x: Any, y: Any, **_: Any) -> None:
            super().fit(x, y)

    rng = np.random.default_rng(args.seed + 4)
    train, test = catalogue_pairs(space, rng, 3000), catalogue_pairs(space, rng, 30_000)
    if surrogate is None:
        return {}

    def z(x: NDArray[np.float32]) -> NDArray[np.float32]:
        return ((x[:, 2:] - space.mean) / space.std).astype(np.float32)

    x_train = np.concatenate([z(train), z(fgsm_points(space, surrogate, train, args.eps))])
    y_train = np.concatenate([np.zeros(len(train)), np.ones(len(train))]).astype(np.int64)
    model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0)
    detector = BinaryInputDetector(_Fit(model, clip_values=(-50.0, 50.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector.fit(x_train, np.eye(2)[y_train])

        def score(x: NDArray[np.float32]) -> NDArray[np.float64]:
            report, _ = detector.detect(z(x))
            return np.asarray(report["predictions"], dtype=np.float64)[:, 1]

        clean = score(test)
    cut = float(np.quantile(clean, 0.99))  # at most 1 % of clean rows flagged
    out = {"false_flag": float((clean > cut).mean())}
    # The benign goal is per request: a request of 30 rows is flagged if any row is.
    per_request = (clean[: len(clean) // 30 * 30] > cut).reshape(-1, 30).any(axis=1)
    out["benign requests of 30 rows"] = float(per_request.mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fgsm_scores = score(fgsm_points(space, surrogate, test[:3000], args.eps))
        out["FGSM transferred"] = float((fgsm_scores > cut).mean())
        for row in rows:
            if row.sent:
                queries = np.concatenate(row.sent)
                out[row.name] = float((score(queries) > cut).mean())
    # The strictest cut this sample supports: none of the 30 000 clean rows flagged.
    out["FGSM at 0/30000 clean rows flagged"] = float((fgsm_scores > clean.max()).mean())
    return out


def benign(
    args: argparse.Namespace, space: Space, gw: Gateways, http: httpx.Client, gateway: str
) -> tuple[int, int, int]:
    """Replay of realistic sessions: many clients, popular items, refreshes, pagination.

    Returns (requests, flagged, refused)."""
    rng = np.random.default_rng(args.seed + 3)
    n_items = space.items.shape[0] - 1
    popularity = 1.0 / np.arange(1, n_items + 1) ** 1.1
    popularity /= popularity.sum()
    ranked_items = rng.permutation(np.arange(1, n_items + 1))  # which items are popular
    oracles = [gw.oracle(gateway, space, http) for _ in range(args.clients)]
    requests = flagged = refused = 0
    while requests < args.benign:
        oracle = oracles[int(rng.integers(len(oracles)))]
        user = int(rng.integers(1, space.users.shape[0]))
        size = int(rng.integers(10, 51))
        candidates = ranked_items[rng.choice(n_items, size=size, replace=False, p=popularity)]
        pages = int(rng.integers(1, 4))
        for page in range(pages):
            if page and rng.random() < 0.5:  # next page: other candidates
                candidates = ranked_items[
                    rng.choice(n_items, size=size, replace=False, p=popularity)
                ]
            x = np.stack([space.x(user, int(i)) for i in candidates])
            oracle.first_flag = None
            try:
                oracle.scores(x)
            except RefusedError:
                refused += 1
                oracle.refused = False
            flagged += oracle.first_flag is not None
            requests += 1
    return requests, flagged, refused


def detector_latency(data_dir: Path, space: Space) -> dict[str, tuple[float, float]]:
    """In-process detector cost per request (bounds, fingerprints, state), as stage 5 runs it."""
    import asyncio

    from policies.data_policy import DetectionPolicy
    from security.inspection.state import MemoryState
    from security.inspection.wiring import build_detector

    settings = load_settings(data_dir=data_dir, config_file=data_dir / "gateway.toml")
    detector = build_detector(settings, MemoryState())
    policy = DetectionPolicy()
    rng = np.random.default_rng(5)
    out = {}

    async def measure(rows: int) -> tuple[float, float]:
        samples = []
        for i in range(3000):
            user = int(rng.integers(1, space.users.shape[0]))
            items = rng.integers(1, space.items.shape[0], size=rows)
            feeds = space.feeds(np.stack([space.x(user, int(j)) for j in items]))
            started = time.perf_counter_ns()
            await detector.observe(f"c{i % 50}", feeds, 1e9 + i, policy, "r")
            samples.append((time.perf_counter_ns() - started) / 1000)
        samples.sort()
        return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]

    for rows in (1, 20):
        out[f"{rows} row(s)"] = asyncio.run(measure(rows))
    return out


def _bundle(data_dir: Path, name: str, edits: list[tuple[str, str]]) -> Path:
    target = data_dir / f"policy-{name}"
    shutil.copytree(data_dir / "policy", target)
    edit_bundle(target, data_dir / "keys" / "policy-signing.key", edits)
    return target


def configure(data_dir: Path) -> dict[str, Path]:
    base = [PERMISSIVE, BUDGET, ("output: {mode: rounded, decimals: 3}", "output: {mode: scores}")]
    return {
        "flag": _bundle(data_dir, "flag", base),
        "block": _bundle(data_dir, "block", [*base, ("  action: flag", "  action: block")]),
        "rank_only": _bundle(
            data_dir,
            "rank-only",
            [
                PERMISSIVE,
                BUDGET,
                ("output: {mode: rounded, decimals: 3}", "output: {mode: rank_only}"),
            ],
        ),
        "top1": _bundle(
            data_dir,
            "top1",
            [
                PERMISSIVE,
                BUDGET,
                ("output: {mode: rounded, decimals: 3}", "output: {mode: top_k, max_k: 1}"),
            ],
        ),
        "rounded1": _bundle(
            data_dir,
            "rounded1",
            [
                PERMISSIVE,
                BUDGET,
                ("output: {mode: rounded, decimals: 3}", "output: {mode: rounded, decimals: 1}"),
            ],
        ),
    }


def _median(values: list[int]) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="attack runs per attack")
    parser.add_argument("--benign", type=int, default=1500, help="benign requests per gateway")
    parser.add_argument("--clients", type=int, default=40, help="benign clients")
    parser.add_argument("--extraction-queries", type=int, default=2000)
    parser.add_argument("--extraction-batch", type=int, default=100)
    parser.add_argument("--hsj-iter", type=int, default=10)
    parser.add_argument("--hsj-eval", type=int, default=200)
    parser.add_argument("--zoo-iter", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.5, help="success budget (RMS z)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        default="hsj,zoo,fgsm,extraction,benign,learned",
        help="comma-separated parts to run (default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    args.only = set(args.only.split(","))
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-adversarial-"))
    report = init_data_dir(work / "data")
    data_dir = report.data_dir
    bundles = configure(data_dir)
    space = Space.load(data_dir)
    # The label threshold: the median score of benign pairs.
    rng = np.random.default_rng(args.seed)
    sample = np.stack(
        [
            space.x(int(u), int(i))
            for u, i in zip(rng.integers(1, 3001, 4000), rng.integers(1, 1501, 4000), strict=True)
        ]
    )
    space.threshold = float(np.median(space.true_scores(sample)))
    settings = load_settings(data_dir=data_dir, config_file=report.config)
    issuer = EmbeddedIssuer(
        settings.issuer,
        issuer_url=settings.issuer_url,
        signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
    )
    ports = {name: free_port() for name in bundles}
    servers = []
    for name, bundle in bundles.items():
        env = gateway_env(
            GATEWAY_DEV_MODE="true",
            GATEWAY_LOG_LEVEL="error",  # every flag is a warning line
            GATEWAY_INSPECTION__EXPOSE_VERDICT="true",
            GATEWAY_POLICY__BUNDLE=str(bundle),
            GATEWAY_POLICY__WATCH_INTERVAL_S="0",
            GATEWAY_AUDIT__SQLITE_PATH=str(data_dir / f"audit-{name}.db"),
        )
        # Tokens minted here must validate there: one issuer URL for all four.
        env["GATEWAY_ISSUER__ISSUER_URL"] = settings.issuer_url
        servers.append(
            (gateway_command(data_dir, ports[name]), env, f"http://127.0.0.1:{ports[name]}/readyz")
        )
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    gw = Gateways(urls, issuer)
    with running(servers), httpx.Client(timeout=30) as http:
        rows = attacks(args, space, gw, http)
        agreement: dict[str, float] = {}
        linear = None
        if "extraction" in args.only or "fgsm" in args.only:
            for strategy in ("synthetic", "catalogue"):
                for gateway in ("flag", "rounded1", "rank_only", "top1"):
                    agreement[f"{strategy}/{gateway}"], ext_row, lin = extraction(
                        args, space, gw, http, gateway, strategy
                    )
                    if gateway == "flag":
                        rows.append(ext_row)
                        if strategy == "catalogue":
                            linear = lin
        if "fgsm" in args.only:
            rows.insert(min(2, len(rows)), fgsm_transfer(args, space, gw, http, linear))
        learned = {}
        if "learned" in args.only:
            learned = learned_detector(args, space, linear, rows)
        benign_flag = benign_block = (0, 0, 0)
        if "benign" in args.only:
            benign_flag = benign(args, space, gw, http, "flag")
            benign_block = benign(args, space, gw, http, "block")
    latency = detector_latency(data_dir, space)
    elapsed = time.monotonic() - started
    shutil.rmtree(work, ignore_errors=True)
    results = {
        "rows": [{k: v for k, v in r.__dict__.items() if k != "sent"} for r in rows],
        "agreement": agreement,
        "benign_flag": benign_flag,
        "benign_block": benign_block,
        "latency_us": latency,
        "learned": learned,
        "threshold": space.threshold,
        "seconds": elapsed,
    }
    print_table(args, results, rows)
    if args.json:
        print(json.dumps(results, default=str))
    return results


def print_table(args: argparse.Namespace, results: dict[str, Any], rows: list[AttackRow]) -> None:
    print(
        f"bench/adversarial  cpus={os.cpu_count()}  runs/attack={args.runs}  "
        f"eps={args.eps} (RMS z)  "
        f"HSJ iter={args.hsj_iter} eval={args.hsj_eval}  ZOO iter={args.zoo_iter}  "
        f"label threshold (median benign score)={results['threshold']:.4f}  "
        f"took {results['seconds']:.0f} s"
    )
    print(
        "detector: default bundle thresholds (near_duplicates 8, query_similarity 0.9, "
        "extraction_rate 0.8 over >= 32 rows, out_of_range 0)"
    )
    header = (
        "| attack | success, no defence | runs flagged | median queries to 1st flag "
        "| median queries/run | success, blocking on |"
    )
    print(header)
    print("|---|---|---|---|---|---|")
    for r in rows:
        n = max(r.runs, 1)
        extracting = r.name.startswith("extraction")
        blocked = "-" if extracting else f"{r.success_blocked}/{r.runs}"
        success = (
            "see agreement"
            if extracting
            else f"{r.success_open}/{r.runs} ({100 * r.success_open / n:.0f} %)"
        )
        print(
            f"| {r.name} | {success} "
            f"| {r.flagged}/{r.runs} ({100 * r.flagged / n:.0f} %) | {_median(r.first_flags)} "
            f"| {_median(r.queries)} | {blocked} |"
        )
    agreement = results["agreement"]
    for strategy in ("synthetic", "catalogue") if agreement else ():
        print(
            f"| extraction surrogate agreement, {strategy} queries (2000 benign pairs) "
            f"| full scores {100 * agreement[strategy + '/flag']:.1f} % "
            f"| rounded(1) {100 * agreement[strategy + '/rounded1']:.1f} % "
            f"| rank_only {100 * agreement[strategy + '/rank_only']:.1f} % "
            f"| top_k=1 {100 * agreement[strategy + '/top1']:.1f} % | |"
        )
    req, flagged, _ = results["benign_flag"]
    req_b, _, refused_b = results["benign_block"]
    if req:
        print(
            f"| benign replay ({args.clients} clients) | flag gateway: {flagged}/{req} flagged "
            f"({100 * flagged / req:.2f} %) | block gateway: {refused_b}/{req_b} refused "
            f"({100 * refused_b / max(req_b, 1):.2f} %) | | | |"
        )
    learned = results["learned"]
    if learned:
        print(
            "| learned detector (ART BinaryInputDetector, MLP; not shipped), share of queries "
            f"flagged at {100 * learned['false_flag']:.1f} % clean false flags | "
            + " | ".join(f"{k}: {100 * v:.1f} %" for k, v in learned.items() if k != "false_flag")
            + " |"
        )
    lat = results["latency_us"]
    print(
        "| detector latency per request (in process, p50 / p99) | "
        + " | ".join(f"{k}: {v[0]:.0f} / {v[1]:.0f} us" for k, v in lat.items())
        + " | | | |"
    )


if __name__ == "__main__":
    main()
