"""Statistics of an A/B test on click-through: intervals, lift, an always-valid test.

The sequential test is the mixture sequential probability ratio test (mSPRT) of
Johari, Pekelis, Koomen and Walsh, "Always valid inference: continuous monitoring of
A/B tests" (Operations Research 70(3), 2022), for the difference of two proportions
with a normal mixture N(0, tau^2) over the difference under the alternative. With
d = CTR_B - CTR_A and its variance s^2 (pooled, which is exact under the null):

    Lambda_n = sqrt(s^2 / (s^2 + tau^2)) * exp(d^2 tau^2 / (2 s^2 (s^2 + tau^2)))

The always-valid p-value is the running minimum of min(1, 1/Lambda) over every
look; rejecting when it falls to alpha keeps the false-positive rate within alpha
however often one looks (Ville's inequality), which a fixed-horizon z-test read
every day does not. The price is more samples than a fixed-horizon test that
knew the effect size in advance; bench/ab measures both.

Impressions are treated as independent Bernoulli trials: clicks of one user are
correlated, which the simulator's ground truth does not model beyond the user's
own bias. Looks before `min_samples` impressions per arm are skipped: the plug-in
variance of a handful of impressions is not yet the variance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


def wilson(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion (good near 0 and with few trials)."""
    if trials <= 0:
        return Interval(0.0, 1.0)
    z = _NORMAL.inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def msprt_ratio(clicks_a: int, n_a: int, clicks_b: int, n_b: int, *, tau: float) -> float | None:
    """The mixture likelihood ratio Lambda of B against A; None while it is undefined
    (an empty arm, or a pooled CTR of exactly 0 or 1)."""
    if n_a <= 0 or n_b <= 0:
        return None
    pooled = (clicks_a + clicks_b) / (n_a + n_b)
    s2 = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if s2 <= 0:
        return None
    d = clicks_b / n_b - clicks_a / n_a
    t2 = tau * tau
    exponent = d * d * t2 / (2 * s2 * (s2 + t2))
    # Far past any boundary the ratio overflows a float; the decision is the same.
    return math.sqrt(s2 / (s2 + t2)) * math.exp(min(exponent, 700.0))


@dataclass(frozen=True, slots=True)
class Look:
    """The arms' cumulative counts at one look (one point of the report's series)."""

    n_a: int
    clicks_a: int
    n_b: int
    clicks_b: int


@dataclass(frozen=True, slots=True)
class SequentialResult:
    p_value: float  # always valid: the running minimum over every look
    ratio: float  # Lambda at the last look (0 before the first counted look)
    boundary: float  # 1 / alpha
    rejected: bool
    decided_at: int | None  # index of the first look whose p-value fell to alpha


def sequential(
    looks: Iterable[Look], *, alpha: float, tau: float, min_samples: int = 100
) -> SequentialResult:
    """The mSPRT over a series of looks at cumulative counts, in order."""
    p_value, ratio, decided_at = 1.0, 0.0, None
    for index, look in enumerate(looks):
        if min(look.n_a, look.n_b) < min_samples:
            continue
        found = msprt_ratio(look.clicks_a, look.n_a, look.clicks_b, look.n_b, tau=tau)
        if found is None:
            continue
        ratio = found
        p_value = min(p_value, 1.0 / found) if found > 0 else p_value
        if decided_at is None and p_value <= alpha:
            decided_at = index
    return SequentialResult(
        p_value=min(1.0, p_value),
        ratio=ratio,
        boundary=1.0 / alpha,
        rejected=decided_at is not None,
        decided_at=decided_at,
    )


def fixed_horizon_n(p_a: float, p_b: float, *, alpha: float, power: float) -> int:
    """Impressions per arm a two-sided two-proportion z-test needs for `power` at `alpha`."""
    if p_a == p_b:
        raise ValueError("no difference to detect")
    z_alpha = _NORMAL.inv_cdf(1 - alpha / 2)
    z_beta = _NORMAL.inv_cdf(power)
    pooled = (p_a + p_b) / 2
    numerator = z_alpha * math.sqrt(2 * pooled * (1 - pooled)) + z_beta * math.sqrt(
        p_a * (1 - p_a) + p_b * (1 - p_b)
    )
    return math.ceil(numerator * numerator / ((p_a - p_b) ** 2))


def z_test_p(clicks_a: int, n_a: int, clicks_b: int, n_b: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (valid at one fixed look)."""
    pooled = (clicks_a + clicks_b) / (n_a + n_b)
    s2 = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if s2 <= 0:
        return 1.0
    z = (clicks_b / n_b - clicks_a / n_a) / math.sqrt(s2)
    return 2 * (1 - _NORMAL.cdf(abs(z)))
