"""Extraction: a surrogate trained on the gateway's answers, by queries and output hardening.

The attacker queries catalogue (user, item) pairs, 100 per request (what the default
deployment lets any client do: ids only), up to the largest size, and trains a
surrogate on the first 1k, 5k and 10k answers: an MLP regressor on the 40 features
(standardised) predicting what each hardening leaves of the score:
- scores / rounded: the logit of the answer;
- rank_only: the row's rank within its request, as a percentile;
- top_k=1: whether the row was the one named.
Agreement with the committed model on 2,000 held-out catalogue pairs: Spearman rank
correlation of the surrogate's output with the true score, and label agreement
(surrogate above its median vs the true score above the benign median).

Watermark: when the gateway has `gateway models watermark-triggers` /
`watermark-check`, the surrogate's scores on the trigger set are checked and the
p-value reported ("n/a" otherwise).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.adversarial.gateways import Fleet, RefusedError
from bench.adversarial.space import Space, catalogue_pairs

HARDENINGS = {
    "flag": "full scores",
    "perturbed": "full scores + keyed perturbation",
    "rounded1": "rounded(1)",
    "rank_only": "rank_only",
    "top1": "top_k=1",
    "clean": "full scores, watermark off (control: must not be detected)",
}


@dataclass
class Curve:
    gateway: str
    label: str
    sizes: list[int] = field(default_factory=list)
    spearman: list[float] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)
    watermark_p: float | None = None
    watermark_note: str = "n/a"
    refused: int = 0


def targets(answers: NDArray[np.float64], gateway: str, batch: int) -> NDArray[np.float64]:
    if gateway == "top1":
        return (answers == 1).astype(np.float64)
    if gateway.startswith("rank_only"):
        out = np.empty_like(answers)
        for i in range(0, len(answers), batch):
            ranks = answers[i : i + batch]
            out[i : i + batch] = 1.0 - (ranks - 1) / max(len(ranks) - 1, 1)
        return out
    p = np.clip(answers, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit(z: NDArray[np.float32], y: NDArray[np.float64], seed: int) -> Any:
    from sklearn.neural_network import MLPRegressor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn convergence chatter
        return MLPRegressor(
            hidden_layer_sizes=(64, 32), max_iter=300, early_stopping=True, random_state=seed
        ).fit(z, y)


def curve(args: argparse.Namespace, space: Space, fleet: Fleet, gateway: str, label: str) -> Curve:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(args.seed + 30)
    sizes = sorted(args.extraction_sizes)
    x = catalogue_pairs(space, rng, sizes[-1])
    oracle = fleet.oracle(gateway, sticky=False)
    batch = args.extraction_batch
    answers = np.full(len(x), np.nan)
    out = Curve(gateway, label)
    for i in range(0, len(x), batch):
        try:
            answers[i : i + batch] = oracle.scores(x[i : i + batch])
        except RefusedError:
            out.refused += 1
    test = catalogue_pairs(space, np.random.default_rng(args.seed + 99), 2000)
    z_test = space.z(test)
    truth = space.true_scores(test)
    y = targets(answers, gateway, batch)
    z = space.z(x)
    for size in sizes:
        keep = ~np.isnan(y[:size])
        out.sizes.append(size)
        if keep.sum() < 10 or len(set(y[:size][keep].tolist())) < 2:
            out.spearman.append(0.0)
            out.agreement.append(0.5)
            continue
        model = fit(z[:size][keep], y[:size][keep], args.seed)
        guess = model.predict(z_test)
        out.spearman.append(float(spearmanr(guess, truth).statistic))
        out.agreement.append(
            float(((guess > np.median(guess)) == (truth > space.threshold)).mean())
        )
        if size == sizes[-1]:
            out.watermark_p, out.watermark_note = watermark(args, space, scorer(model, gateway))
    return out


def scorer(model: Any, gateway: str) -> Callable[[NDArray[np.float32]], Any]:
    """The surrogate as a scoring model: back from logits to scores where it learnt those."""
    if gateway in ("top1",) or gateway.startswith("rank_only"):
        return model.predict  # type: ignore[no-any-return]

    def score(z: NDArray[np.float32]) -> Any:
        return 1.0 / (1.0 + np.exp(-model.predict(z)))

    return score


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv], capture_output=True, text=True, check=False
    )


def watermark(
    args: argparse.Namespace, space: Space, predict: Callable[[NDArray[np.float32]], Any]
) -> tuple[float | None, str]:
    """The surrogate's scores on the gateway's trigger set, checked by the gateway's CLI."""
    data_dir = Path(args.data_dir)
    if _cli("models", "watermark-triggers", "--help").returncode != 0:
        return None, "n/a"
    with tempfile.TemporaryDirectory() as tmp:
        triggers = Path(tmp) / "triggers.json"
        made = _cli(
            "models", "watermark-triggers", "--data-dir", str(data_dir), "--out", str(triggers)
        )
        if made.returncode != 0:
            return None, f"n/a (watermark-triggers: {made.stderr.strip()[:80]})"
        try:
            rows = trigger_rows(json.loads(triggers.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            return None, f"n/a (trigger file: {exc})"
        scores = predict(space.z(rows))
        answer = Path(tmp) / "scores.json"
        answer.write_text(json.dumps({"scores": [float(s) for s in scores]}))
        checked = _cli(
            "models", "watermark-check", "--data-dir", str(data_dir), "--scores", str(answer)
        )
        p = parse_p(checked.stdout + checked.stderr)
        if p is None:
            return None, f"n/a (watermark-check: {(checked.stdout + checked.stderr).strip()[:80]})"
        return p, f"{p:.1e}"


def trigger_rows(doc: Any) -> NDArray[np.float32]:
    """Model input rows (ids as 0, then user and item features) from the trigger file's
    `inputs` (the store rows of its keyed catalogue pairs)."""
    inputs = doc["inputs"]
    users = np.asarray(inputs["user_features"], dtype=np.float32).reshape(-1, 20)
    items = np.asarray(inputs["item_features"], dtype=np.float32).reshape(-1, 20)
    return np.concatenate([np.zeros((len(users), 2), dtype=np.float32), users, items], axis=1)


def parse_p(text: str) -> float | None:
    import re

    found = re.search(r"p-value\s*[:=]?\s*([0-9.]+(?:e[+-]?[0-9]+)?)", text, re.IGNORECASE)
    return float(found.group(1)) if found else None


def run_extraction(
    args: argparse.Namespace, space: Space, fleet: Fleet, gateways: dict[str, str]
) -> list[Curve]:
    return [curve(args, space, fleet, name, label) for name, label in gateways.items()]
