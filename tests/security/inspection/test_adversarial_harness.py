"""The ART harness (bench/adversarial) in a few queries, so that it cannot rot.

Real gateway processes, real HTTP, real ART attacks; only the sizes are small.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.adversarial import main


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return main(
        [
            "--runs", "2",
            "--benign", "30",
            "--clients", "3",
            "--extraction-queries", "300",
            "--hsj-iter", "2",
            "--hsj-eval", "30",
            "--zoo-iter", "3",
        ]
    )  # fmt: skip


def row(results: dict[str, Any], prefix: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in results["rows"] if r["name"].startswith(prefix))
    return found


@pytest.mark.parametrize("attack", ["HopSkipJump", "ZOO"])
def test_query_based_attacks_are_flagged_early_and_stopped_by_blocking(
    results: dict[str, Any], attack: str
) -> None:
    found = row(results, attack)
    assert found["runs"] == 2
    assert found["flagged"] == 2
    assert max(found["first_flags"]) <= 100
    assert found["success_blocked"] == 0


def test_synthetic_extraction_is_flagged_and_benign_replay_is_not(results: dict[str, Any]) -> None:
    assert row(results, "extraction, synthetic")["flagged"] == 1
    requests, flagged, refused = results["benign_flag"]
    assert requests >= 30
    assert flagged == 0
    assert refused == 0
    assert results["benign_block"][2] == 0
    assert set(results["agreement"]) == {
        f"{s}/{g}"
        for s in ("synthetic", "catalogue")
        for g in ("flag", "rounded1", "rank_only", "top1")
    }
    assert all(0.0 <= v <= 1.0 for v in results["agreement"].values())
    assert row(results, "FGSM")["runs"] == 2


def test_learned_detector_is_evaluated_at_one_percent_false_flags(results: dict[str, Any]) -> None:
    learned = results["learned"]
    assert learned["false_flag"] <= 0.011
    assert 0.0 <= learned["benign requests of 30 rows"] <= 1.0
    assert {"FGSM transferred", "HopSkipJump (mask: ids fixed)", "ZOO"} <= set(learned)
