"""Benign populations, each over an hour of compressed time against the shipped bundle
with detection action `block` (the gateway runs in process; the bench owns its clock,
so rate limits and budget windows see the real pacing of an hour of traffic):

- `service`: one backend client ranking for 50 users through /v1/rank, 3,000 requests
  of 100 candidate items (300,000 rows in the hour);
- `drift`: feature pipelines that recompute user and item features as interactions
  arrive (the demo generator's own behaviour model: a share (--drift-share) of the
  held-out impressions happens during the hour, and the features are rebuilt with
  `build_tables` from the training impressions plus those seen so far), sending raw
  tensors;
- `catalogue`: web sessions over popular items with refreshes and pagination, the
  store's rows sent as raw tensors.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from bench.adversarial.gateways import Fleet, Oracle, RefusedError
from bench.adversarial.space import Space

HOUR = 3600.0


@dataclass
class Population:
    name: str
    requests: int = 0
    rows: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    flagged: int = 0
    note: str = ""

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    @property
    def rate(self) -> float:
        return self.refused_total / max(self.requests, 1)


class Traffic:
    """Popular-item candidates (Zipf over a random order of the catalogue)."""

    def __init__(self, space: Space, rng: np.random.Generator) -> None:
        n = space.n_items
        popularity = 1.0 / np.arange(1, n + 1) ** 1.1
        self.p = popularity / popularity.sum()
        self.order = rng.permutation(np.arange(1, n + 1))
        self.rng = rng

    def candidates(self, size: int) -> NDArray[np.int64]:
        picked = self.rng.choice(len(self.order), size=size, replace=False, p=self.p)
        return self.order[picked].astype(np.int64)


def _send(pop: Population, oracle: Oracle, call: object) -> None:
    before = oracle.tally.flagged_requests
    pop.requests += 1
    try:
        call()  # type: ignore[operator]
    except RefusedError as exc:
        pop.refused[exc.kind] = pop.refused.get(exc.kind, 0) + 1
    pop.flagged += oracle.tally.flagged_requests > before


def service(args: argparse.Namespace, space: Space, fleet: Fleet, gw: str) -> Population:
    rng = np.random.default_rng(args.seed + 20)
    clock = fleet.clock(gw)
    start = clock[0]
    pop = Population(f"service client for {args.service_users} users (/v1/rank)")
    oracle = fleet.oracle(gw, tenant="svc", sticky=False, scopes=("rank", "infer"))
    users = rng.choice(np.arange(1, space.n_users + 1), size=args.service_users, replace=False)
    traffic = Traffic(space, rng)
    gaps = rng.exponential(HOUR / args.service_requests, size=args.service_requests)
    for gap in gaps:
        clock[0] += float(gap)
        user = int(rng.choice(users))
        items = traffic.candidates(args.service_rows).tolist()
        _send(pop, oracle, lambda user=user, items=items: oracle.rank(user, items))
        pop.rows += len(items)
    clock[0] = max(clock[0], start + HOUR)
    pop.note = f"{pop.rows} rows in {(clock[0] - start) / 60:.0f} min"
    return pop


class DriftingStore:
    """User and item feature tables as a pipeline recomputes them during the hour."""

    def __init__(self, space: Space, steps: int, seed: int, share: float) -> None:
        from models.demo.data import Impressions, generate
        from models.demo.features_build import build_tables

        data = generate()
        rng = np.random.default_rng(seed)
        test = data.test
        # The held-out impressions are what happens next; `share` of them happen during
        # the hour, each at a uniform time (the others later: never seen here).
        when = rng.random(len(test)) / max(share, 1e-9)
        self.tables: list[tuple[NDArray[np.float32], NDArray[np.float32]]] = []
        for k in range(steps + 1):
            seen = when < k / steps
            window = Impressions(
                user=np.concatenate([data.train.user, test.user[seen]]),
                item=np.concatenate([data.train.item, test.item[seen]]),
                click=np.concatenate([data.train.click, test.click[seen]]),
            )
            tables = build_tables(dataclasses.replace(data, train=window))
            self.tables.append((tables.user_features, tables.item_features))
        self.steps = steps
        start_users = self.tables[0][0]
        # The pipeline at the start of the hour is the store (built from the same data).
        self.matches_store = bool(np.array_equal(start_users, space.users))
        z = (self.tables[-1][0] - space.users) / space.std[:20]
        self.user_drift = np.sqrt((z[1:] ** 2).mean(axis=1))  # RMS z per user, at the end

    def at(self, share: float) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        return self.tables[min(int(share * self.steps), self.steps)]


def drift(args: argparse.Namespace, space: Space, fleet: Fleet, gw: str) -> Population:
    rng = np.random.default_rng(args.seed + 21)
    store = DriftingStore(space, steps=12, seed=args.seed + 22, share=args.drift_share)
    clock = fleet.clock(gw)
    start = clock[0]
    pop = Population(f"drifting features ({args.drift_clients} pipelines, raw tensors)")
    users = rng.choice(np.arange(1, space.n_users + 1), size=(args.drift_clients, 5), replace=False)
    oracles = [
        fleet.oracle(gw, tenant="pipelines", sticky=False) for _ in range(args.drift_clients)
    ]
    traffic = Traffic(space, rng)
    gaps = rng.exponential(HOUR / args.drift_requests, size=args.drift_requests)
    for gap in gaps:
        clock[0] += float(gap)
        share = (clock[0] - start) / HOUR
        user_table, item_table = store.at(share)
        c = int(rng.integers(args.drift_clients))
        user = int(rng.choice(users[c]))
        items = traffic.candidates(int(rng.integers(20, 101)))
        x = np.concatenate(
            [
                np.stack([np.full(len(items), user), items], axis=1).astype(np.float32),
                np.repeat(user_table[user : user + 1], len(items), axis=0),
                item_table[items],
            ],
            axis=1,
        ).astype(np.float32)
        _send(pop, oracles[c], lambda o=oracles[c], x=x: o.scores(x))
        pop.rows += len(items)
    clock[0] = max(clock[0], start + HOUR)
    pop.note = (
        f"user rows drift from the store by RMS {np.median(store.user_drift):.2f} z median, "
        f"{np.quantile(store.user_drift, 0.95):.2f} z p95 by the end of the hour"
        + ("" if store.matches_store else " (pipeline at t=0 differs from the store!)")
    )
    return pop


def catalogue(args: argparse.Namespace, space: Space, fleet: Fleet, gw: str) -> Population:
    """Sessions: a user, 10-50 popular candidates, 1-3 pages (a refresh or the next page)."""
    rng = np.random.default_rng(args.seed + 23)
    clock = fleet.clock(gw)
    start = clock[0]
    pop = Population(f"catalogue sessions ({args.clients} clients, raw tensors of stored rows)")
    oracles = [fleet.oracle(gw, tenant="web", sticky=False) for _ in range(args.clients)]
    traffic = Traffic(space, rng)
    mean_gap = HOUR / args.benign
    while pop.requests < args.benign:
        oracle = oracles[int(rng.integers(len(oracles)))]
        user = int(rng.integers(1, space.n_users + 1))
        size = int(rng.integers(10, 51))
        candidates = traffic.candidates(size)
        for page in range(int(rng.integers(1, 4))):
            clock[0] += float(rng.exponential(mean_gap))
            if page and rng.random() < 0.5:  # next page: other candidates
                candidates = traffic.candidates(size)
            x = space.rows(np.stack([np.full(size, user), candidates], axis=1))
            _send(pop, oracle, lambda o=oracle, x=x: o.scores(x))
            pop.rows += size
    clock[0] = max(clock[0], start + HOUR)
    return pop


def run_populations(args: argparse.Namespace, space: Space, fleet: Fleet) -> list[Population]:
    out = []
    for key, make in (("service", service), ("drift", drift), ("catalogue", catalogue)):
        if key in args.only:
            out.append(make(args, space, fleet, "shipped"))
    return out
