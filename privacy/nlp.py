"""The offline Presidio analyzer: a blank English spaCy pipeline, nothing downloaded.

`AnalyzerEngine()` with no arguments loads (and, when absent, downloads)
`en_core_web_lg`; the e-mail recognizer validates top-level domains with
tldextract, whose default extractor fetches the Public Suffix List over HTTP
and caches it under the home directory. A compliance product may do neither, so:

1. `TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS=""` is set before tldextract is first
   imported (its module-level extractor reads it then), and the extractor the
   e-mail recognizer calls is replaced by one with no URLs and no disk cache,
   working from the snapshot inside the tldextract package;
2. the NLP engine is a `SpacyNlpEngine` whose `load` never calls `spacy.load` by
   name for the blank pipeline and never `spacy.cli.download`: it is
   `spacy.blank("en")` plus a lookup lemmatizer (tables from the installed
   `spacy-lookups-data` package), so Presidio's context enhancer sees lemmas
   ("phones" -> "phone") and context words raise scores;
3. the NER package the project installs (`privacy.recognizers.ner_package`, pinned
   by file hashes) or another installed spaCy package named in `privacy.ner_model`
   adds the model's PERSON, LOCATION, NRP and ORGANIZATION; only its `ner` runs,
   with the lookup lemmatizer beside it. A name that is not installed is a
   configuration error, never a download;
4. rule recognizers (privacy.recognizers) run with either pipeline: names from a
   gazetteer and cue words, street addresses and places, phone numbers of every
   listed region, national identifiers. Context words are read five tokens before
   and two after a match ("0494 41 18 24 (office)").
"""

from __future__ import annotations

import logging
import os

# Before anything imports tldextract (presidio's e-mail recognizer does at import).
os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""  # isort: split

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import spacy
import tldextract
import tldextract.tldextract as _tld
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
)
from presidio_analyzer import predefined_recognizers as pr
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
from spacy.language import Language
from spacy.pipeline import Lemmatizer

from gateway.errors import ConfigurationError
from privacy.recognizers import (
    NATIONAL_RECOGNIZERS,
    AddressRecognizer,
    NameRecognizer,
    WorldPhoneRecognizer,
    ner_package,
)

LANGUAGE = "en"


class _NoAnalyzedText(logging.Filter):
    """Presidio logs the analyzed text's context words at DEBUG ("Context list is: ..."),
    and its decision process quotes spans: personal data must never reach a log line,
    whatever level an operator (or a test) sets. Below ERROR nothing passes; at ERROR
    the message template passes without its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return False
        record.args = ()
        return True


for _name in ("presidio-analyzer", "decision_process"):
    logging.getLogger(_name).setLevel(logging.ERROR)
    logging.getLogger(_name).addFilter(_NoAnalyzedText())

# Entities an NER model adds (spaCy OntoNotes labels -> Presidio names).
NER_MAPPING = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "NORP": "NRP",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
}

# What the NER model's guesses score: under the rule recognizers' sure findings (0.85+),
# so a merged span is named by the rule that knows (a street, a listed name).
NER_SCORE = 0.8

# Pattern (and checksum) recognizers that need no model: the offline baseline.
_STOCK_RECOGNIZERS: tuple[Callable[..., EntityRecognizer], ...] = (
    pr.EmailRecognizer,
    pr.CreditCardRecognizer,
    pr.IbanRecognizer,
    pr.IpRecognizer,
    pr.UrlRecognizer,
    pr.UsSsnRecognizer,
    pr.UsPassportRecognizer,
    pr.UsLicenseRecognizer,
    pr.UsBankRecognizer,
    pr.UsItinRecognizer,
    pr.CryptoRecognizer,
    pr.DateRecognizer,
    pr.MacAddressRecognizer,
)


class ContextCardRecognizer(pr.CreditCardRecognizer):
    """Luhn-valid 12-19 digit numbers the stock prefixes miss (12-digit Maestro, 19-digit
    Visa, new ranges). Weak alone (0.3): only a card context word lifts it over a threshold."""

    def __init__(self, supported_language: str = LANGUAGE) -> None:
        super().__init__(
            patterns=[Pattern("Card-length Luhn (weak)", r"\b(?:\d[- ]?){11,18}\d\b", 0.3)],
            supported_language=supported_language,
            name="ContextCardRecognizer",
        )

    def validate_result(self, pattern_text: str) -> bool | None:  # type: ignore[override]
        # Luhn-valid: keep the weak score (context decides); invalid: drop.
        return None if super().validate_result(pattern_text) else False


def nanp_phone_recognizer(supported_language: str = LANGUAGE) -> EntityRecognizer:
    """North-American-shaped numbers (with +1 / 001 prefixes, extensions) that
    `phonenumbers` rejects as unassigned: typed by people all the same. Separators are
    required, so bare digit runs (ids, cards) never match; context lifts the weak score."""
    return PatternRecognizer(
        supported_entity="PHONE_NUMBER",
        name="NanpShapedPhoneRecognizer",
        supported_language=supported_language,
        patterns=[
            Pattern(
                "NANP-shaped phone (weak)",
                r"(?<![\w+])(?:\+?1[-. ]?|001[-. ]?)?(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-. ]\d{4}"
                r"(?:\s?(?:x|ext\.?)\s?\d{1,6})?\b",
                0.3,
            )
        ],
        context=[*pr.PhoneRecognizer.CONTEXT, "text", "reach", "tel", "whatsapp"],
    )


PATTERN_RECOGNIZERS = (
    *_STOCK_RECOGNIZERS,
    *NATIONAL_RECOGNIZERS,
    ContextCardRecognizer,
    nanp_phone_recognizer,
    WorldPhoneRecognizer,
    NameRecognizer,
    AddressRecognizer,
)


def _offline_tld_extractor() -> None:
    """Swap tldextract's module extractor for one that can only read its snapshot."""
    extractor = tldextract.TLDExtract(
        cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True
    )
    extractor("example.com")  # parse the snapshot now, not on the first request
    _tld.TLD_EXTRACTOR = extractor


class OfflineSpacyEngine(SpacyNlpEngine):
    """A `SpacyNlpEngine` around a pipeline built here; `load` never downloads."""

    def __init__(self, pipeline: Language, *, ner: bool) -> None:
        config = NerModelConfiguration(
            model_to_presidio_entity_mapping=dict(NER_MAPPING),
            labels_to_ignore=[] if ner else list(NER_MAPPING),
            default_score=NER_SCORE,
            # The small model tags many people as organisations: its ORG / NORP guesses
            # still redact (0.64) but lose a merged span's name to a PERSON finding.
            low_score_entity_names=["ORG", "ORGANIZATION", "NORP", "NRP"],
            low_confidence_score_multiplier=0.8,
        )
        super().__init__(
            models=[{"lang_code": LANGUAGE, "model_name": pipeline.meta.get("name", "blank")}],
            ner_model_configuration=config,
        )
        self._pipeline = pipeline
        self.has_ner = ner

    def load(self) -> None:
        # The base class declares `nlp` as None until loaded.
        self.nlp = {LANGUAGE: self._pipeline}  # type: ignore[assignment]

    def get_supported_entities(self) -> list[str]:
        return sorted(set(NER_MAPPING.values())) if self.has_ner else []


def blank_pipeline() -> Language:
    nlp = spacy.blank(LANGUAGE)
    nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
    try:
        nlp.initialize()  # loads the lookup table from spacy-lookups-data (a local package)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"spaCy lemma tables unavailable: {exc}") from exc
    return nlp


def ner_pipeline(package: str) -> Language:
    """An installed spaCy package (never fetched): only its `ner`, plus the lookup
    lemmatizer for context words. The default package is verified against its pins."""
    if package == ner_package.PACKAGE:
        nlp = ner_package.load_pinned()
    elif spacy.util.is_package(package):
        nlp = ner_package.load_ner_only(ner_package.model_dir(package))
    else:
        raise ConfigurationError(
            f"privacy.ner_model {package!r} is not an installed spaCy package "
            "(install it with pip; the gateway never downloads models)"
        )
    if "ner" not in nlp.pipe_names:
        raise ConfigurationError(f"privacy.ner_model {package!r} has no ner component")
    lemmatizer = nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
    if not isinstance(lemmatizer, Lemmatizer):
        raise ConfigurationError(f"privacy.ner_model {package!r}: no lookup lemmatizer")
    try:
        lemmatizer.initialize()  # this component only: the ner keeps its trained weights
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"spaCy lemma tables unavailable: {exc}") from exc
    return nlp


@dataclass(frozen=True)
class OfflineAnalyzer:
    engine: AnalyzerEngine
    entities: tuple[str, ...]  # what this engine can detect
    pipeline: str  # "blank" or the NER package name


def build_analyzer(ner_model: str | None = None) -> OfflineAnalyzer:
    """Build the analyzer; raises ConfigurationError rather than reaching the network.
    `ner_model` None, "" or "none": the rule recognizers alone (settings files cannot
    write None)."""
    if ner_model is not None and ner_model.strip().lower() in ("", "none"):
        ner_model = None
    _offline_tld_extractor()
    pipeline = blank_pipeline() if ner_model is None else ner_pipeline(ner_model)
    nlp_engine = OfflineSpacyEngine(pipeline, ner=ner_model is not None)
    nlp_engine.load()
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in PATTERN_RECOGNIZERS:
        registry.add_recognizer(recognizer(supported_language=LANGUAGE))
    if ner_model is not None:
        registry.add_recognizer(
            pr.SpacyRecognizer(
                supported_language=LANGUAGE,
                supported_entities=nlp_engine.get_supported_entities(),
            )
        )
    engine = AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=[LANGUAGE],
        context_aware_enhancer=LemmaContextAwareEnhancer(
            context_prefix_count=5, context_suffix_count=2
        ),
    )
    entities = tuple(sorted(engine.get_supported_entities(language=LANGUAGE)))
    return OfflineAnalyzer(engine, entities, "blank" if ner_model is None else ner_model)


def describe(analyzer: OfflineAnalyzer) -> dict[str, Any]:
    """What `/readyz` and `gateway privacy doctor` report."""
    return {"pipeline": analyzer.pipeline, "entities": list(analyzer.entities)}
