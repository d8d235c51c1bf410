"""PII redaction: Presidio findings -> per-entity operators, with a bounded keyed cache.

Operators (from the bundle's data policy, per jurisdiction):
- `replace`: the span becomes `<ENTITY_TYPE>`;
- `mask`: every character but the last four becomes `*` (all of it when short);
- `pseudonymize`: `<ENTITY_TYPE:hex16>`, an HMAC-SHA256 of the normalised value
  under a key derived per tenant from the gateway secret. Stable, so identifiers
  stay joinable inside one tenant; unlinkable across tenants and without the
  secret (no unsalted hashes of personal data anywhere).

Overlapping or adjacent findings merge into one span (their union), named by the
best of them; a span never ends inside a word (`whole_words`). `redact` is blocking
(spaCy + regexes): the stage calls it off the event loop.

The cache maps HMAC(cache key, rules || tenant || text) to the redacted text and
counts, so it never holds raw text as a key; its values hold only redacted text.
Search queries repeat, so this is most of the traffic.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from presidio_analyzer import RecognizerResult

from gateway.derivation import DerivedKeys, Purpose
from privacy.nlp import LANGUAGE, OfflineAnalyzer
from privacy.recognizers.result import unescape_newlines

MASK_KEEP = 4


@dataclass(frozen=True)
class RedactionRules:
    """What to detect and how to treat it, for one jurisdiction of one bundle."""

    entities: frozenset[str]
    operators: Mapping[str, str] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    default_threshold: float = 0.4
    allow_list: tuple[str, ...] = ()
    # Where the rules came from (bundle hash + jurisdiction), for humans and logs.
    fingerprint: str = ""
    # Cache keys commit to the rules' content, so two rule sets never share an entry.
    identity: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        content = repr(
            (
                sorted(self.entities),
                sorted(self.operators.items()),
                sorted(self.thresholds.items()),
                self.default_threshold,
                self.allow_list,
            )
        )
        object.__setattr__(self, "identity", hashlib.sha256(content.encode()).digest())

    def threshold(self, entity: str) -> float:
        return self.thresholds.get(entity, self.default_threshold)


# From the most to the least revealing: the stricter of two rule sets uses the later one.
_OPERATOR_STRENGTH = {"mask": 0, "pseudonymize": 1, "replace": 2}


def stricter(first: RedactionRules, second: RedactionRules) -> RedactionRules:
    """Both rule sets at once: every entity either detects, at the lower threshold, with
    the less revealing operator, and only the terms both allow."""
    entities = first.entities | second.entities
    operators: dict[str, str] = {}
    for entity in entities:
        chosen = [
            r.operators.get(entity, "replace") for r in (first, second) if entity in r.entities
        ]
        operators[entity] = max(chosen, key=lambda op: _OPERATOR_STRENGTH.get(op, 2))
    return RedactionRules(
        entities=entities,
        operators=operators,
        thresholds={e: min(first.threshold(e), second.threshold(e)) for e in entities},
        default_threshold=min(first.default_threshold, second.default_threshold),
        allow_list=tuple(t for t in first.allow_list if t in second.allow_list),
        fingerprint=f"{first.fingerprint}+{second.fingerprint}",
    )


@dataclass(frozen=True)
class Redacted:
    text: str
    counts: Mapping[str, int]


def _normalise(value: str) -> str:
    return "".join(value.split()).casefold()


def mask(value: str) -> str:
    if len(value) <= MASK_KEEP * 2:
        return "*" * len(value)
    return "*" * (len(value) - MASK_KEEP) + value[-MASK_KEEP:]


def _rank(finding: RecognizerResult) -> tuple[float, bool, int, int]:
    """Which finding names a merged span: best score; on ties one its context words
    support (a 9-digit number after "passport" is a passport number, not a phone number),
    then the longer span."""
    supported = (finding.recognition_metadata or {}).get(
        RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY
    )
    return (-finding.score, not supported, -(finding.end - finding.start), finding.start)


def select_spans(findings: list[RecognizerResult], rules: RedactionRules) -> list[RecognizerResult]:
    """Findings over their threshold, overlapping or adjacent ones merged into one span.

    The union, never the best piece: a short NER span inside a phone number or an IP
    address must not leave the rest of it in clear. The merged span takes the entity
    type of its best finding (`_rank`)."""
    candidates = sorted(
        (
            f
            for f in findings
            if f.entity_type in rules.entities and f.score >= rules.threshold(f.entity_type)
        ),
        key=lambda f: (f.start, f.end),
    )
    groups: list[list[RecognizerResult]] = []
    end = -1
    for finding in candidates:
        if groups and finding.start <= end:
            groups[-1].append(finding)
            end = max(end, finding.end)
        else:
            groups.append([finding])
            end = finding.end
    merged: list[RecognizerResult] = []
    for group in groups:
        best = min(group, key=_rank)
        merged.append(
            RecognizerResult(
                entity_type=best.entity_type,
                start=min(f.start for f in group),
                end=max(f.end for f in group),
                score=best.score,
                recognition_metadata=best.recognition_metadata,
            )
        )
    return merged


def whole_words(text: str, spans: list[RecognizerResult]) -> list[RecognizerResult]:
    """Spans widened to the letters and digits they touch, then merged again.

    A recognizer that stops inside a word ("Martna la" of "Martna last year", "NW" of
    "NW1 6XE") must not leave the rest of that word in clear next to the redaction."""
    widened: list[RecognizerResult] = []
    for span in spans:
        start, end = span.start, span.end
        while start > 0 and text[start - 1].isalnum():
            start -= 1
        while end < len(text) and text[end].isalnum():
            end += 1
        if widened and start <= widened[-1].end:
            last = widened[-1]
            keep = last if last.score >= span.score else span
            widened[-1] = RecognizerResult(
                entity_type=keep.entity_type,
                start=last.start,
                end=max(last.end, end),
                score=keep.score,
                recognition_metadata=keep.recognition_metadata,
            )
        else:
            widened.append(
                RecognizerResult(
                    entity_type=span.entity_type,
                    start=start,
                    end=end,
                    score=span.score,
                    recognition_metadata=span.recognition_metadata,
                )
            )
    return widened


class Redactor:
    def __init__(self, analyzer: OfflineAnalyzer, *, keys: DerivedKeys, cache_size: int) -> None:
        self.analyzer = analyzer
        self._pseudonym_root = keys[Purpose.PII_PSEUDONYM]
        self._cache_key = keys[Purpose.PII_CACHE]
        self._cache: OrderedDict[bytes, Redacted] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._tenant_keys: dict[str, bytes] = {}

    @property
    def entities(self) -> tuple[str, ...]:
        return self.analyzer.entities

    def tenant_key(self, tenant: str | None) -> bytes:
        name = tenant or ""
        key = self._tenant_keys.get(name)
        if key is None:
            key = hmac.digest(self._pseudonym_root, name.encode(), "sha256")
            self._tenant_keys[name] = key
        return key

    def pseudonym(self, entity: str, value: str, tenant: str | None) -> str:
        message = entity.encode() + b"\x00" + _normalise(value).encode()
        digest = hmac.digest(self.tenant_key(tenant), message, "sha256").hex()
        return f"<{entity}:{digest[:16]}>"

    def _cache_id(self, text: str, rules: RedactionRules, tenant: str | None) -> bytes:
        message = b"\x00".join((rules.identity, (tenant or "").encode(), text.encode()))
        return hmac.digest(self._cache_key, message, "sha256")

    def cached(self, text: str, rules: RedactionRules, tenant: str | None) -> Redacted | None:
        if self._cache_size <= 0:
            return None
        key = self._cache_id(text, rules, tenant)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
            return found

    def redact(self, text: str, rules: RedactionRules, tenant: str | None) -> Redacted:
        """Blocking. Raises whatever the analyzer raises: callers fail closed."""
        if not text.strip():
            return Redacted(text, {})
        key = self._cache_id(text, rules, tenant) if self._cache_size > 0 else b""
        if key:
            with self._lock:
                found = self._cache.get(key)
                if found is not None:
                    self._cache.move_to_end(key)
                    return found
        result = self._redact(text, rules, tenant)
        if key:
            with self._lock:
                self._cache[key] = result
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return result

    def analyze(self, text: str, rules: RedactionRules) -> list[RecognizerResult]:
        wanted = sorted(rules.entities & set(self.analyzer.entities))
        if not wanted:
            return []
        # Escaped line breaks ("\\n" as two characters, from JSON or logs) would glue the
        # words around them into one token; same length, so offsets hold for `text`.
        findings: list[RecognizerResult] = self.analyzer.engine.analyze(
            unescape_newlines(text),
            language=LANGUAGE,
            entities=wanted,
            allow_list=list(rules.allow_list) or None,
        )
        return whole_words(text, select_spans(findings, rules))

    def _redact(self, text: str, rules: RedactionRules, tenant: str | None) -> Redacted:
        counts: dict[str, int] = {}
        parts: list[str] = []
        cursor = 0
        for finding in self.analyze(text, rules):
            entity = finding.entity_type
            value = text[finding.start : finding.end]
            operator = rules.operators.get(entity, "replace")
            if operator == "mask":
                replacement = mask(value)
            elif operator == "pseudonymize":
                replacement = self.pseudonym(entity, value, tenant)
            else:
                replacement = f"<{entity}>"
            parts += [text[cursor : finding.start], replacement]
            cursor = finding.end
            counts[entity] = counts.get(entity, 0) + 1
        parts.append(text[cursor:])
        return Redacted("".join(parts), counts)
