"""The attack harness (bench/adversarial) in a few queries, so that it cannot rot.

Real gateway processes and in-process apps with an injected clock, real HTTP, real ART
and NES attacks, the real benign populations; only the sizes are small.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.adversarial import main
from bench.adversarial.gateways import LIFTED_RATE, LIFTED_ROWS, lift_limits

CAP = 800


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return main(
        [
            "--quick",
            "--runs", "2",
            "--adaptive-runs", "1",
            "--tenant-queries", str(CAP),
            "--benign", "40",
            "--clients", "3",
            "--extraction-queries", "300",
            "--extraction-sizes", "200,400",
            "--hsj-iter", "4",
            "--hsj-eval", "60",
            "--zoo-iter", "3",
            "--service-requests", "60",
            "--service-users", "5",
            "--drift-requests", "40",
            "--drift-clients", "2",
            "--only", "hsj,zoo,extraction,benign,nes,nes-noise,nes-rotate,interleave,"
            "multi-client,paced,hsj-rotate-rank,service,drift,catalogue,curve",
        ]
    )  # fmt: skip


def row(results: dict[str, Any], prefix: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in results["rows"] if r["name"].startswith(prefix))
    return found


@pytest.mark.parametrize(
    ("attack", "within"), [("HopSkipJump (mask", 100), ("ZOO", 100), ("NES, ids fixed", 400)]
)
def test_plain_query_attacks_are_flagged_early_and_stopped_by_blocking(
    results: dict[str, Any], attack: str, within: int
) -> None:
    found = row(results, attack)
    expected = 1 if attack.startswith("NES") else 2
    assert found["runs"] == expected
    assert found["flagged"] == expected
    assert max(found["first_flags"]) <= within
    assert found["success_blocked"] == 0


def test_every_adaptive_family_ran_within_the_tenant_cap(results: dict[str, Any]) -> None:
    adaptive = [r for r in results["rows"] if r["family"] == "adaptive"]
    names = " | ".join(r["name"] for r in adaptive)
    for part in ("noise", "ids rotated", "interleaved", "credentials", "paced", "rank_only"):
        assert part in names
    for r in adaptive:
        assert r["runs"] == 1
        assert 0 < max(r["queries"]) <= CAP
        assert max(r["blocked_queries"]) <= CAP
        assert r["success_open"] in (0, 1)
        assert r["success_blocked"] in (0, 1)


def test_synthetic_extraction_is_flagged_and_benign_replay_is_not(results: dict[str, Any]) -> None:
    assert row(results, "extraction, synthetic")["flagged"] == 1
    requests, flagged, refused = results["benign_flag"]
    assert requests >= 40
    assert flagged == 0
    assert refused == 0
    assert results["benign_block"][2] == 0


def test_benign_populations_are_measured_and_exact_rows_pass(results: dict[str, Any]) -> None:
    pops = {p["name"].split(" ")[0]: p for p in results["populations"]}
    assert set(pops) == {"service", "drifting", "catalogue"}
    assert pops["service"]["requests"] == 60
    assert pops["service"]["rows"] == 60 * 100
    assert pops["drifting"]["requests"] == 40
    assert "drift from the store" in pops["drifting"]["note"]
    # Exact stored rows over an hour, as shipped with blocking: never refused.
    assert pops["catalogue"]["rate"] == 0.0


def test_extraction_curves_cover_each_hardening(results: dict[str, Any]) -> None:
    curves = {c["gateway"]: c for c in results["curves"]}
    # "perturbed" and "clean" too where the bundle has the keyed score perturbation and
    # the watermark (the control row: a surrogate of unwatermarked answers).
    assert {"flag", "rounded1", "rank_only", "top1"} <= set(curves) <= {
        "flag",
        "perturbed",
        "rounded1",
        "rank_only",
        "top1",
        "clean",
    }
    for c in curves.values():
        assert c["sizes"] == [200, 400]
        assert all(-1.0 <= s <= 1.0 for s in c["spearman"])
        assert all(0.0 <= a <= 1.0 for a in c["agreement"])
    # Full scores teach a surrogate more than one named row per request does.
    assert curves["flag"]["spearman"][-1] > curves["top1"]["spearman"][-1] + 0.2


def test_limits_are_lifted_whatever_their_shape() -> None:
    data: dict[str, Any] = {
        "rate_limits": {"per_client_rps": 50, "burst": 100, "per_tenant": {"rps": 5, "burst": 9}},
        "query_budgets": {
            "default": {"window_seconds": 3600, "max_queries": 10_000},
            "per_subject": {"window_seconds": 86_400, "max_queries": 300},
            "per_tenant": [
                {"window_seconds": 3600, "max_queries": 10},
                {"window_seconds": 86_400, "max_queries": 20},
            ],
        },
        "detection": {"history": 128},
    }
    lift_limits(data)
    assert data["rate_limits"] == {
        "per_client_rps": LIFTED_RATE,
        "burst": LIFTED_RATE * 10,
        "per_tenant": {"rps": LIFTED_RATE, "burst": LIFTED_RATE * 10},
    }
    assert data["query_budgets"]["default"] == {"window_seconds": 3600, "max_queries": LIFTED_ROWS}
    assert data["query_budgets"]["per_subject"]["max_queries"] == LIFTED_ROWS
    assert [b["max_queries"] for b in data["query_budgets"]["per_tenant"]] == [LIFTED_ROWS] * 2
    assert [b["window_seconds"] for b in data["query_budgets"]["per_tenant"]] == [3600, 86_400]
    assert data["detection"] == {"history": 128}
