"""The command line: which gateways to start, which parts to run, one table at the end."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.adversarial import adaptive, extraction, populations, standard
from bench.adversarial.gateways import (
    Edit,
    action,
    detector_quantiles,
    fleet,
    has_perturbation,
    has_watermark,
    lift_limits,
    make_bundle,
    output,
    perturbation,
    shipped_summary,
    watermark,
    watermark_on,
)
from bench.adversarial.report import print_table
from bench.adversarial.space import Space
from gateway.datadir import init_data_dir

LEGACY = ("hsj", "zoo", "fgsm", "extraction", "benign", "learned")
ADAPTIVE = (
    "nes",
    "nes-noise",
    "nes-rotate",
    "hsj-rotate",
    "hsj-rotate-rank",
    "interleave",
    "multi-client",
    "paced",
)
POPULATIONS = ("service", "drift", "catalogue")
PARTS = (*LEGACY, *ADAPTIVE, *POPULATIONS, "curve", "latency")
QUICK = {
    "runs": 2,
    "adaptive_runs": 2,
    "tenant_queries": 3000,
    "benign": 200,
    "clients": 10,
    "extraction_queries": 500,
    "extraction_sizes": [1000, 3000],
    "hsj_iter": 3,
    "hsj_eval": 50,
    "zoo_iter": 5,
    "service_requests": 300,
    "drift_requests": 200,
    "drift_clients": 5,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    from bench.adversarial import __doc__ as doc

    parser = argparse.ArgumentParser(
        prog="python -m bench.adversarial",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="everything small (2 runs per family): a smoke run")
    add(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts (default all: {','.join(PARTS)})",
    )
    add("--runs", type=int, default=10, help="runs per standard attack")
    add("--adaptive-runs", type=int, default=10, help="runs per adaptive family")
    add("--tenant-queries", type=int, default=10_000, help="rows one attacking tenant may send")
    add("--eps", type=float, default=0.5, help="success budget (RMS z)")
    add("--nes-pairs", type=int, default=10, help="NES antithetic pairs per iteration")
    add("--nes-lr", type=float, default=0.05, help="NES step (RMS z)")
    add("--rotate-pairs", type=int, default=60, help="id pairs an id-rotating attacker uses")
    add("--paced-pairs", type=int, default=10, help="id pairs the paced attacker uses")
    add("--mix", type=int, default=1, help="exact stored rows mixed in per rotated attack row")
    add("--interleave", type=int, default=24, help="exact stored rows per attack row")
    add("--credentials", type=int, default=50, help="credentials of the multi-client attacker")
    add("--hsj-iter", type=int, default=10)
    add("--hsj-eval", type=int, default=200)
    add("--zoo-iter", type=int, default=20)
    add("--benign", type=int, default=1500, help="catalogue-session requests")
    add("--clients", type=int, default=40, help="catalogue-session clients")
    add("--service-users", type=int, default=50)
    add("--service-requests", type=int, default=3000)
    add("--service-rows", type=int, default=100)
    add("--drift-clients", type=int, default=20)
    add("--drift-requests", type=int, default=1000)
    add(
        "--drift-share",
        type=float,
        default=0.25,
        help="share of the held-out impressions that happen during the drift hour",
    )
    add("--extraction-queries", type=int, default=2000, help="legacy synthetic/catalogue runs")
    add("--extraction-batch", type=int, default=100)
    add(
        "--extraction-sizes",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[1000, 5000, 10_000],
        help="surrogate training sizes (answers)",
    )
    add("--seed", type=int, default=0)
    add("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    if args.quick:
        explicit = {
            a.split("=")[0].lstrip("-").replace("-", "_")
            for a in (sys.argv[1:] if argv is None else argv)
            if a.startswith("--")
        }
        for key, value in QUICK.items():
            if key not in explicit:
                setattr(args, key, value)
    args.only = set(args.only.split(","))
    unknown = args.only - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args


def bundles(data_dir: Path, args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Path]]:
    """(process gateways, in-process gateways) the chosen parts need."""
    # "No defence": detection only flags, and no keyed score perturbation; the block
    # gateways keep the perturbation as shipped. Limits are lifted on both: the bench caps
    # each attacking tenant itself (--tenant-queries).
    bare: list[Edit] = [lift_limits, perturbation(False), watermark_on]
    specs: dict[str, list[Edit]] = {
        "flag": [*bare, output(mode="scores"), action("flag")],
        "block": [lift_limits, output(mode="scores"), action("block")],
        "perturbed": [
            lift_limits,
            output(mode="scores"),
            perturbation(True),
            watermark_on,
            action("flag"),
        ],
        "clean": [
            lift_limits,
            perturbation(False),
            watermark(False),
            output(mode="scores"),
            action("flag"),
        ],
        "rank_only": [*bare, output(mode="rank_only"), action("flag")],
        "rank_only_block": [lift_limits, output(mode="rank_only"), action("block")],
        "rounded1": [*bare, output(mode="rounded", decimals=1), action("flag")],
        "top1": [*bare, output(mode="top_k", max_k=1), action("flag")],
        "shipped": [action("block")],  # as shipped, detection blocking
    }
    only = args.only
    procs: set[str] = set()
    local: dict[str, str] = {}
    if only & {"hsj", "zoo", "fgsm", "benign", *ADAPTIVE} - {"paced", "hsj-rotate-rank"}:
        procs |= {"flag", "block"}
    if "hsj-rotate-rank" in only:
        procs |= {"rank_only", "rank_only_block"}
    if only & {"extraction", "fgsm", "learned", "curve"}:
        procs |= {"flag", "rank_only", "rounded1", "top1"}
    if "curve" in only and has_perturbation(data_dir):
        procs.add("perturbed")
    if "curve" in only and has_watermark(data_dir):
        procs.add("clean")
    if "paced" in only:
        local |= {"flag_clock": "flag", "block_clock": "block"}
    if only & set(POPULATIONS):
        local["shipped"] = "shipped"
    made = {name: make_bundle(data_dir, name, specs[name]) for name in procs | set(local.values())}
    return {n: made[n] for n in sorted(procs)}, {n: made[b] for n, b in local.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-adversarial-"))
    try:
        report = init_data_dir(work / "data")
        args.data_dir = str(report.data_dir)
        space = Space.load(report.data_dir)
        space.set_threshold(args.seed)
        processes, local = bundles(report.data_dir, args)
        results: dict[str, Any] = {
            "threshold": space.threshold,
            "shipped": shipped_summary(report.data_dir),
        }
        with fleet(
            space, report.data_dir, report.config, processes, local, start=float(int(time.time()))
        ) as gws:
            rows = standard.attacks(args, space, gws)
            legacy_agreement: dict[str, float] = {}
            linear = None
            if args.only & {"extraction", "fgsm", "learned"}:
                for strategy in ("synthetic", "catalogue"):
                    for gateway in ("flag", "rounded1", "rank_only", "top1"):
                        legacy_agreement[f"{strategy}/{gateway}"], ext_row, lin = (
                            standard.extraction(args, space, gws, gateway, strategy)
                        )
                        if gateway == "flag":
                            rows.append(ext_row)
                            if strategy == "catalogue":
                                linear = lin
            if "fgsm" in args.only:
                rows.insert(min(2, len(rows)), standard.fgsm_transfer(args, space, gws, linear))
            learned = (
                standard.learned_detector(args, space, linear, rows)
                if "learned" in args.only
                else {}
            )
            benign_flag = benign_block = (0, 0, 0)
            if "benign" in args.only:
                benign_flag = standard.benign(args, space, gws, "flag")
                benign_block = standard.benign(args, space, gws, "block")
            rows += adaptive.run_families(args, space, gws)
            pops = populations.run_populations(args, space, gws)
            detector = {
                name: detector_quantiles(gws, name)
                for name in ("shipped", "block")
                if name in gws.bases
            }
            curves = []
            if "curve" in args.only:
                hardenings = {k: v for k, v in extraction.HARDENINGS.items() if k in gws.bases}
                curves = extraction.run_extraction(args, space, gws, hardenings)
        latency = (
            standard.detector_latency(report.data_dir, space) if "latency" in args.only else {}
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.update(
        {
            "rows": [{k: v for k, v in r.__dict__.items() if k != "sent"} for r in rows],
            "agreement": legacy_agreement,
            "benign_flag": benign_flag,
            "benign_block": benign_block,
            "populations": [{**p.__dict__, "rate": p.rate} for p in pops],
            "curves": [c.__dict__ for c in curves],
            "latency_us": latency,
            "detector": detector,
            "learned": learned,
            "seconds": time.monotonic() - started,
        }
    )
    print_table(args, results)
    if args.json:
        print(json.dumps(results, default=str))
    return results
