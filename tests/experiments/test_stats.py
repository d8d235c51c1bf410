"""The statistics, against outside oracles, and the sequential test's guarantee measured:
its false-positive rate over a few hundred seeded A/A experiments, looked at again and
again, stays within alpha (where the naive repeated z-test's does not), and it finds a
real difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from models.experiments.stats import (
    Look,
    fixed_horizon_n,
    msprt_ratio,
    sequential,
    wilson,
    z_test_p,
)

ALPHA, TAU = 0.05, 0.05


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
# method 3 (Wilson score, no continuity correction).
@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombes_table(
    successes: int, trials: int, low: float, high: float
) -> None:
    interval = wilson(successes, trials)
    assert (round(interval.low, 4), round(interval.high, 4)) == (low, high)


@pytest.mark.parametrize(("ca", "na", "cb", "nb"), [(100, 1000, 130, 1000), (50, 400, 41, 600)])
def test_msprt_ratio_is_the_mixture_integral(ca: int, na: int, cb: int, nb: int) -> None:
    """Oracle: integrate the Gaussian likelihood ratio over the N(0, tau^2) mixture."""
    pooled = (ca + cb) / (na + nb)
    s = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    d = cb / nb - ca / na

    def integrand(theta: float) -> float:
        ratio = stats.norm.pdf(d, theta, s) / stats.norm.pdf(d, 0, s)
        return float(ratio * stats.norm.pdf(theta, 0, TAU))

    expected, _ = integrate.quad(integrand, -1, 1, points=[0.0, d], limit=200)
    assert msprt_ratio(ca, na, cb, nb, tau=TAU) == pytest.approx(expected, rel=1e-6)


def test_z_test_and_sample_size_agree_with_scipy() -> None:
    table = np.array([[130, 870], [100, 900]])
    _chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    assert z_test_p(100, 1000, 130, 1000) == pytest.approx(p, rel=1e-9)
    # The sample size gives the power it promises (normal approximation, scipy's quantiles).
    n = fixed_horizon_n(0.10, 0.12, alpha=ALPHA, power=0.8)
    se = math.sqrt(0.10 * 0.90 / n + 0.12 * 0.88 / n)
    z = stats.norm.ppf(1 - ALPHA / 2) * math.sqrt(2 * 0.11 * 0.89 / n) / se
    assert stats.norm.sf(z - 0.02 / se) == pytest.approx(0.8, abs=0.002)


def _paths(
    rng: np.random.Generator, sims: int, n: int, p_a: float, p_b: float
) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.cumsum(rng.random((sims, n)) < p_a, axis=1),
        np.cumsum(rng.random((sims, n)) < p_b, axis=1),
    )


LOOK_EVERY, HORIZON, SIMS = 100, 10_000, 300


def _looks(clicks_a: np.ndarray, clicks_b: np.ndarray) -> list[Look]:
    return [
        Look(n, int(clicks_a[n - 1]), n, int(clicks_b[n - 1]))
        for n in range(LOOK_EVERY, HORIZON + 1, LOOK_EVERY)
    ]


def test_the_false_positive_rate_over_seeded_aa_experiments_stays_within_alpha() -> None:
    rng = np.random.default_rng(20261127)
    a, b = _paths(rng, SIMS, HORIZON, 0.1, 0.1)
    sequential_fp = naive_fp = 0
    for sim in range(SIMS):
        looks = _looks(a[sim], b[sim])
        sequential_fp += sequential(looks, alpha=ALPHA, tau=TAU).rejected
        # What the always-valid test protects against: a z-test read at every look.
        naive_fp += any(z_test_p(x.clicks_a, x.n_a, x.clicks_b, x.n_b) < ALPHA for x in looks)
    assert sequential_fp / SIMS <= ALPHA
    # The same data, peeked at 100 times with a fixed-horizon test: far above alpha.
    assert naive_fp / SIMS > 3 * ALPHA


def test_it_detects_a_real_difference_and_stops_early() -> None:
    rng = np.random.default_rng(7)
    a, b = _paths(rng, 100, HORIZON, 0.10, 0.13)
    results = [sequential(_looks(a[s], b[s]), alpha=ALPHA, tau=TAU) for s in range(100)]
    detected = [r for r in results if r.rejected]
    assert len(detected) >= 90
    stops = [(r.decided_at + 1) * LOOK_EVERY for r in detected if r.decided_at is not None]
    # Early: the median decision comes well before the horizon.
    assert float(np.median(stops)) < HORIZON / 2
    # And it says which way: B is better in every detection.
    assert all(r.ratio > r.boundary or r.p_value <= ALPHA for r in detected)


def test_undefined_looks_are_skipped_not_decided() -> None:
    assert msprt_ratio(0, 100, 0, 100, tau=TAU) is None
    assert msprt_ratio(0, 0, 1, 10, tau=TAU) is None
    few = sequential([Look(10, 0, 10, 9)], alpha=ALPHA, tau=TAU, min_samples=100)
    assert (few.rejected, few.p_value) == (False, 1.0)
