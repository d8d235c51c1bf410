"""What the shipped engine detects (issue 13): names, places and street addresses, phones of
every listed region, IBANs and national identifiers, with the real NER package and the real
rule recognizers; the default jurisdiction covers every entity, no client narrows it, and
no part of a detected value is left in clear, whatever the recognizers' scores."""

from __future__ import annotations

import itertools
import logging
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from presidio_analyzer import RecognizerResult

from gateway.derivation import DerivedKeys
from gateway.errors import ConfigurationError
from gateway.pipeline import Action, RankQuery
from gateway.settings import Settings
from policies import DataPolicy, InForce, JurisdictionPolicy, Jurisdictions
from policies.bundle import load_bundle
from privacy.components import shared_analyzer, undetectable
from privacy.consent_stage import ConsentDecision
from privacy.nlp import OfflineAnalyzer
from privacy.recognizers import REGIONS, ner_package
from privacy.redact_stage import RedactStage, applicable, combined_rules
from privacy.redaction import RedactionRules, Redactor, select_spans, whole_words
from tests.stage_context import principal, stage_context

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "policies/bundles/default"


@pytest.fixture(scope="module")
def engine() -> OfflineAnalyzer:
    """The engine the gateway runs by default: the pinned NER package plus the rules."""
    return shared_analyzer(ner_package.PACKAGE)


@pytest.fixture
def full(engine: OfflineAnalyzer) -> Redactor:
    return Redactor(engine, keys=DerivedKeys(b"k" * 32), cache_size=0)


def everything(engine: OfflineAnalyzer) -> RedactionRules:
    return RedactionRules(entities=frozenset(engine.entities), fingerprint="all")


def pieces(value: str) -> list[str]:
    """Every word and number of a value: none may survive redaction."""
    return re.findall(r"\w+", value)


# (sentence, values that must disappear whole, entity types expected among the counts)
NAMES_AND_PLACES = [
    ("My name is Maria Keller and I live in Berlin", ["Maria Keller", "Berlin"], {"PERSON"}),
    ("hi, my name is sofia lindqvist and i need help", ["sofia lindqvist"], {"PERSON"}),
    ("Ask Jennifer Eiffel or her brother Oscar about it", ["Jennifer Eiffel", "Oscar"], {"PERSON"}),
    ("Dear Mr. Okonkwo, thanks for the movies", ["Okonkwo"], {"PERSON"}),
    ("Benedykta G. Kucharska liked the trailer", ["Benedykta G. Kucharska"], {"PERSON"}),
    ("We moved here from Martna last year", ["Martna"], {"LOCATION"}),
    (
        "Please send it to 3240 Meadow Drive, Springfield, IL 62704 by Friday",
        ["3240 Meadow Drive, Springfield, IL 62704"],
        {"LOCATION"},
    ),
    ("Ship to 14 Baker Street, London NW1 6XE please", ["14 Baker Street, London NW1 6XE"], set()),
    ("Meine Adresse: Kronwiesenweg 95, 8700 Küsnacht", ["Kronwiesenweg 95, 8700 Küsnacht"], set()),
    ("Abito in Via Pasquale Scura 127, Napoli", ["Via Pasquale Scura 127", "Napoli"], set()),
    (
        "Wyślij na ul. Asnyka Adama 82, 35-001 Rzeszów",
        ["ul. Asnyka Adama 82, 35-001 Rzeszów"],
        set(),
    ),
    ("J'habite au 12 rue du Niger, 75012 Paris, France", ["12 rue du Niger, 75012 Paris"], set()),
    ("Mail it to P.O. Box 63, Anchorage, AK 99501", ["P.O. Box 63, Anchorage, AK 99501"], set()),
    (
        "Helena Carlsen\\n\\n637 Strojírenská 1006\\n Suite 026\\n Svratka\\n Czech Republic 45098",
        ["Helena Carlsen", "637 Strojírenská 1006", "Suite 026", "Svratka", "45098"],
        {"LOCATION"},
    ),
]


@pytest.mark.parametrize(("sentence", "values", "types"), NAMES_AND_PLACES)
def test_names_places_and_addresses_are_redacted_whole(
    full: Redactor, engine: OfflineAnalyzer, sentence: str, values: list[str], types: set[str]
) -> None:
    out = full.redact(sentence, everything(engine), tenant=None)
    for value in values:
        for piece in pieces(value):
            assert not re.search(rf"\b{re.escape(piece)}\b", out.text), (piece, out.text)
    assert types <= set(out.counts), out.counts
    assert set(out.counts) <= {"PERSON", "LOCATION", "ORGANIZATION", "NRP"}, out.counts


@pytest.mark.parametrize(
    "sentence",
    [
        "something funny for a rainy evening",
        "a classic western with great music from the 1960s",
        "movies like The Godfather and Jaws",
        "Top 10 Movies of 2020 for a family night",
        "I ate 3 hot dogs at the park",
    ],
)
def test_ordinary_queries_are_left_alone(
    full: Redactor, engine: OfflineAnalyzer, sentence: str
) -> None:
    assert full.redact(sentence, everything(engine), tenant=None).text == sentence


def _example_numbers() -> list[tuple[str, str]]:
    """libphonenumber's own example numbers (an outside oracle) for every listed region,
    mobile and fixed line, national and international format."""
    cases = []
    for region in REGIONS:
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            for style in (
                phonenumbers.PhoneNumberFormat.NATIONAL,
                phonenumbers.PhoneNumberFormat.INTERNATIONAL,
            ):
                cases.append((region, phonenumbers.format_number(example, style)))
    return sorted(set(cases))


EU_AND_MORE = {"DE", "FR", "IT", "ES", "PL", "NL", "SE", "GB", "US", "CA", "IN", "IE", "MT"}


def test_every_listed_region_is_covered() -> None:
    assert set(REGIONS) >= EU_AND_MORE
    assert len(_example_numbers()) >= 4 * len(REGIONS) - 10


@pytest.mark.parametrize(("region", "number"), _example_numbers())
@pytest.mark.parametrize("template", ["my mobile is {} tonight", "{} is the one I use"])
def test_phones_of_every_region_with_and_without_context(
    full: Redactor, engine: OfflineAnalyzer, region: str, number: str, template: str
) -> None:
    out = full.redact(template.format(number), everything(engine), tenant=None)
    assert out.counts == {"PHONE_NUMBER": 1}, (region, out.text, out.counts)
    assert not any(ch.isdigit() for ch in out.text), out.text


@pytest.mark.parametrize(
    ("entity", "sentence", "value"),
    [
        ("IBAN_CODE", "Refund to IBAN FR14 2004 1010 0505 0001 3M02 606", "FR14 2004"),
        ("IBAN_CODE", "wire it to GB82 WEST 1234 5698 7654 32 today", "GB82 WEST"),
        ("ES_NIF", "mi NIF es 12345678Z", "12345678Z"),
        ("ES_NIE", "my NIE is X1234567L", "X1234567L"),
        ("IT_FISCAL_CODE", "codice fiscale RSSMRA85T10A562S", "RSSMRA85T10A562S"),
        ("PL_PESEL", "numer PESEL 44051401359", "44051401359"),
        ("UK_NHS", "my NHS number is 943 476 5919", "943 476 5919"),
        ("UK_NINO", "nino: JG 10 37 54 A please", "JG 10 37 54 A"),
    ],
)
def test_iban_and_national_identifiers(
    full: Redactor, engine: OfflineAnalyzer, entity: str, sentence: str, value: str
) -> None:
    out = full.redact(sentence, everything(engine), tenant=None)
    assert out.counts.get(entity) == 1, out.counts
    for piece in pieces(value):
        assert not re.search(rf"\b{re.escape(piece)}\b", out.text), (piece, out.text)


def test_a_phone_passing_an_id_checksum_stays_a_phone(
    full: Redactor, engine: OfflineAnalyzer
) -> None:
    """943 476 5919 passes the NHS mod-11 check; after "phone" it is a phone number (and
    masked as one), after "NHS" an NHS number: the context decides, not the checksum."""
    rules = RedactionRules(
        entities=frozenset(engine.entities), operators={"PHONE_NUMBER": "mask"}
    )
    phone = full.redact("my phone 943 476 5919", rules, tenant=None)
    assert phone.counts == {"PHONE_NUMBER": 1}
    assert phone.text.endswith("*****5919")


def test_the_eu_set_names_the_eu_identifiers() -> None:
    from privacy.recognizers import EU_ENTITIES

    eu = load_bundle(DEFAULT_BUNDLE).data.jurisdictions.for_region("eu")
    assert eu.pii_entities != "all"
    assert set(EU_ENTITIES) <= set(eu.pii_entities)
    assert {"PERSON", "LOCATION", "IBAN_CODE", "PHONE_NUMBER"} <= set(eu.pii_entities)


def test_default_jurisdiction_covers_every_detectable_entity(engine: OfflineAnalyzer) -> None:
    data = load_bundle(DEFAULT_BUNDLE).data
    assert undetectable(engine, data) == {}  # start-up logs no "PII NOT REDACTED"
    for region in ("default", "default+eu", "default+california", "default+eu+california"):
        rules = combined_rules(data, region, "h", engine.entities)
        assert rules.entities == frozenset(engine.entities), region
    # Strict unless a bundle narrows it in writing: an empty policy means everything.
    assert JurisdictionPolicy().entities(engine.entities) == frozenset(engine.entities)
    for entity in ("PERSON", "LOCATION", "ES_NIF", "UK_NHS", "US_SSN", "IBAN_CODE"):
        assert entity in engine.entities


def test_jurisdictions_only_add_up() -> None:
    assert applicable("default", None, None) == "default"
    assert applicable("eu", None, "default") == "default+eu"
    assert applicable("default", "eu", "california") == "default+eu+california"
    assert applicable("eu", "eu", "eu") == "default+eu"


def _narrow_bundle() -> DataPolicy:
    """A bundle whose sets are narrow and disjoint, so that any lost rule shows."""
    return DataPolicy(
        models={},
        jurisdictions=Jurisdictions(
            default=JurisdictionPolicy(pii_entities=("EMAIL_ADDRESS",)),
            eu=JurisdictionPolicy(pii_entities=("PERSON",), operators={"PERSON": "replace"}),
            california=JurisdictionPolicy(pii_entities=("US_SSN",)),
            tenants={"acme-eu": "eu"},
        ),
    )


def _decision(jurisdiction: str) -> ConsentDecision:
    return ConsentDecision(
        may_personalize=False,
        purposes={},
        sources={},
        needed=(),
        jurisdiction=jurisdiction,
        gpc=False,
        tcf="absent",
        explicit=False,
    )


TEXT = "jo@example.com here, my name is Maria Keller, ssn 536-22-8147"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("subject", "tenant", "header", "expected"),
    [
        ("default", None, None, {"EMAIL_ADDRESS"}),
        # The subject's record says eu: a header naming default (or california) narrows nothing.
        ("eu", None, "default", {"EMAIL_ADDRESS", "PERSON"}),
        ("eu", None, "california", {"EMAIL_ADDRESS", "PERSON", "US_SSN"}),
        # The tenant's configuration says eu: the header cannot take it away either.
        ("default", "acme-eu", "default", {"EMAIL_ADDRESS", "PERSON"}),
        ("default", "acme-eu", "bogus", {"EMAIL_ADDRESS", "PERSON"}),
        # A header can only make it stricter.
        ("default", None, "california", {"EMAIL_ADDRESS", "US_SSN"}),
    ],
)
async def test_a_request_header_cannot_narrow_the_rules(
    full: Redactor, subject: str, tenant: str | None, header: str | None, expected: set[str]
) -> None:
    query = RankQuery(user_id="u1", item_ids=("i1",), top_k=1, context={"query": TEXT})
    headers = {"data-jurisdiction": header} if header else {}
    with ThreadPoolExecutor(1) as pool:
        stage = RedactStage(full, InForce(_narrow_bundle(), "h"), timeout_s=30, executor=pool)
        ctx = stage_context(
            Action.RANK,
            headers=headers,
            caller=principal(tenant=tenant),
            payload=query,
            consent=_decision(subject),
        )
        out = await stage(ctx)
    assert out.redaction is not None
    assert set(out.redaction.counts) == expected
    redacted = out.payload.context["query"]
    assert "jo@example.com" not in redacted
    if "PERSON" in expected:
        assert "Keller" not in redacted


# -- no partial redaction, whatever the scores ------------------------------------------------

TYPES = ("PHONE_NUMBER", "IP_ADDRESS", "NRP", "ORGANIZATION", "PERSON", "LOCATION")


@st.composite
def overlapping_findings(draw: st.DrawFn) -> tuple[str, list[RecognizerResult]]:
    text = draw(st.text(alphabet="ab1:-. ", min_size=5, max_size=40))
    findings = []
    for _ in range(draw(st.integers(1, 8))):
        start = draw(st.integers(0, len(text) - 1))
        end = draw(st.integers(start + 1, len(text)))
        score = draw(st.floats(0.0, 1.0))
        findings.append(RecognizerResult(draw(st.sampled_from(TYPES)), start, end, score))
    return text, findings


@settings(max_examples=300, deadline=None)
@given(overlapping_findings())
def test_every_character_of_every_kept_finding_is_redacted(
    case: tuple[str, list[RecognizerResult]],
) -> None:
    """An attacker cannot pick scores that leave part of a detected value in clear: every
    character any finding over its threshold covers lies inside one output span, and the
    output spans are disjoint and never touch."""
    text, findings = case
    rules = RedactionRules(entities=frozenset(TYPES), thresholds={"NRP": 0.6})
    spans = whole_words(text, select_spans(findings, rules))
    kept = [f for f in findings if f.score >= rules.threshold(f.entity_type)]
    for finding in kept:
        for i in range(finding.start, finding.end):
            assert any(s.start <= i < s.end for s in spans), (i, finding, spans)
    for left, right in itertools.pairwise(spans):
        assert left.end < right.start
    for span in spans:  # never ends inside a word
        assert span.start == 0 or not text[span.start - 1].isalnum()
        assert span.end == len(text) or not text[span.end].isalnum()


@pytest.mark.parametrize(
    ("sentence", "secret"),
    [
        ("call +1-984-182-0190 now", "+1-984-182-0190"),
        ("from 6e40:4041:af3d:e898:12:0:0:1 today", "6e40:4041:af3d:e898:12:0:0:1"),
        ("Maren Høgli 0494 41 18 24-Office", "0494 41 18 24"),
        ("Sára Vida, 75186 ul. Asnyka Adama 82 Apt. 686 Rzeszów Poland", "Asnyka Adama 82"),
    ],
)
def test_no_piece_of_a_value_the_ner_model_splits_stays_in_clear(
    full: Redactor, engine: OfflineAnalyzer, sentence: str, secret: str
) -> None:
    out = full.redact(sentence, everything(engine), tenant=None)
    for piece in pieces(secret):
        assert not re.search(rf"(?<!\w){re.escape(piece)}(?!\w)", out.text), (piece, out.text)


# -- the NER package the gateway installs -----------------------------------------------------


def test_the_installed_ner_package_matches_its_pins() -> None:
    ner_package.verify(ner_package.model_dir())
    nlp = ner_package.load_pinned()
    assert nlp.pipe_names == ["ner"]


def test_a_tampered_ner_model_is_refused(tmp_path: Path) -> None:
    """Someone swaps the upload for one with other weights under the same name and version:
    start-up fails instead of redacting with a model nobody measured."""
    copy = tmp_path / "model"
    shutil.copytree(ner_package.model_dir(), copy)
    ner_package.verify(copy)  # the untouched copy passes
    weights = copy / "ner" / "model"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigurationError, match="ner/model"):
        ner_package.verify(copy)
    (copy / "ner" / "model").unlink()
    with pytest.raises(ConfigurationError, match="unreadable"):
        ner_package.verify(copy)


# -- an attacker's text does not stall the engine ---------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1-2-3-4-5-6-7-8-9-" * 110,  # was 1.5 s in the street-suffix rule (backtracking)
        "12 Aaa-" * 280,
        "Aaaa 12 Bbbb 34 " * 120,
        "via Aaaa " * 220,
        "my name is " * 180,
        "A" + "a" * 2000 + "1",
    ],
)
def test_rule_recognizers_stay_linear_on_hostile_2kb_texts(text: str) -> None:
    import time

    from privacy.recognizers import AddressRecognizer, NameRecognizer, WorldPhoneRecognizer

    for recognizer in (AddressRecognizer(), NameRecognizer(), WorldPhoneRecognizer()):
        recognizer.load()
        started = time.perf_counter()
        recognizer.analyze(text, recognizer.supported_entities)
        assert time.perf_counter() - started < 0.5, recognizer.name


def test_settings_can_choose_the_rules_alone() -> None:
    """A settings file cannot write None: "none" (or "") selects the rule recognizers."""
    rules_only = shared_analyzer("none")
    assert rules_only.pipeline == "blank"
    assert {"PERSON", "LOCATION", "PHONE_NUMBER"} <= set(rules_only.entities)


# -- end to end: the real app, as a client sees it -----------------------------------------


def test_names_addresses_and_phones_never_reach_the_model_or_the_audit(
    make_settings: Callable[..., Settings],
    auth: Callable[..., dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app as `serve` builds it (default settings: the pinned NER package): start-up
    logs no "NOT REDACTED", and a query with a name, a street address and a UK phone
    number comes back counted, with the sealed audit copy holding none of it."""
    from fastapi.testclient import TestClient

    from gateway.app import create_app

    caplog.set_level(logging.INFO)
    query = (
        "my name is Maria Keller, ship to 3240 Meadow Drive, Springfield, IL 62704 "
        "or call +44 20 7946 0958"
    )
    with TestClient(create_app(make_settings())) as client:
        assert "NOT REDACTED" not in caplog.text
        ready = client.get("/readyz").json()["checks"]["privacy"]
        assert ready["undetectable"] == {}
        response = client.post(
            "/v1/rank",
            json={"user_id": "u-e2e", "item_ids": ["i1", "i2"], "context": {"query": query}},
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["redacted"] == {"PERSON": 1, "LOCATION": 1, "PHONE_NUMBER": 1}
        found = client.get(
            f"/v1/audit/records/{response.json()['request_id']}",
            headers=auth(("audit:read", "audit:export"), client_id="operator"),
        )
        assert found.status_code == 200, found.text
        sealed = found.json()["record"]["personal"]["context"]["query"]
    for piece in ("Maria", "Keller", "3240", "Meadow", "Springfield", "62704", "7946"):
        assert piece not in sealed, sealed
        assert piece not in caplog.text
