"""The A/B simulator against a real gateway: the demo world's users rank through
`POST /v1/rank`, are shown the top items of the arm that served them, click by the
generator's ground truth, and report it through `POST /v1/events`; the verdict is the
gateway's own report (`GET /v1/admin/experiments/demo-ranker`).

`prepare` turns an initialised data directory into a two-arm experiment: version "2"
of demo-ranker is the popularity-only ONNX model (models.experiments.sim), packaged,
encrypted and signed like any other version, and the policy bundle (re-hashed and
re-signed with the data directory's policy key) splits users 50/50 between "1" (the
trained model, the control) and "2". Used by bench/ab and tests/experiments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from gateway.datadir import MODEL_SIGNING_KEY
from models.demo.features_build import build_tables
from models.demo_package import demo_stats
from models.experiments.sim import World, popularity_model_bytes
from models.pack import pack_model
from policies.bundle import rehash
from policies.signing import sign_bundle
from security.keyring import open_keyring

ONE_ARM = """    variants:
      - {version: "1", weight: 1.0}"""
TWO_ARMS = """    variants:
      - {version: "1", weight: 0.5}
      - {version: "2", weight: 0.5}"""
# One shop service sends every simulated user's rankings: it gets a shop's rate limit.
RATE = (
    "rate_limits: {per_client_rps: 50, burst: 100}",
    "rate_limits: {per_client_rps: 10000, burst: 10000}",
)
BUDGET = (
    # The shipped budgets (per client, per subject, per tenant), all lifted.
    "  default: [{window_seconds: 3600, max_queries: 400000}, "
    "{window_seconds: 86400, max_queries: 2000000}]\n"
    "  per_subject: [{window_seconds: 3600, max_queries: 10000}, "
    "{window_seconds: 86400, max_queries: 100000}]\n"
    "  per_tenant: [{window_seconds: 3600, max_queries: 1000000}, "
    "{window_seconds: 86400, max_queries: 4000000}]\n",
    "  default: {window_seconds: 3600, max_queries: 10000000}\n",
)


def edit_policy(data_dir: Path, old: str, new: str) -> None:
    """Change the installed bundle's data.yaml, then re-hash and re-sign it."""
    bundle = data_dir / "policy"
    path = bundle / "data.yaml"
    text = path.read_text()
    if old not in text:
        raise ValueError("the installed bundle does not have the expected text")
    path.write_text(text.replace(old, new, 1))
    (bundle / "bundle.sig").unlink(missing_ok=True)
    rehash(bundle)
    sign_bundle(bundle, (data_dir / "keys/policy-signing.key").read_text().strip())


def prepare(data_dir: Path, world: World, *edits: tuple[str, str]) -> None:
    pack_model(
        popularity_model_bytes(build_tables(world.data)),
        name="demo-ranker",
        version="2",
        root=data_dir / "models",
        keyring=open_keyring(data_dir / "keys"),
        signing_key=data_dir / MODEL_SIGNING_KEY,
        feature_stats=demo_stats(data_dir / "demo/features.npz"),
    )
    for old, new in ((ONE_ARM, TWO_ARMS), RATE, BUDGET, *edits):
        edit_policy(data_dir, old, new)


@dataclass
class Played:
    rankings: int = 0
    impressions: int = 0
    clicks: int = 0
    by_variant: dict[str, int] = field(default_factory=dict)


def play(
    api: TestClient,
    world: World,
    headers: dict[str, str],
    *,
    users: int,
    rankings: int,
    candidates: int = 20,
    shown: int = 5,
    seed: int = 11,
    on_round: Callable[[int], None] | None = None,
) -> Played:
    """`users` distinct users (consenting to personalization and analytics) make
    `rankings` rankings in all; every shown item is an impression, clicks are drawn
    from the world's click probability of that user and item."""
    rng = np.random.default_rng(seed)
    who = rng.choice(world.data.n_users, size=users, replace=False)
    consents = {
        "consents": [
            {"purpose": "personalization", "granted": True},
            {"purpose": "analytics", "granted": True},
        ]
    }
    for index in who:
        answer = api.put(
            f"/v1/subjects/{world.data.user_ids[index]}/consent", json=consents, headers=headers
        )
        _expect(answer.status_code == 200, answer)
    played = Played()
    for round_ in range(rankings):
        user = int(who[round_ % users])
        keys = world.log_pop - np.log(-np.log(rng.random(world.data.n_items)))
        offered = np.argsort(-keys)[:candidates]
        body = {
            "user_id": world.data.user_ids[user],
            "item_ids": [world.data.item_ids[i] for i in offered],
            "top_k": shown,
        }
        ranked = api.post("/v1/rank", json=body, headers=headers)
        _expect(ranked.status_code == 200, ranked)
        result: dict[str, Any] = ranked.json()
        items = [int(item["item_id"][1:]) - 1 for item in result["items"]]
        p = world.click_probability(np.full(len(items), user), np.array(items))
        clicked = rng.random(len(items)) < p
        events = [{"type": "impression", "item_id": world.data.item_ids[i]} for i in items]
        events += [
            {"type": "click", "item_id": world.data.item_ids[i]}
            for i, hit in zip(items, clicked, strict=True)
            if hit
        ]
        sent = api.post(
            "/v1/events",
            json={"request_id": result["request_id"], "user_id": body["user_id"], "events": events},
            headers=headers,
        )
        _expect(sent.status_code == 202, sent)
        played.rankings += 1
        played.impressions += len(items)
        played.clicks += int(clicked.sum())
        variant = result["model"].get("variant", "-")
        played.by_variant[variant] = played.by_variant.get(variant, 0) + 1
        if on_round is not None:
            on_round(round_)
    return played


def _expect(ok: bool, response: Any) -> None:
    if not ok:
        raise RuntimeError(f"gateway answered {response.status_code}: {response.text[:300]}")
