"""The JWT attack catalogue (tests/suites/jwt_catalogue.py) against a real gateway on
127.0.0.1: every attack gets the one 401 answer and is on record, every control gets 200,
transport-level cases are refused before the app, a key rotated out of an issuer's JWKS
signs nothing, and nothing answers 5xx."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from gateway.settings import Settings
from tests.suites.jws import unb64url
from tests.suites.jwt_catalogue import (
    ATTACKS,
    CONTROLS,
    KNOWN_GAPS,
    ROTATION_EXPECTED,
    TRANSPORT_CASES,
    Attack,
    Kit,
    TransportCase,
)
from tests.suites.jwt_runner import CatalogueRun, refusal_problem, run_catalogue
from tests.suites.servers import DataDir


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> CatalogueRun:
    # The default bundle's limits stay on: the catalogue is 80 requests from one client.
    data_dir = DataDir.create(tmp_path_factory.mktemp("jwt") / "data", lift_limits=False)
    return run_catalogue(data_dir)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_gets_the_one_401_and_is_on_record(run: CatalogueRun, attack: Attack) -> None:
    assert refusal_problem(run.attacks[attack.name], attack.cause, run.ledger) is None


@pytest.mark.parametrize("name", [name for name, _ in CONTROLS])
def test_the_same_construction_done_right_is_accepted(run: CatalogueRun, name: str) -> None:
    assert run.controls[name].status == 200, run.controls[name].body


@pytest.mark.parametrize("case", TRANSPORT_CASES, ids=[c.name for c in TRANSPORT_CASES])
def test_transport_cases_are_refused_before_the_app(run: CatalogueRun, case: TransportCase) -> None:
    assert run.transport[case.name] == case.status


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[name]))
        if name in KNOWN_GAPS
        else name
        for name in ROTATION_EXPECTED
    ],
)
def test_a_key_rotated_out_of_an_issuers_jwks_signs_nothing(run: CatalogueRun, name: str) -> None:
    answer = run.rotation[name]
    assert answer.status == ROTATION_EXPECTED[name], answer.body
    if answer.status == 401:
        assert refusal_problem(answer, "", run.ledger) is None


def test_refusals_past_the_budget_are_counted_in_aggregate_records(run: CatalogueRun) -> None:
    assert run.ledger.unaccounted(run.refused_ids()) == []


def test_nothing_answered_5xx_and_healthz_kept_answering(run: CatalogueRun) -> None:
    assert run.server_errors == 0
    assert run.health_worst_ms < 1_000


def test_case_names_are_unique() -> None:
    names = [a.name for a in ATTACKS] + [n for n, _ in CONTROLS] + [c.name for c in TRANSPORT_CASES]
    assert len(set(names)) == len(names)
    assert set(KNOWN_GAPS) <= set(ROTATION_EXPECTED) | set(names)


def test_the_hand_built_tokens_are_what_they_claim(settings: Settings) -> None:
    """Guards the table against testing something weaker than its names say."""
    kit = Kit.for_settings(settings)
    by_name = {a.name: a for a in ATTACKS}

    def token(name: str) -> str:
        return by_name[name].build(kit).removeprefix("Bearer ")

    # Signed by the real key over the raw header bytes: a first-wins parser would accept it.
    duplicate = token("duplicate-alg-last-none")
    head, body, sig = duplicate.split(".")
    assert unb64url(head).count(b'"alg"') == 2
    kit.key.public_key().verify(
        unb64url(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    # Key confusion really keyed the HMAC with the issuer's public key (DER form).
    head, body, sig = token("hs256-public-der").split(".")
    der = kit.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert unb64url(sig) == hmac.new(der, f"{head}.{body}".encode(), hashlib.sha256).digest()
    # The psychic signature is r = s = 0 for an ES256 header naming the IdP's EC key.
    psychic = token("es256-psychic-r-s-zero")
    assert unb64url(psychic.split(".")[2]) == bytes(64)
    assert json.loads(unb64url(psychic.split(".")[0]))["kid"] == kit.IDP_EC_KID
    # The transplanted signature is a genuine one; only the payload asks for more.
    transplanted = token("signature-transplanted")
    assert "admin" in json.loads(unb64url(transplanted.split(".")[1]))["scope"]
    assert len(unb64url(transplanted.split(".")[2])) == 256
