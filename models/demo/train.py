"""Train the demo ranker with PyTorch and write the committed ONNX + model card.

    python -m models.demo.train            # rewrites models/demo/assets/

Torch is imported inside the functions: it is a training-only extra, and the
rest of the package (install, evaluation, serving) must import without it.
The model is written as plain tensors rather than an `nn.Module` so that its
forward pass reads line for line like the hand-built ONNX graph.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.demo import ASSETS_DIR, CARD_NAME, MODEL_ASSET, MODEL_NAME, MODEL_VERSION
from models.demo.data import DEFAULT_SEED, DemoData, generate
from models.demo.evaluate import evaluate, heldout_inputs, score_heldout
from models.demo.features_build import FeatureTables, build_tables
from models.demo.onnx_graph import IR_VERSION, OPSET, Signature, build_model, signature_json

EMB_DIM = 16
HIDDEN = (64, 32)
COLD_START_RATE = 0.1
EMB_L2 = 1e-4
MAX_EXPORT_DIFF = 1e-5


@dataclass(frozen=True)
class TrainConfig:
    seed: int = DEFAULT_SEED
    # Few epochs on purpose: the user features are computed from the same
    # training labels, so longer training overfits them (held-out AUC peaks early).
    epochs: int = 2
    batch_size: int = 1024
    learning_rate: float = 1e-3
    threads: int = 2


def _init_params(torch: Any, tables: FeatureTables, gen: Any) -> dict[str, Any]:
    fu = tables.user_features.shape[1]
    fi = tables.item_features.shape[1]
    dims = [2 * EMB_DIM + fu + fi, *HIDDEN, 1]

    def uniform(shape: tuple[int, ...], bound: float) -> Any:
        t = (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound
        return t.requires_grad_(True)

    params: dict[str, Any] = {
        "user_emb": (
            torch.randn((tables.user_features.shape[0], EMB_DIM), generator=gen) * 0.05
        ).requires_grad_(True),
        "item_emb": (
            torch.randn((tables.item_features.shape[0], EMB_DIM), generator=gen) * 0.05
        ).requires_grad_(True),
        "w_wide": torch.zeros((tables.n_genres, 1)).requires_grad_(True),
    }
    for k, (d_in, d_out) in enumerate(itertools.pairwise(dims), start=1):
        bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default range
        params[f"w{k}"] = uniform((d_out, d_in), bound)
        params[f"b{k}"] = uniform((d_out,), bound)
    return params


def _feature_scaling(tables: FeatureTables) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Per-column mean and 1/std over the real (non-cold) rows, folded into the graph."""
    uf, itf = tables.user_features[1:], tables.item_features[1:]
    mean = np.concatenate([uf.mean(axis=0), itf.mean(axis=0)]).astype(np.float32)
    std = np.concatenate([uf.std(axis=0), itf.std(axis=0)]).astype(np.float32)
    return mean, (1.0 / np.maximum(std, 1e-6)).astype(np.float32)


def _forward(torch: Any, p: dict[str, Any], uid: Any, iid: Any, uf: Any, itf: Any) -> Any:
    """Logits; mirrors models.demo.onnx_graph node for node (sigmoid applied by callers)."""
    n_genres = p["w_wide"].shape[0]
    dense = (torch.cat([uf, itf], dim=1) - p["feat_mean"]) * p["feat_scale"]
    x = torch.cat([p["user_emb"][uid], p["item_emb"][iid], dense], dim=1)
    h1 = torch.relu(x @ p["w1"].T + p["b1"])
    h2 = torch.relu(h1 @ p["w2"].T + p["b2"])
    deep = h2 @ p["w3"].T + p["b3"]
    wide = (uf[:, :n_genres] * itf[:, :n_genres]) @ p["w_wide"]
    return (deep + wide).reshape(-1)


def train(
    data: DemoData, tables: FeatureTables, cfg: TrainConfig, *, verbose: bool = True
) -> tuple[dict[str, NDArray[np.float32]], Any]:
    """Return the numpy weights and a torch scoring function for the export check."""
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = _init_params(torch, tables, gen)
    mean, scale = _feature_scaling(tables)
    params["feat_mean"] = torch.from_numpy(mean)
    params["feat_scale"] = torch.from_numpy(scale)
    trainable = [v for v in params.values() if v.requires_grad]
    opt = torch.optim.Adam(trainable, lr=cfg.learning_rate)

    user_tab = torch.from_numpy(tables.user_features)
    item_tab = torch.from_numpy(tables.item_features)
    uid_all = torch.from_numpy(data.train.user + 1)
    iid_all = torch.from_numpy(data.train.item + 1)
    y_all = torch.from_numpy(data.train.click.astype(np.float32))
    n = uid_all.shape[0]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    test_in = {k: torch.from_numpy(np.asarray(v)) for k, v in heldout_inputs(data, tables).items()}

    def score(inputs: dict[str, Any]) -> Any:
        with torch.no_grad():
            return torch.sigmoid(
                _forward(
                    torch,
                    params,
                    inputs["user_id"],
                    inputs["item_id"],
                    inputs["user_features"],
                    inputs["item_features"],
                )
            )

    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            uid = uid_all[idx]
            # Cold start learns from real traffic: a random tenth of rows are
            # shown to the model as the unknown user (row 0 id and features).
            cold = torch.rand(uid.shape[0], generator=gen) < COLD_START_RATE
            uid = torch.where(cold, torch.zeros_like(uid), uid)
            iid = iid_all[idx]
            uf, itf = user_tab[uid], item_tab[iid]
            logits = _forward(torch, params, uid, iid, uf, itf)
            loss = loss_fn(logits, y_all[idx])
            reg = EMB_L2 * (
                params["user_emb"][uid].pow(2).sum(1).mean()
                + params["item_emb"][iid].pow(2).sum(1).mean()
            )
            opt.zero_grad()
            (loss + reg).backward()
            opt.step()
            total += float(loss.detach()) * idx.shape[0]
        if verbose:
            from models.demo.evaluate import auc

            test_auc = auc(data.test.click, score(test_in).numpy())
            print(
                f"epoch {epoch}: train bce {total / n:.4f}  held-out auc {test_auc:.4f}"
                f"  ({time.perf_counter() - started:.1f}s)"
            )

    weights = {
        k: np.ascontiguousarray(v.detach().numpy(), dtype=np.float32) for k, v in params.items()
    }
    return weights, score


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_card(
    data: DemoData,
    tables: FeatureTables,
    cfg: TrainConfig,
    signature: Signature,
    metrics: dict[str, float],
    model_bytes: bytes,
    torch_version: str,
) -> dict[str, Any]:
    return {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "description": (
            "Demo CTR ranker (embedding + MLP with a wide genre-cross part) trained on a "
            "synthetic MovieLens-like impression log. Scores are click probabilities."
        ),
        "intended_use": "Demonstration and tests of the gateway only; synthetic users, no PII.",
        "seed": data.seed,
        "data": {
            "generator": "models.demo.data.generate",
            "n_users": data.n_users,
            "n_items": data.n_items,
            "n_genres": len(data.genres),
            "train_impressions": len(data.train),
            "heldout_impressions": len(data.test),
            "train_ctr": round(float(data.train.click.mean()), 6),
            "data_digest": data.digest(),
        },
        "features": {
            "user": [str(n) for n in tables.user_feature_names],
            "item": [str(n) for n in tables.item_feature_names],
            "store_digest": tables.digest(),
            "cold_start_row": 0,
        },
        "signature": signature_json(signature),
        "architecture": {
            "embedding_dim": EMB_DIM,
            "hidden": list(HIDDEN),
            "wide": "user genre preference x item genre multi-hot",
            "opset": OPSET,
            "ir_version": IR_VERSION,
        },
        "training": {
            "library": "torch",
            "library_version": torch_version,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "optimizer": "Adam",
            "learning_rate": cfg.learning_rate,
            "loss": "binary cross-entropy (with logits)",
            "embedding_l2": EMB_L2,
            "cold_start_rate": COLD_START_RATE,
            "seed": cfg.seed,
        },
        "evaluation": {
            "split": "held-out 20% of impressions (seeded permutation); features from train only",
            "metric": "ROC AUC",
            "model_auc": metrics["model_auc"],
            "popularity_auc": metrics["popularity_auc"],
            "item_ctr_auc": metrics["item_ctr_auc"],
            "cold_start_auc": metrics["cold_start_auc"],
            "popularity_baseline": "item click count in the training split",
        },
        "model_sha256": _sha256(model_bytes),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--out-dir", type=Path, default=ASSETS_DIR)
    args = parser.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, epochs=args.epochs)

    import torch

    started = time.perf_counter()
    data = generate(cfg.seed)
    tables = build_tables(data)
    weights, torch_score = train(data, tables, cfg)
    signature = Signature(
        n_user_features=tables.user_features.shape[1],
        n_item_features=tables.item_features.shape[1],
        n_genres=tables.n_genres,
    )
    model_bytes = build_model(weights, signature, doc=f"{MODEL_NAME} v{MODEL_VERSION}")
    model_bytes_s: bytes = model_bytes.SerializeToString()

    ort_scores = score_heldout(model_bytes_s, data, tables)
    torch_scores = torch_score(
        {k: torch.from_numpy(np.asarray(v)) for k, v in heldout_inputs(data, tables).items()}
    ).numpy()
    diff = float(np.max(np.abs(ort_scores - torch_scores)))
    if diff >= MAX_EXPORT_DIFF:
        raise SystemExit(f"ONNX export differs from torch by {diff:.2e} (limit {MAX_EXPORT_DIFF})")

    metrics = evaluate(model_bytes_s, data, tables)
    card = build_card(data, tables, cfg, signature, metrics, model_bytes_s, torch.__version__)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / MODEL_ASSET).write_bytes(model_bytes_s)
    (args.out_dir / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    print(
        f"wrote {args.out_dir / MODEL_ASSET} ({len(model_bytes_s)} bytes) in "
        f"{time.perf_counter() - started:.1f}s; torch/onnx max diff {diff:.1e}; "
        f"held-out AUC model {metrics['model_auc']:.4f}, "
        f"popularity {metrics['popularity_auc']:.4f}, "
        f"item CTR {metrics['item_ctr_auc']:.4f}, cold start {metrics['cold_start_auc']:.4f}"
    )


if __name__ == "__main__":
    main()
