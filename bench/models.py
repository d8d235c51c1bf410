"""bench/models: what packaging costs, and what INT8 buys, for the demo model.

    python -m bench.models [--repeats 15] [--iterations 2000]

All in process, one fresh data directory (`gateway init`) per run:
1. package time: `pack_model` of the committed demo model (check, stats given,
   encrypt, sign with model-signing), fp32, and INT8 (quantise + holdout gate);
2. load time: the loader's steps (verify signature, unwrap, decrypt, digest,
   session, session signature) vs reading the plain .onnx file and building the
   same onnxruntime session from its bytes (the baseline);
3. inference latency, fp32 vs INT8 packages, at batch 1 and batch 100 (p50 of
   `session.run` through the Ranker, one intra-op thread, as the gateway runs it).
Medians over the repeats. Prints one table with ratios against the baselines.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gateway.datadir import MODEL_SIGNING_KEY, init_data_dir
from models.demo import ASSETS_DIR, MODEL_ASSET, model_bytes
from models.demo_package import demo_holdout, demo_stats
from models.features import FeatureStore
from models.loader import PolicyView
from models.ort import session_from_bytes
from models.pack import pack_model
from models.ranker import Ranker
from models.registry import ModelRegistry
from models.signing import read_public_keys
from security.keyring import open_keyring


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def p50_us(fn: Callable[[], object], iterations: int) -> float:
    for _ in range(min(50, iterations)):
        fn()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    # onnxruntime's quantiser logs a pre-processing hint at WARNING on the root logger.
    logging.getLogger().setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    try:
        data = init_data_dir(work / "data").data_dir
        keyring = open_keyring(data / "keys")
        stats = demo_stats(data / "demo/features.npz")
        holdout = demo_holdout()
        blob = model_bytes()
        counter = iter(range(10, 10_000))

        def pack(**options: object) -> None:
            pack_model(
                blob,
                name="demo-ranker",
                version=str(next(counter)),
                root=data / "models",
                keyring=keyring,
                signing_key=data / MODEL_SIGNING_KEY,
                feature_stats=stats,
                **options,  # type: ignore[arg-type]
            )

        pack_fp32 = median_ms(pack, args.repeats)
        pack_int8 = median_ms(lambda: pack(quantize="int8", holdout=holdout), args.repeats)
        pack_model(
            blob, name="demo-ranker", version="2", root=data / "models", keyring=keyring,
            signing_key=data / MODEL_SIGNING_KEY, feature_stats=stats, quantize="int8",
            holdout=holdout,
        )  # fmt: skip

        registry = ModelRegistry(
            data / "models",
            trusted=lambda: read_public_keys(data / "keys/model-signing.pub", "init"),
            keyring=keyring,
            policy=lambda: PolicyView(frozenset({"demo-ranker"}), lambda _n: "1"),
            make_ranker=lambda n, v, b: Ranker(name=n, version=v, model_bytes=b),
        )
        plain_file = ASSETS_DIR / MODEL_ASSET

        def load_packaged() -> None:
            registry.load("demo-ranker", "1").ranker.close()

        load_package = median_ms(load_packaged, args.repeats)
        verify_only = median_ms(lambda: registry.verify("demo-ranker", "1"), args.repeats)
        load_plain = median_ms(lambda: session_from_bytes(plain_file.read_bytes()), args.repeats)

        fp32 = registry.load("demo-ranker", "1").ranker
        int8 = registry.load("demo-ranker", "2").ranker
        store = FeatureStore.load(data / "demo/features.npz")
        rng = np.random.default_rng(0)
        items = [store.item_ids[i] for i in rng.choice(len(store.item_ids), 100, replace=False)]
        feeds = {1: store.inputs_for("u7", items[:1]), 100: store.inputs_for("u7", items)}
        latency = {
            (kind, batch): p50_us(lambda r=ranker, f=feed: r.run_sync(f), args.iterations)
            for kind, ranker in (("fp32", fp32), ("int8", int8))
            for batch, feed in feeds.items()
        }
        int8_size = (data / "models/demo-ranker/2/model.onnx.enc").stat().st_size
        fp32_size = (data / "models/demo-ranker/1/model.onnx.enc").stat().st_size
        registry.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"bench/models: demo model {len(blob) / 1024:.0f} KiB, os.cpu_count()={os.cpu_count()}, "
        f"repeats={args.repeats} (median), iterations={args.iterations} (p50), "
        f"intra_op_threads=1"
    )
    print("| measure | value | ratio |")
    print("|---|---|---|")
    print(f"| pack fp32 (check, encrypt, sign) | {pack_fp32:.1f} ms | 1.00x (baseline) |")
    print(
        f"| pack int8 (+ quantise, holdout gate on {len(holdout[1])} rows) | {pack_int8:.1f} ms "
        f"| {pack_int8 / pack_fp32:.2f}x pack fp32 |"
    )
    print(f"| load plain .onnx file → session (baseline) | {load_plain:.1f} ms | 1.00x |")
    print(
        f"| load package: verify + unwrap + decrypt + session | {load_package:.1f} ms "
        f"| {load_package / load_plain:.2f}x plain |"
    )
    print(
        f"| of which steps 0-5 (read, verify, unwrap, decrypt, digest) | {verify_only:.1f} ms "
        f"| {verify_only / load_plain:.2f}x plain |"
    )
    print(
        f"| package size fp32 / int8 | {fp32_size / 1024:.0f} KiB / {int8_size / 1024:.0f} KiB "
        f"| {fp32_size / int8_size:.2f}x smaller |"
    )
    for batch in (1, 100):
        a, b = latency[("fp32", batch)], latency[("int8", batch)]
        print(f"| inference fp32, batch {batch} (baseline) | p50 {a:.0f} µs | 1.00x |")
        print(f"| inference int8, batch {batch} | p50 {b:.0f} µs | {a / b:.2f}x speed of fp32 |")


if __name__ == "__main__":
    main()
