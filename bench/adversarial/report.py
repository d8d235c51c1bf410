"""One table: attacks (standard and adaptive), benign populations, extraction; then goals."""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

GOALS = (
    "goals (issue 16; block on, raw-feature access granted to the attacker): every family "
    "<= 10 % success within {cap:,} queries per tenant; benign refusals <= 0.5 % for every "
    "population; watermark in a surrogate trained on 10,000 answers at p < 1e-4"
)


def _median(values: list[int]) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


def _pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / max(d, 1):.0f} %)"


def print_table(args: argparse.Namespace, results: dict[str, Any]) -> None:
    cap = args.tenant_queries
    print(
        f"bench/adversarial  cpus={os.cpu_count()}  runs: standard {args.runs}, adaptive "
        f"{args.adaptive_runs}  eps={args.eps} (RMS z)  cap {cap:,} rows per attacking tenant  "
        f"label threshold (median benign score)={results['threshold']:.4f}  "
        f"{'quick  ' if args.quick else ''}took {results['seconds']:.0f} s"
    )
    shipped = results.get("shipped", {})
    print("shipped bundle: " + "; ".join(f"{k}: {v}" for k, v in shipped.items()))
    print(
        "targets: standard attacks, pairs nearest the boundary (issue 7); adaptive families, "
        "pairs that flip along the true gradient after an RMS step of 0.15-0.4 z"
    )
    print(
        "gateways: flag = no defence (detection flags only, no keyed perturbation); block = "
        "detection blocks, perturbation as shipped; both with limits lifted (the bench caps "
        "each tenant). Extraction gateways: watermark on (off in the control), perturbation "
        "off except in its own row. "
        "Benign populations: the shipped bundle with detection blocking"
    )
    print(GOALS.format(cap=cap))
    print(
        "| row | success, no defence (flag) | success, block on | runs flagged "
        "| median queries to 1st flag | median queries/run (flag / block) | goal |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        extracting = r["name"].startswith("extraction")
        runs = r["runs"]
        adaptive = r.get("family") == "adaptive"
        success = "see agreement" if extracting else _pct(r["success_open"], runs)
        blocked = "-" if extracting else _pct(r["success_blocked"], runs)
        goal = ""
        if adaptive or (not extracting and r["name"] != "FGSM transferred (1 query each)"):
            goal = "met" if r["success_blocked"] <= 0.10 * runs else "MISSED"
        print(
            f"| {'adaptive: ' if adaptive else ''}{r['name']} | {success} | {blocked} "
            f"| {_pct(r['flagged'], runs)} | {_median(r['first_flags'])} "
            f"| {_median(r['queries'])} / {_median(r.get('blocked_queries', []))} | {goal} |"
        )
    for pop in results.get("populations", []):
        causes = ", ".join(f"{k} {v}" for k, v in sorted(pop["refused"].items())) or "none"
        refused = sum(pop["refused"].values())
        goal = "met" if pop["rate"] <= 0.005 else "MISSED"
        print(
            f"| benign: {pop['name']} | {pop['requests']} requests, {pop['rows']} rows "
            f"| refused {refused} ({100 * pop['rate']:.2f} %) | causes: {causes} "
            f"| flagged {pop['flagged']} | {pop['note'] or '-'} | {goal} |"
        )
    agreement = results.get("agreement", {})
    for strategy in ("synthetic", "catalogue") if agreement else ():
        print(
            f"| legacy extraction agreement, {strategy} queries ({args.extraction_queries}) "
            f"| full scores {100 * agreement[strategy + '/flag']:.1f} % "
            f"| rounded(1) {100 * agreement[strategy + '/rounded1']:.1f} % "
            f"| rank_only {100 * agreement[strategy + '/rank_only']:.1f} % "
            f"| top_k=1 {100 * agreement[strategy + '/top1']:.1f} % | | |"
        )
    for c in results.get("curves", []):
        sizes = "/".join(f"{s // 1000}k" if s >= 1000 else str(s) for s in c["sizes"])
        spear = " / ".join(f"{v:.2f}" for v in c["spearman"])
        agree = " / ".join(f"{100 * v:.0f} %" for v in c["agreement"])
        p = c["watermark_p"]
        if p is None:
            goal = "-"
        elif c["gateway"] == "clean":
            # Accused at the check's own alpha (1e-4); p < 0.01 on a clean model is worth a
            # second look at the null's calibration (one clean model: 1 % by chance).
            goal = "FALSE ACCUSATION" if p < 1e-4 else "not accused"
            goal += " (p < 0.01: check the null)" if 1e-4 <= p < 0.01 else ""
        elif c["spearman"][-1] < 0.5:
            goal = "- (no usable surrogate)"
        else:
            goal = "met" if p < 1e-4 else "MISSED"
        print(
            f"| extraction, catalogue pairs, {c['label']} | Spearman at {sizes}: {spear} "
            f"| label agreement: {agree} | refused requests {c['refused']} "
            f"| watermark p (surrogate at {sizes.rsplit('/', 1)[-1]}): {c['watermark_note']} "
            f"| | {goal} |"
        )
    req, flagged, _ = results["benign_flag"]
    req_b, _, refused_b = results["benign_block"]
    if req:
        print(
            f"| legacy benign replay ({args.clients} clients, limits lifted) | flag gateway: "
            f"{flagged}/{req} flagged ({100 * flagged / req:.2f} %) | block gateway: "
            f"{refused_b}/{req_b} refused ({100 * refused_b / max(req_b, 1):.2f} %) | | | | |"
        )
    learned = results["learned"]
    if learned:
        print(
            "| learned detector (ART BinaryInputDetector, MLP; not shipped), share of queries "
            f"flagged at {100 * learned['false_flag']:.1f} % clean false flags | "
            + " | ".join(f"{k}: {100 * v:.1f} %" for k, v in learned.items() if k != "false_flag")
            + " |"
        )
    for name, d in results.get("detector", {}).items():
        if d:
            where = "benign populations" if name == "shipped" else "block gateway, attacks"
            print(
                f"| detector latency from the gateway's histogram ({where}) "
                f"| {d['requests']:.0f} requests inspected | p50 within the "
                f"{1000 * d['p50_bucket_s']:.2f} ms bucket | {100 * d['within_0.2ms']:.1f} % "
                "within 0.2 ms (goal: p50 <= 0.2 ms) | | | "
                f"{'met' if d['p50_bucket_s'] <= 0.0002 + 1e-12 else 'MISSED'} |"
            )
    lat = results["latency_us"]
    if lat:
        print(
            "| detector latency per request (in process, p50 / p99) | "
            + " | ".join(f"{k}: {v[0]:.0f} / {v[1]:.0f} us" for k, v in lat.items())
            + " | | | |"
        )
