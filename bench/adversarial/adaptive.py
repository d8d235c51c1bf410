"""Adaptive attack families (issue 16): what an attacker does once it knows a stateful
detector is there (Feng et al. 2023; Blacklight's adaptive section).

Every family is an attack (NES, score-based, or HopSkipJump, label-based) carried by a
*carrier*: how its query rows reach the gateway.

- NES: antithetic Gaussian samples around the current point (in training standard
  deviations, z), a normalised gradient step, projection onto the RMS ball of radius
  eps around the target. Score-based: it reads the served scores.
- carriers: ids fixed (the target's own pair); ids rotated over ~60 catalogue pairs
  with exact stored rows mixed in; 24 exact stored rows interleaved per attack row;
  one row per request spread over 50 credentials of one tenant; pacing (at most 7
  near-duplicates per id pair per client every 15 minutes) against a gateway in
  process whose clock the bench advances.

Targets: catalogue pairs whose label flips along the model's own gradient only after an
RMS step of 0.15-0.4 z (`space.pick_attackable`): within eps, but not for free (pairs
right on the boundary flip under any noise, so no detector could matter there).

A run is one target pair and one tenant, capped at `--tenant-queries` rows (every row
sent counts, the mixed-in exact rows too). On a refusal the adaptive attacker does not
stop: it drops that answer and goes on with fresh samples, and gives up only after
`MAX_REFUSALS` refusals in a row. Success is judged on the committed model: the
target's label flips with an RMS perturbation of at most eps, at the target's own ids.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.adversarial.gateways import ExhaustedError, Fleet, Oracle, RefusedError, Tally
from bench.adversarial.space import N_FEATURES, Space, pick_attackable, random_pairs
from bench.adversarial.standard import AttackRow

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import BlackBoxClassifier

MAX_REFUSALS = 20
PERIOD_S = 900.0  # pacing: the old detector's window

# Answers of the attack rows of one call; NaN where a request was refused (split carrier).
Send = Callable[[NDArray[np.float32]], NDArray[np.float64]]


# -- carriers -----------------------------------------------------------------------------


class Carrier:
    """Turns attack rows (z features) into requests; returns the attack rows' answers."""

    def __init__(self, space: Space, ids0: tuple[int, int], rng: np.random.Generator) -> None:
        self.space = space
        self.ids0 = np.asarray(ids0, dtype=np.float32)
        self.rng = rng
        self.anchor: NDArray[np.float32] | None = None  # one exact row in every request
        self.anchor_answer = math.nan
        # NES sends [z + s u, z - s u, (center)]: with `antithetic` set to the number of
        # pairs, a rotating carrier gives both rows of a pair the same ids, so that the
        # ids cancel out of the finite difference.
        self.antithetic = 0

    def _ids(self, pairs: NDArray[np.float32], n: int) -> NDArray[np.int64]:
        """Which of `pairs` each of n rows uses."""
        p = self.antithetic
        if p and n in (2 * p, 2 * p + 1):
            half = self.rng.integers(len(pairs), size=p)
            return np.concatenate([half, half, self.rng.integers(len(pairs), size=n - 2 * p)])
        return self.rng.integers(len(pairs), size=n)

    def __call__(self, z: NDArray[np.float32]) -> NDArray[np.float64]:
        raise NotImplementedError

    def _exact(self, n: int) -> NDArray[np.float32]:
        return self.space.rows(random_pairs(self.space, self.rng, n))

    def _send(
        self, oracle: Oracle, attack: NDArray[np.float32], extra: NDArray[np.float32]
    ) -> NDArray[np.float64]:
        """One request: attack rows and extra rows shuffled together (and the anchor)."""
        parts = [attack, extra] + ([self.anchor[None, :]] if self.anchor is not None else [])
        rows = np.concatenate(parts)
        order = self.rng.permutation(len(rows))
        answers = np.empty(len(rows))
        answers[order] = oracle.scores(rows[order])
        if self.anchor is not None:
            self.anchor_answer = float(answers[-1])
        return answers[: len(attack)]


class Fixed(Carrier):
    """The target's own ids on every row, one request per call; with `interleave`, one
    request per attack row, hidden among that many exact stored rows."""

    def __init__(
        self, oracle: Oracle, x0: NDArray[np.float32], rng: np.random.Generator, interleave: int = 0
    ) -> None:
        super().__init__(oracle.space, (int(x0[0]), int(x0[1])), rng)
        self.oracle, self.interleave = oracle, interleave

    def __call__(self, z: NDArray[np.float32]) -> NDArray[np.float64]:
        attack = self.space.from_z(self.ids0, z)
        if not self.interleave:
            return self._send(self.oracle, attack, attack[:0])
        answers = np.full(len(z), math.nan)
        for i in range(len(z)):
            try:
                answers[i] = self._send(
                    self.oracle, attack[i : i + 1], self._exact(self.interleave)
                )[0]
            except RefusedError:
                if i == len(z) - 1 and np.isnan(answers).all():
                    raise
        return answers


class Rotate(Carrier):
    """Each attack row on one of `n_pairs` catalogue id pairs, `mix` exact rows per row."""

    def __init__(
        self,
        oracle: Oracle,
        x0: NDArray[np.float32],
        rng: np.random.Generator,
        n_pairs: int,
        mix: int,
    ) -> None:
        super().__init__(oracle.space, (int(x0[0]), int(x0[1])), rng)
        self.oracle, self.mix = oracle, mix
        self.pairs = random_pairs(self.space, rng, n_pairs).astype(np.float32)

    def __call__(self, z: NDArray[np.float32]) -> NDArray[np.float64]:
        attack = self.space.from_z(self.pairs[self._ids(self.pairs, len(z))], z)
        return self._send(self.oracle, attack, self._exact(len(z) * self.mix))


class Split(Carrier):
    """One attack row per request, round robin over many credentials of one tenant;
    a credential refused once is dropped."""

    def __init__(
        self, oracles: list[Oracle], x0: NDArray[np.float32], rng: np.random.Generator
    ) -> None:
        super().__init__(oracles[0].space, (int(x0[0]), int(x0[1])), rng)
        self.oracles = oracles
        self.next = 0

    def __call__(self, z: NDArray[np.float32]) -> NDArray[np.float64]:
        answers = np.full(len(z), math.nan)
        attack = self.space.from_z(self.ids0, z)
        for i in range(len(z)):
            live = [o for o in self.oracles if not o.refused]
            if not live:
                raise RefusedError(0, "every credential refused")
            oracle = live[self.next % len(live)]
            self.next += 1
            try:
                answers[i] = oracle.scores(attack[i : i + 1])[0]
            except RefusedError:
                oracle.refused = True
        if np.isnan(answers).all():
            raise RefusedError(0, "all refused")
        return answers


class Paced(Rotate):
    """Rotate, with at most `per_pair` rows per id pair in each `period_s`: when every pair
    is used up, the bench advances the gateway's clock to the next period."""

    def __init__(
        self,
        oracle: Oracle,
        x0: NDArray[np.float32],
        rng: np.random.Generator,
        n_pairs: int,
        mix: int,
        clock: list[float],
        per_pair: int = 7,
        period_s: float = PERIOD_S,
    ) -> None:
        super().__init__(oracle, x0, rng, n_pairs, mix)
        self.clock, self.per_pair, self.period_s = clock, per_pair, period_s
        self.used = np.zeros(n_pairs, dtype=np.int64)
        self.period_start = clock[0]

    def __call__(self, z: NDArray[np.float32]) -> NDArray[np.float64]:
        chosen = self._allot(len(z))
        if chosen is None:  # this period's allowance is spent: wait for the next one
            self.clock[0] = self.period_start + self.period_s
            self.period_start = self.clock[0]
            self.used[:] = 0
            chosen = self._allot(len(z))
            if chosen is None:
                raise ValueError(f"{len(z)} rows never fit {self.per_pair} per pair")
        np.add.at(self.used, chosen, 1)
        self.clock[0] += 2.0  # requests of one session are seconds apart
        attack = self.space.from_z(self.pairs[chosen], z)
        return self._send(self.oracle, attack, self._exact(len(z) * self.mix))

    def _allot(self, n: int) -> NDArray[np.int64] | None:
        """Pairs for n rows within what is left of each pair's allowance (antithetic
        rows in twos on one pair), or None."""
        left = np.maximum(self.per_pair - self.used, 0)
        p = (
            self.antithetic
            if self.antithetic and n in (2 * self.antithetic, 2 * self.antithetic + 1)
            else 0
        )
        twos = np.repeat(np.arange(len(self.pairs)), left // 2)
        if len(twos) < p:
            return None
        half = self.rng.choice(twos, size=p, replace=False)
        left = left - 2 * np.bincount(half, minlength=len(self.pairs))
        ones = np.repeat(np.arange(len(self.pairs)), left)
        if len(ones) < n - 2 * p:
            return None
        rest = self.rng.choice(ones, size=n - 2 * p, replace=False)
        return np.concatenate([half, half, rest]).astype(np.int64)


# -- NES -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NesConfig:
    sigma: float = 0.05  # sampling scale (z); 0.3: "random noise on every query"
    pairs: int = 10  # antithetic pairs per iteration
    lr: float = 0.05  # RMS step (z)
    center: bool = True  # query the current point too (an exact progress check)
    stop: float = 0.5  # without the center: stop when the smoothed margin is below -stop
    # With the center: stop when its margin is past the threshold by this much (ids
    # rotated: the center is on someone else's ids, which move the logit a little).
    overshoot: float = 0.0
    patience: int = 25  # give up after this many answered iterations without progress


def nes(
    space: Space,
    x0: NDArray[np.float32],
    send: Send,
    cfg: NesConfig,
    eps: float,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """Returns the final point (a full row at the target's ids); truth decides success."""
    z0 = space.z(x0)[0]
    lo = ((space.lo[2:] - space.mean) / space.std).astype(np.float32)
    hi = ((space.hi[2:] - space.mean) / space.std).astype(np.float32)
    z = z0.copy()
    if isinstance(send, Carrier):
        send.antithetic = cfg.pairs
    refusals = 0
    best, stale = math.inf, 0
    try:
        # Which side of the threshold the target is on: one exact stored row (benign).
        while True:
            try:
                side = 1.0 if space.margin(send(z0[None, :]))[0] > 0 else -1.0
                break
            except RefusedError:
                refusals += 1
                if refusals >= MAX_REFUSALS:
                    return x0.copy()
        while True:
            u = rng.standard_normal((cfg.pairs, N_FEATURES)).astype(np.float32)
            batch = [z + cfg.sigma * u, z - cfg.sigma * u] + ([z[None, :]] if cfg.center else [])
            try:
                answers = send(np.concatenate(batch))
            except RefusedError:
                refusals += 1
                if refusals >= MAX_REFUSALS:
                    break
                continue
            refusals = 0
            margin = space.margin(answers)
            p = cfg.pairs
            loss = side * margin
            if cfg.center and not math.isnan(loss[-1]) and loss[-1] < -cfg.overshoot:
                break  # the served label flipped at the current point
            current = float(loss[-1]) if cfg.center else float(np.nanmean(loss[: 2 * p]))
            if not cfg.center and current < -cfg.stop:
                break
            if current < best - 1e-3:
                best, stale = current, 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break  # stuck (on the eps ball, or answers that carry no gradient)
            diff = loss[:p] - loss[p : 2 * p]
            keep = ~np.isnan(diff)
            if not keep.any():
                continue
            g = (diff[keep, None] * u[keep]).sum(0) / (2 * keep.sum() * cfg.sigma)
            rms = float(np.sqrt((g * g).mean()))
            if rms == 0.0:
                continue
            z = z - cfg.lr * g / rms
            d = z - z0
            r = float(np.sqrt((d * d).mean()))
            if r > eps * 0.98:
                z = z0 + d * (eps * 0.98 / r)
            z = np.clip(z, lo, hi)
    except ExhaustedError:
        pass
    return space.from_z(np.asarray([x0[0], x0[1]], dtype=np.float32), z)[0]


# -- HopSkipJump, label only, ids rotated ---------------------------------------------------


def hsj_rotated(
    args: argparse.Namespace,
    space: Space,
    carrier: Carrier,
    x0: NDArray[np.float32],
    *,
    rank_only: bool,
) -> NDArray[np.float32] | None:
    """ART HopSkipJump over the 40 features; each query row on a rotated id pair. With
    `rank_only` answers, the label is "ranked above the pivot" (a catalogue row near
    the median, found once from one request of 100 catalogue rows)."""
    lo, span = space.lo[2:], np.maximum(space.hi[2:] - space.lo[2:], 1e-6)

    def predict(u: NDArray[np.float32]) -> NDArray[np.float32]:
        feats = lo + np.atleast_2d(u) * span
        z = (feats - space.mean) / space.std
        answers = carrier(z.astype(np.float32))
        # rank_only: rank 1 is the best, so "above the pivot" is a smaller rank.
        above = answers < carrier.anchor_answer if rank_only else answers > space.threshold
        return np.eye(2, dtype=np.float32)[above.astype(np.int64)]

    try:
        if rank_only:
            probe = carrier._exact(100)
            ranks = carrier.oracle.scores(probe)  # type: ignore[attr-defined]
            carrier.anchor = probe[int(np.argsort(ranks)[len(ranks) // 2])]
        attack = HopSkipJump(
            BlackBoxClassifier(predict, (N_FEATURES,), 2, clip_values=(0.0, 1.0)),
            targeted=False,
            max_iter=args.hsj_iter,
            max_eval=args.hsj_eval,
            init_eval=min(20, args.hsj_eval),
            init_size=100,
            batch_size=64,
            verbose=False,
        )
        u0 = ((x0[2:] - lo) / span).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            u_adv = np.asarray(attack.generate(u0[None, :]), dtype=np.float32)[0]
    except (RefusedError, ExhaustedError):
        return None
    adv = x0.copy()
    adv[2:] = lo + u_adv * span
    return adv


# -- families -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    key: str
    name: str
    open_gateway: str
    block_gateway: str
    run: Callable[
        [argparse.Namespace, Space, Fleet, str, NDArray[np.float32], Tally, np.random.Generator],
        NDArray[np.float32] | None,
    ]


def _nes_fixed(cfg: NesConfig, interleave: int = 0) -> Callable[..., Any]:
    def run(
        args: argparse.Namespace,
        space: Space,
        fleet: Fleet,
        gw: str,
        x0: NDArray[np.float32],
        tally: Tally,
        rng: np.random.Generator,
    ) -> NDArray[np.float32]:
        oracle = fleet.oracle(gw, tally=tally, tenant=f"t{rng.integers(1 << 30)}", sticky=False)
        return nes(space, x0, Fixed(oracle, x0, rng, interleave), cfg, args.eps, rng)

    return run


def _nes_rotate(cfg: NesConfig) -> Callable[..., Any]:
    def run(
        args: argparse.Namespace,
        space: Space,
        fleet: Fleet,
        gw: str,
        x0: NDArray[np.float32],
        tally: Tally,
        rng: np.random.Generator,
    ) -> NDArray[np.float32]:
        oracle = fleet.oracle(gw, tally=tally, tenant=f"t{rng.integers(1 << 30)}", sticky=False)
        carrier = Rotate(oracle, x0, rng, args.rotate_pairs, args.mix)
        return nes(space, x0, carrier, cfg, args.eps, rng)

    return run


def _nes_split(cfg: NesConfig) -> Callable[..., Any]:
    def run(
        args: argparse.Namespace,
        space: Space,
        fleet: Fleet,
        gw: str,
        x0: NDArray[np.float32],
        tally: Tally,
        rng: np.random.Generator,
    ) -> NDArray[np.float32]:
        tenant = f"t{rng.integers(1 << 30)}"
        oracles = [
            fleet.oracle(gw, tally=tally, tenant=tenant, sticky=True)
            for _ in range(args.credentials)
        ]
        return nes(space, x0, Split(oracles, x0, rng), cfg, args.eps, rng)

    return run


def _nes_paced(cfg: NesConfig) -> Callable[..., Any]:
    def run(
        args: argparse.Namespace,
        space: Space,
        fleet: Fleet,
        gw: str,
        x0: NDArray[np.float32],
        tally: Tally,
        rng: np.random.Generator,
    ) -> NDArray[np.float32]:
        oracle = fleet.oracle(gw, tally=tally, tenant=f"t{rng.integers(1 << 30)}", sticky=False)
        carrier = Paced(oracle, x0, rng, args.paced_pairs, args.mix, fleet.clock(gw))
        return nes(space, x0, carrier, cfg, args.eps, rng)

    return run


def _hsj_rotate(rank_only: bool) -> Callable[..., Any]:
    def run(
        args: argparse.Namespace,
        space: Space,
        fleet: Fleet,
        gw: str,
        x0: NDArray[np.float32],
        tally: Tally,
        rng: np.random.Generator,
    ) -> NDArray[np.float32] | None:
        oracle = fleet.oracle(gw, tally=tally, tenant=f"t{rng.integers(1 << 30)}", sticky=True)
        carrier = Rotate(oracle, x0, rng, args.rotate_pairs, args.mix)
        return hsj_rotated(args, space, carrier, x0, rank_only=rank_only)

    return run


def families(args: argparse.Namespace) -> list[Family]:
    plain = NesConfig(sigma=0.05, pairs=args.nes_pairs, lr=args.nes_lr)
    rotated = NesConfig(sigma=0.05, pairs=args.nes_pairs, lr=args.nes_lr, overshoot=0.3)
    noisy = NesConfig(sigma=0.3, pairs=args.nes_pairs, lr=args.nes_lr, center=False)
    return [
        Family("nes", "NES, ids fixed (sigma 0.05)", "flag", "block", _nes_fixed(plain)),
        Family(
            "nes-noise",
            "NES, random noise sigma 0.3 on every query",
            "flag",
            "block",
            _nes_fixed(noisy),
        ),
        Family(
            "nes-rotate",
            f"NES, ids rotated over {args.rotate_pairs} pairs + {args.mix} exact row(s) per row",
            "flag",
            "block",
            _nes_rotate(rotated),
        ),
        Family(
            "hsj-rotate", "HopSkipJump (label), ids rotated", "flag", "block", _hsj_rotate(False)
        ),
        Family(
            "hsj-rotate-rank",
            "HopSkipJump (label), ids rotated, rank_only output",
            "rank_only",
            "rank_only_block",
            _hsj_rotate(True),
        ),
        Family(
            "interleave",
            f"NES, {args.interleave} exact stored rows interleaved per attack row",
            "flag",
            "block",
            _nes_fixed(plain, args.interleave),
        ),
        Family(
            "multi-client",
            f"NES split over {args.credentials} credentials of one tenant",
            "flag",
            "block",
            _nes_split(plain),
        ),
        Family(
            "paced",
            f"NES paced over {args.paced_pairs} id pairs: 7 near-duplicates per id pair per "
            "client every 15 min (clock injected)",
            "flag_clock",
            "block_clock",
            _nes_paced(rotated),
        ),
    ]


def run_families(args: argparse.Namespace, space: Space, fleet: Fleet) -> list[AttackRow]:
    rows: list[AttackRow] = []
    targets = pick_attackable(space, np.random.default_rng(args.seed + 10), args.adaptive_runs)
    for family in families(args):
        if family.key not in args.only:
            continue
        row = AttackRow(family.name, family="adaptive")
        for n, (user, item) in enumerate(targets):
            x0 = space.x(user, item)
            rng = np.random.default_rng([args.seed, n, len(rows)])
            tally = Tally(args.tenant_queries)
            adv = family.run(args, space, fleet, family.open_gateway, x0, tally, rng)
            row.runs += 1
            row.queries.append(tally.rows)
            row.success_open += space.success(x0, adv, args.eps)
            if tally.first_flag is not None:
                row.flagged += 1
                row.first_flags.append(tally.first_flag)
            blocked = Tally(args.tenant_queries)
            rng = np.random.default_rng([args.seed, n, len(rows)])
            adv_b = family.run(args, space, fleet, family.block_gateway, x0, blocked, rng)
            row.blocked_queries.append(blocked.rows)
            row.success_blocked += space.success(x0, adv_b, args.eps)
        rows.append(row)
    return rows
