"""bench/providers: onnxruntime execution providers side by side on the demo ranker.

    python -m bench.providers --write-inputs FILE.npz        # here: real store rows
    python -m bench.providers --inputs FILE.npz [--rows 1,100,1000,10000,100000]
                              [--out FILE.json]

The GPU check of issue 18, also runnable on a CPU-only box (then only CPU rows). Each
provider list goes through stage 6's own code (`models.ort.resolve_providers`, then
`session_from_bytes`): CPU with one intra-op thread (the gateway's default) and with
every core; CUDA, and TensorRT, each with the CPU fallback, where the onnxruntime
build has them. Every batch size is run after a warm-up until about half a second has
passed; the table gives the providers the session really uses, p50 and p99 per run,
rows/s, the p50's ratio to one-thread CPU, and the largest score difference from CPU
(a provider must rank as the CPU does). `--write-inputs` saves 100 users x 100
catalogue items from a fresh data directory's feature store; larger batches repeat it.
Only numpy and onnxruntime are needed to run it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.ort import CPU_PROVIDER, ort, resolve_providers, session_from_bytes

_MODEL = Path(__file__).resolve().parent.parent / "models/demo/assets/demo-ranker.onnx"
_CUDA = "CUDAExecutionProvider"
_TENSORRT = "TensorrtExecutionProvider"


def write_inputs(path: Path) -> None:
    import tempfile

    from gateway.datadir import init_data_dir
    from models.features import FeatureStore

    report = init_data_dir(Path(tempfile.mkdtemp(prefix="bench-providers-")) / "data")
    path_npz = report.data_dir / "demo" / "features.npz"
    store = FeatureStore.load(path_npz)
    with np.load(path_npz) as stored:
        user_ids = [str(u) for u in stored["user_ids"][1:]]  # row 0: the cold-start row
    rng = np.random.default_rng(0)
    parts: list[dict[str, np.ndarray]] = []
    for user in rng.choice(len(user_ids), 100, replace=False):
        items = rng.choice(len(store.item_ids), 100, replace=False)
        feeds = store.inputs_for(user_ids[user], [store.item_ids[i] for i in items])
        parts.append({k: np.asarray(v) for k, v in feeds.items()})
    arrays: dict[str, Any] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    np.savez(path, **arrays)


def _tile(inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    have = len(next(iter(inputs.values())))
    reps = -(-rows // have)
    return {k: np.ascontiguousarray(np.concatenate([v] * reps)[:rows]) for k, v in inputs.items()}


def _time(session: Any, feeds: dict[str, np.ndarray]) -> tuple[list[float], np.ndarray]:
    out = session.run(None, feeds)[0]
    for _ in range(3):
        session.run(None, feeds)
    runs: list[float] = []
    began = time.perf_counter()
    while (time.perf_counter() - began < 0.5 or len(runs) < 20) and len(runs) < 5000:
        started = time.perf_counter()
        session.run(None, feeds)
        runs.append(time.perf_counter() - started)
    return runs, np.asarray(out, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--write-inputs", type=Path)
    parser.add_argument("--rows", default="1,100,1000,10000,100000")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.write_inputs:
        write_inputs(args.write_inputs)
        return
    if args.inputs is None:
        raise SystemExit("bench/providers: give --inputs (made by --write-inputs)")
    with np.load(args.inputs) as found:
        inputs = {k: found[k] for k in found.files}
    available = ort.get_available_providers()
    cores = os.cpu_count() or 1
    configs: list[tuple[str, list[str], int]] = [
        ("cpu-1", [CPU_PROVIDER], 1),
        (f"cpu-{cores}", [CPU_PROVIDER], cores),
    ]
    if _CUDA in available:
        configs.append(("cuda", [_CUDA, CPU_PROVIDER], 1))
    if _TENSORRT in available:
        configs.append(("tensorrt", [_TENSORRT, _CUDA, CPU_PROVIDER], 1))
    model = _MODEL.read_bytes()
    rows_list = [int(r) for r in args.rows.split(",")]
    results: list[dict[str, Any]] = []
    reference: dict[int, np.ndarray] = {}
    for label, wanted, threads in configs:
        try:
            session = session_from_bytes(
                model, intra_op_threads=threads, providers=resolve_providers(wanted)
            )
        except Exception as exc:  # a provider that cannot start is a finding, not a crash
            results.append({"config": label, "error": f"{type(exc).__name__}: {exc}"})
            continue
        for rows in rows_list:
            runs, scores = _time(session, _tile(inputs, rows))
            reference.setdefault(rows, scores)
            results.append({
                "config": label,
                "providers": session.get_providers(),
                "rows": rows,
                "runs": len(runs),
                "p50_ms": statistics.median(runs) * 1000,
                "p99_ms": float(np.percentile(runs, 99)) * 1000,
                "rows_per_s": rows / statistics.median(runs),
                "max_abs_diff": float(np.max(np.abs(scores - reference[rows]))),
            })  # fmt: skip
    base = {r["rows"]: r["p50_ms"] for r in results if r.get("config") == "cpu-1"}
    print(
        f"bench/providers: demo ranker, onnxruntime {ort.__version__}, available "
        f"{', '.join(available)}, cores={cores}"
    )
    print("| config | providers in use | rows | p50 | p99 | rows/s | p50 vs cpu-1 | max diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['config']} | failed: {r['error']} | | | | | | |")
            continue
        print(
            f"| {r['config']} | {', '.join(r['providers'])} | {r['rows']} "
            f"| {r['p50_ms']:.3f} ms | {r['p99_ms']:.3f} ms | {r['rows_per_s']:,.0f} "
            f"| {r['p50_ms'] / base[r['rows']]:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"onnxruntime": ort.__version__, "results": results}))


if __name__ == "__main__":
    main()
