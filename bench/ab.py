"""bench/ab: the A/B simulator's table, and the same experiment through a real gateway.

    python -m bench.ab [--experiments 200] [--requests 4000] [--gateway 600] [--html PATH]

1. The demo world (models.experiments.sim: the generator's own users, items and click
   model) and two arms: the trained demo model (control) and the popularity-only ONNX
   model. A pool of simulated requests (20 candidates drawn by popularity, top 5 shown)
   gives each arm's true CTR (the generator's expected click probability of what it shows).
2. `--experiments` seeded experiments of up to `--requests` requests, split 50/50, clicks
   drawn from the truth, looked at every 50 requests with the always-valid mSPRT of the
   bundle's defaults (alpha 0.05, mixture sd 0.05): power, impressions per arm at the
   decision, and the fixed-horizon two-proportion z-test's impressions per arm at the same
   power (capped at 0.99; and at 80 %, for scale); as many A/A experiments (the control
   against itself) give the false-positive rate.
3. One experiment to its horizon: estimated CTR and 95 % Wilson interval per arm.
4. A misbehaving arm (8 % of its requests fail) with the bundle's guardrails and `stop`:
   the request count at which its guardrail stopped it.
5. With `--gateway N`: N rankings through a real gateway (in process, fresh data
   directory, version "2" = the popularity model packaged and signed), outcome events
   through `POST /v1/events`, and the admin report's verdict.
Prints one table.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from models.experiments.html import render_html
from models.experiments.sim import (
    Misbehaviour,
    demo_arms,
    make_pool,
    outcome_report,
    replay_world,
    run_experiment,
    summarise,
)
from models.experiments.stats import fixed_horizon_n, wilson
from policies import ExperimentPolicy, Guardrails

ARMS = ("model", "popularity")  # control first


def gateway_run(rankings: int, world: object) -> dict[str, object]:
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from bench.ab_gateway import play, prepare
    from gateway.app import create_app
    from gateway.datadir import init_data_dir
    from gateway.settings import ClientConfig, load_settings
    from security.issuer import EmbeddedIssuer, load_signing_key

    with tempfile.TemporaryDirectory() as tmp:
        report = init_data_dir(Path(tmp) / "data")
        prepare(report.data_dir, world)  # type: ignore[arg-type]
        settings = load_settings(data_dir=report.data_dir, config_file=report.config)
        issuer = EmbeddedIssuer(
            settings.issuer,
            issuer_url=settings.issuer_url,
            signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
        )

        def bearer(client_id: str, *scopes: str) -> dict[str, str]:
            client = ClientConfig(client_id=client_id, secret_hash=SecretStr("x"), scopes=scopes)
            return {"Authorization": f"Bearer {issuer.mint(client)['access_token']}"}

        started = time.perf_counter()
        with TestClient(create_app(settings)) as api:
            shop = bearer("shop", "rank", "events", "consent:write")
            played = play(api, world, shop, users=max(50, rankings // 2), rankings=rankings)  # type: ignore[arg-type]
            found = api.get("/v1/admin/experiments/demo-ranker", headers=bearer("ops", "admin"))
        return {
            "played": played,
            "report": found.json(),
            "seconds": time.perf_counter() - started,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--requests", type=int, default=4000, help="horizon per experiment")
    parser.add_argument("--pool", type=int, default=20000, help="simulated requests scored")
    parser.add_argument("--gateway", type=int, default=0, help="rankings through a real gateway")
    parser.add_argument("--html", type=Path, help="write the horizon experiment's report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    world = replay_world()
    _, scorers = demo_arms(world)
    pool = make_pool(world, scorers, requests=args.pool)
    policy = ExperimentPolicy()
    started = time.perf_counter()
    summary = summarise(pool, ARMS, policy, experiments=args.experiments, requests=args.requests)
    horizon = run_experiment(
        pool, ARMS, policy, requests=args.requests, seed=99, stop_on_decision=False
    )
    guarded = ExperimentPolicy(
        guardrails=Guardrails(max_error_rate=0.02, max_p99_ms=500, min_requests=200, action="stop")
    )
    broken = run_experiment(
        pool,
        ARMS,
        guarded,
        requests=args.requests,
        seed=7,
        misbehaviour={"popularity": Misbehaviour(error_rate=0.08)},
        stop_on_decision=False,
    )
    seconds = time.perf_counter() - started
    if args.html is not None:
        now_ms = int(time.time() * 1000)
        page = render_html(outcome_report(horizon, ARMS, guarded, generated_ms=now_ms))
        args.html.write_text(page, encoding="utf-8")

    print(
        f"bench/ab: {args.experiments} experiments (and as many A/A), horizon "
        f"{args.requests} requests x 5 shown, looks every 50 requests; {seconds:.1f} s"
    )
    print(f"{'row':<50}{'model (control)':>22}{'popularity':>22}")
    rows = [("true CTR (generator's click model)", *(f"{summary.true_ctr[a]:.4f}" for a in ARMS))]
    est = []
    for arm in ARMS:
        shown, clicked = horizon.impressions[arm], horizon.clicks[arm]
        interval = wilson(clicked, shown)
        est.append(f"{clicked / shown:.4f} [{interval.low:.3f}, {interval.high:.3f}]")
    rows.append(("estimated CTR [95% Wilson], one run to horizon", *est))
    for label, a, b in rows:
        print(f"{label:<50}{a:>22}{b:>22}")
    print(f"{'sequential test: power within the horizon':<50}{summary.power:>44.3f}")
    print(f"{'  decisions naming the better arm':<50}{summary.correct_direction:>44.3f}")
    median = "-" if summary.median_decision is None else f"{summary.median_decision:.0f}"
    print(f"{'  median impressions per arm to decision':<50}{median:>44}")
    fixed = "-" if summary.fixed_horizon is None else str(summary.fixed_horizon)
    print(f"{'fixed-horizon z-test, same power: impressions/arm':<50}{fixed:>44}")
    at80 = fixed_horizon_n(*(summary.true_ctr[a] for a in ARMS), alpha=policy.alpha, power=0.8)
    print(f"{'  (fixed-horizon z-test at 80 % power)':<50}{at80:>44}")
    print(f"{'A/A false-positive rate (alpha 0.05)':<50}{summary.aa_false_positive_rate:>44.3f}")
    stopped = (
        "not stopped" if broken.stopped_at is None else f"stopped at request {broken.stopped_at}"
    )
    print(f"{'guardrail (8 % errors on popularity, stop)':<50}{stopped:>44}")
    if args.gateway:
        run = gateway_run(args.gateway, world)
        report = run["report"]
        arms = {r["variant"]: r for r in report["arms"]}  # type: ignore[index]
        b = arms["B"]["versus_control"]
        print(
            f"{'gateway: CTR A / B, ' + str(args.gateway) + ' rankings':<50}"
            f"{arms['A']['ctr']:>22.4f}{arms['B']['ctr']:>22.4f}"
        )
        verdict = f"{b['decision']} (p {b['p_value']:.2g})"
        print(f"{'gateway: B vs control':<50}{verdict:>44}")
        print(f"{'gateway: wall time (rank + events + report)':<50}{run['seconds']:>43.1f}s")


if __name__ == "__main__":
    main()
