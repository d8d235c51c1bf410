"""The A/B report of one model: per arm counts, CTR with its Wilson interval, lift and the
always-valid sequential test against the control arm, guardrails, and the series the
HTML page plots. A plain JSON-ready dict: the admin API and `gateway ab report` print
the same one."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from models.experiments.guardrails import check
from models.experiments.stats import Look, msprt_ratio, sequential, wilson
from models.experiments.store import EVENT_KINDS, ArmHealth, ArmKey, ArmStop
from models.variants import variant_label
from policies import ExperimentPolicy, Variant

Counts = Mapping[ArmKey, Mapping[str, int]]


def arm_keys(model: str, variants: Sequence[Variant], counts: Counts) -> list[ArmKey]:
    """The bundle's arms in order (labelled A, B, ...), then any other arm events name."""
    keys = [ArmKey(model, v.version, variant_label(i)) for i, v in enumerate(variants)]
    if len(keys) < 2:
        keys = []  # one variant is no split: the primary serves as arm "-"
    for arm in sorted(counts, key=lambda a: (a.variant, a.version)):
        if arm not in keys:
            keys.append(arm)
    return keys


def control_of(arms: Sequence[ArmKey], policy: ExperimentPolicy) -> ArmKey | None:
    for arm in arms:
        if policy.control is not None and arm.version == policy.control:
            return arm
    return arms[0] if arms and policy.control is None else None


def build_report(
    model: str,
    *,
    variants: Sequence[Variant],
    policy: ExperimentPolicy,
    counts: Counts,
    series: Sequence[tuple[int, Counts]],
    health: Mapping[ArmKey, ArmHealth],
    stops: Sequence[ArmStop],
    generated_ms: int,
) -> dict[str, Any]:
    arms = arm_keys(model, variants, counts)
    control = control_of(arms, policy)
    stopped = {s.arm: s for s in stops if s.arm.model == model}
    rows = []
    for arm in arms:
        kinds = {k: int(counts.get(arm, {}).get(k, 0)) for k in EVENT_KINDS}
        shown, clicks = kinds["impression"], kinds["click"]
        ctr = clicks / shown if shown else None
        interval = wilson(min(clicks, shown), shown)
        row: dict[str, Any] = {
            "version": arm.version,
            "variant": arm.variant,
            "control": arm == control,
            "impressions": shown,
            "clicks": clicks,
            "conversions": kinds["conversion"],
            "ctr": ctr,
            "ctr_interval": [interval.low, interval.high] if shown else None,
            "stopped": _stop(stopped.get(arm)),
            "guardrails": _guardrails(health.get(arm, ArmHealth()), policy),
        }
        if control is not None and arm != control:
            row["versus_control"] = _versus(control, arm, counts, series, policy)
        rows.append(row)
    return {
        "model": model,
        "generated_ms": generated_ms,
        "control": None
        if control is None
        else {"version": control.version, "variant": control.variant},
        "alpha": policy.alpha,
        "mixture_sd": policy.mixture_sd,
        "min_samples": policy.min_samples,
        "guardrail_action": policy.guardrails.action,
        "arms": rows,
        "series": _series(arms, control, series, policy),
    }


def _stop(stop: ArmStop | None) -> dict[str, Any] | None:
    return None if stop is None else {"reason": stop.reason, "ts_ms": stop.ts_ms}


def _guardrails(health: ArmHealth, policy: ExperimentPolicy) -> dict[str, Any]:
    checks = check(health, policy.guardrails)
    return {
        "served": health.served,
        "breached": [c.name for c in checks if c.breached],
        "checks": {
            c.name: {"value": c.value, "limit": c.limit, "breached": c.breached} for c in checks
        },
    }


def _look(control: ArmKey, arm: ArmKey, counts: Counts) -> Look:
    a, b = counts.get(control, {}), counts.get(arm, {})
    return Look(
        n_a=int(a.get("impression", 0)),
        clicks_a=min(int(a.get("click", 0)), int(a.get("impression", 0))),
        n_b=int(b.get("impression", 0)),
        clicks_b=min(int(b.get("click", 0)), int(b.get("impression", 0))),
    )


def _versus(
    control: ArmKey,
    arm: ArmKey,
    counts: Counts,
    series: Sequence[tuple[int, Counts]],
    policy: ExperimentPolicy,
) -> dict[str, Any]:
    now = _look(control, arm, counts)
    looks = [_look(control, arm, c) for _, c in series]
    if not looks or looks[-1] != now:
        looks.append(now)
    result = sequential(
        looks, alpha=policy.alpha, tau=policy.mixture_sd, min_samples=policy.min_samples
    )
    ctr_a = now.clicks_a / now.n_a if now.n_a else None
    ctr_b = now.clicks_b / now.n_b if now.n_b else None
    lift = (ctr_b - ctr_a) / ctr_a if ctr_a and ctr_b is not None else None
    if not result.rejected:
        decision = "continue"
    elif ctr_a is not None and ctr_b is not None and ctr_b > ctr_a:
        decision = "better"
    else:
        decision = "worse"
    return {
        "difference": None if ctr_a is None or ctr_b is None else ctr_b - ctr_a,
        "lift": lift,
        "p_value": result.p_value,
        "likelihood_ratio": result.ratio,
        "boundary": result.boundary,
        "decision": decision,
    }


def _series(
    arms: Sequence[ArmKey],
    control: ArmKey | None,
    series: Sequence[tuple[int, Counts]],
    policy: ExperimentPolicy,
) -> list[dict[str, Any]]:
    """Per look: each arm's cumulative CTR and interval, and log Lambda of each arm vs control."""
    points = []
    for ts_ms, counts in series:
        arms_at: dict[str, Any] = {}
        for arm in arms:
            shown = int(counts.get(arm, {}).get("impression", 0))
            clicks = min(int(counts.get(arm, {}).get("click", 0)), shown)
            interval = wilson(clicks, shown)
            arms_at[arm.variant] = {
                "impressions": shown,
                "ctr": clicks / shown if shown else None,
                "low": interval.low if shown else None,
                "high": interval.high if shown else None,
            }
        log_ratio: dict[str, float | None] = {}
        if control is not None:
            for arm in arms:
                if arm == control:
                    continue
                look = _look(control, arm, counts)
                ratio = (
                    msprt_ratio(
                        look.clicks_a, look.n_a, look.clicks_b, look.n_b, tau=policy.mixture_sd
                    )
                    if min(look.n_a, look.n_b) >= policy.min_samples
                    else None
                )
                log_ratio[arm.variant] = math.log(ratio) if ratio else None
        points.append({"ts_ms": ts_ms, "arms": arms_at, "log_ratio": log_ratio})
    return points
