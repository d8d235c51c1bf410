"""Many boxes: gateway replicas behind a real nginx, sharing one PostgreSQL and one Redis.

What must hold when a deployment scales out (issue 18, "Many boxes"):
1. replicas that share configuration and keys accept each other's tokens, whatever
   address each listens on (the issuer URL is configuration, not the listen address),
   and refuse a token signed by a key they do not share;
2. load through the balancer spreads over every replica, and a client's rate limit holds
   across them (a client limited to N requests/s gets about N through, not N per replica);
3. a replica killed (SIGKILL) mid-load loses nothing acknowledged: every request a
   gateway answered, allowed or refused, has its record, with the status its client got,
   in the one audit log; the log verifies (`gateway audit verify`), and an export of it
   verifies offline (`gateway audit verify-bundle`) with every one of those records in it.

Real processes throughout: `gateway serve` per replica (each with its own copy of one
initialised data directory), nginx from Debian's package, the shared PostgreSQL
(127.0.0.1:5432, fresh schemas per run) and Redis (127.0.0.1:6379, a key prefix per run).
Without nginx, PostgreSQL or Redis the tests skip, loudly. The tests run in file order on
one deployment (the last one kills a replica); each also runs alone.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from audit.keys import load_signer
from gateway.datadir import AUDIT_SIGNING_KEY, InitReport
from gateway.settings import load_settings
from security.issuer import EmbeddedIssuer, create_signing_key, load_signing_key
from tests.deploy._replicas import (
    NGINX,
    NO_NGINX,
    Answer,
    Balancer,
    Load,
    Replica,
    SharedStores,
    bundle_records,
    deployment,
    gateway_cli,
    get_token,
    set_client_limits,
    unreachable_stores,
)
from tests.deploy.conftest import remember_skip

# Per client, across every replica (the bundle's rate_limits): low enough that the load
# below offers several times what every replica's own bucket together would let through.
RATE_RPS = 10.0
BURST = 10
LOAD_S = 3.0
LOAD_THREADS = 6
DISCOVERY = "/.well-known/oauth-authorization-server"


@dataclass
class Deployed:
    balancer: Balancer
    replicas: list[Replica]
    source: Path  # the data directory every replica's is a copy of
    secrets: dict[str, str]
    workdir: Path
    started_ms: int
    answers: list[Answer] = field(default_factory=list)  # every request any test sent


@pytest.fixture(scope="module")
def deployed(
    request: pytest.FixtureRequest,
    initialised: InitReport,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    if NGINX is None:
        _skip_loudly(request, NO_NGINX)
    why = unreachable_stores()
    if why is not None:
        _skip_loudly(request, f"{why}: replicas behind a load balancer NOT TESTED")
    workdir = tmp_path_factory.mktemp("replicas")
    source = Path(shutil.copytree(initialised.data_dir, workdir / "source"))
    set_client_limits(source, RATE_RPS, BURST, max_queries=1_000_000_000)
    secrets = {
        client: (source / "clients" / f"{client}.secret").read_text().strip()
        for client in ("demo", "operator")
    }
    started_ms = int(time.time() * 1000) - 1_000
    starting = time.monotonic()
    with deployment(source, workdir, SharedStores(), count=2) as (balancer, replicas):
        print(f"{len(replicas)} replicas and nginx ready in {time.monotonic() - starting:.1f} s")
        yield Deployed(balancer, replicas, source, secrets, workdir, started_ms)


def _skip_loudly(request: pytest.FixtureRequest, reason: str) -> NoReturn:
    remember_skip(request.config, reason)
    print(f"WARNING: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _stranger_token(deployed: Deployed) -> str:
    """The same issuer URL, client and claims, signed by a key this deployment lacks."""
    settings = load_settings(data_dir=deployed.source, config_file=deployed.source / "gateway.toml")
    key_file = deployed.workdir / "stranger-issuer.pem"
    create_signing_key(key_file)
    issuer = EmbeddedIssuer(
        settings.issuer, issuer_url=settings.issuer_url, signing_key=load_signing_key(key_file)
    )
    client = issuer.client("demo")
    assert client is not None
    token: str = issuer.mint(client, None)["access_token"]
    return token


def test_replicas_accept_each_others_tokens(deployed: Deployed) -> None:
    a, b = deployed.replicas[:2]
    assert a.port != b.port
    rank = {"user_id": "u1", "item_ids": ["i1", "i2", "i3"]}
    with httpx.Client(timeout=10) as http:
        metadata = [http.get(f"{r.url}{DISCOVERY}").json() for r in (a, b)]
        jwks = [http.get(f"{r.url}/.well-known/jwks.json").json() for r in (a, b)]
        # One issuer, named by configuration: neither replica's own address.
        assert metadata[0]["issuer"] == metadata[1]["issuer"]
        assert a.address not in metadata[0]["issuer"]
        assert b.address not in metadata[0]["issuer"]
        assert jwks[0] == jwks[1]
        for minted_by, used_on in ((a, b), (b, a)):
            token = get_token(minted_by.url, "demo", deployed.secrets["demo"])
            response = http.post(
                f"{used_on.url}/v1/rank", json=rank, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200, response.text
            deployed.answers.append(Answer.of(response, used_on.address))
        # Sharing the issuer URL is not sharing trust: another key's token is refused.
        stranger = _stranger_token(deployed)
        for replica in (a, b):
            response = http.post(
                f"{replica.url}/v1/rank", json=rank, headers={"Authorization": f"Bearer {stranger}"}
            )
            assert response.status_code == 401, response.text
            deployed.answers.append(Answer.of(response, replica.address))


def test_load_spreads_over_replicas_and_the_rate_limit_is_global(deployed: Deployed) -> None:
    token = get_token(deployed.balancer.url, "demo", deployed.secrets["demo"])
    with Load(deployed.balancer.url, token, "spread", threads=LOAD_THREADS) as load:
        time.sleep(LOAD_S)
    answers = load.answers
    deployed.answers.extend(answers)
    statuses = Counter(x.status for x in answers)
    assert set(statuses) <= {200, 429}, statuses
    served = Counter(x.upstream for x in answers)
    addresses = {r.address for r in deployed.replicas}
    assert set(served) == addresses, served
    # Round-robin: each replica answered a fair share, not a trickle.
    assert min(served.values()) >= 0.3 * len(answers), served
    allowed = [x for x in answers if x.status == 200]
    elapsed = max(x.ended for x in answers) - min(x.started for x in answers)
    one_bucket = BURST + RATE_RPS * elapsed
    figures = (
        f"{len(answers)} requests in {elapsed:.1f} s ({len(answers) / elapsed:.0f}/s offered), "
        f"{len(allowed)} allowed; one bucket allows {one_bucket:.0f}, one per replica "
        f"{len(addresses) * one_bucket:.0f}; answered by replica {dict(served)}"
    )
    print(f"rate limit across replicas: {figures}")
    # The load must offer more than every replica's own bucket together, or the bound
    # below could not tell one global limit from a limit per replica.
    assert len(answers) > 1.5 * len(addresses) * one_bucket, figures
    assert len(allowed) <= one_bucket * 1.1 + 2, figures
    # ... and the limit is a rate, not a wall: the bucket refills.
    assert len(allowed) >= 0.7 * RATE_RPS * elapsed, figures
    # Each replica lets some through: they share one bucket, none owns it.
    assert {x.upstream for x in allowed} == addresses, figures


def test_a_replica_killed_mid_load_loses_nothing_acknowledged(deployed: Deployed) -> None:
    a, b = deployed.replicas[:2]
    # The operator client: a bucket of its own, full again whatever ran before.
    token = get_token(deployed.balancer.url, "operator", deployed.secrets["operator"])
    with Load(deployed.balancer.url, token, "kill", threads=LOAD_THREADS) as load:
        time.sleep(1.5)
        killed_at = time.monotonic()
        b.kill()
        time.sleep(2.0)
    answers = load.answers
    deployed.answers.extend(answers)
    before = [x for x in answers if x.ended < killed_at]
    assert {x.upstream for x in before} == {a.address, b.address}, "B took no load before"
    # The balancer took B out: once the requests in flight at the kill are done, A answers
    # every request. Those in flight on B are lost to their clients (nginx answers 502),
    # at most one per client thread.
    settled = [x for x in answers if x.started > killed_at + 0.5]
    assert settled, "no requests after the kill"
    assert all(x.upstream == a.address and x.status in (200, 429) for x in settled), Counter(
        (x.upstream, x.status) for x in settled
    )
    assert any(x.status == 200 for x in settled), "nothing allowed after the kill"
    lost = [x for x in answers if not x.acknowledged]
    assert len(lost) <= LOAD_THREADS, Counter((x.upstream, x.status) for x in lost)
    assert all(x.upstream == b.address and x.status == 502 for x in lost), Counter(
        (x.upstream, x.status) for x in lost
    )

    # The survivor stops gracefully (its final checkpoint); then the operator's tools.
    a.stop()
    verified = gateway_cli("audit", "verify", "--quiet", data_dir=a.data_dir, env=a.env)
    assert verified.returncode == 0, verified.stderr
    bundle = deployed.workdir / "export.zip"
    until_ms = int(time.time() * 1000) + 60_000
    exported = gateway_cli(
        *("audit", "export", "-o", str(bundle)),
        *("--from", str(deployed.started_ms), "--to", str(until_ms)),
        data_dir=a.data_dir,
        env=a.env,
    )
    assert exported.returncode == 0, exported.stderr
    # Offline: no data directory, no database settings; the verifier key (what
    # `gateway audit pubkey` prints) from the operator, not from the bundle.
    pubkey = load_signer(deployed.source / AUDIT_SIGNING_KEY).verifier_key()
    offline = gateway_cli("audit", "verify-bundle", str(bundle), "--pubkey", pubkey)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("ok: "), offline.stdout

    # Every request a gateway answered, in any test of this module, is in the export
    # with the status its client got, once.
    records = bundle_records(bundle)
    ids = Counter(r["request_id"] for r in records if r.get("request_id"))
    status_of = {r["request_id"]: r.get("status") for r in records if r.get("request_id")}
    acknowledged = [x for x in deployed.answers if x.acknowledged]
    missing = [x for x in acknowledged if x.request_id not in status_of]
    wrong = [x for x in acknowledged if status_of.get(x.request_id, x.status) != x.status]
    twice = [rid for rid, n in ids.items() if n > 1]
    print(
        f"replica killed mid-load: {len(answers)} requests ({len(before)} before the kill), "
        f"{len(lost)} unanswered (502, in flight on B); export: {len(records)} records for "
        f"{len(acknowledged)} acknowledged requests, {len(missing)} missing; "
        f"{offline.stdout.strip()}"
    )
    assert not missing, [(x.request_id, x.status, x.upstream) for x in missing[:10]]
    assert not wrong, [(x.request_id, x.status, status_of[x.request_id]) for x in wrong[:10]]
    assert not twice, twice[:10]
    assert len(records) >= len(acknowledged)
