"""bench/pii: PII detection quality, redaction latency, and /v1/rank cost of a text field.

    python -m bench.pii [--samples 1500] [--seed 1234] [--ner-model PKG|none]
                        [--skip-throughput]

1. Quality on two labelled sets, per entity type (precision, recall, F1):
   - an outside set whose sentences this project did not write: presidio-evaluator's
     generator with its bundled templates and person records (`eval` extra), names
     and street addresses of many countries in many formats, 5 % lower-case names,
     UK / Indian / Swiss / Swedish phone formats. Its STREET_ADDRESS, GPE and
     ZIP_CODE labels are scored as LOCATION, DOMAIN_NAME as URL; AGE and TITLE have
     no detector and are not scored;
   - the project's own Faker set (seeded values in sentence templates).
   Overlap matching: a labelled span is found when a prediction of its type overlaps
   it (recall); a prediction is right when it overlaps a labelled span of its type
   (precision). Predictions of types a set does not label count under "other".
   The engine is the one the gateway runs: the NER package (default: the pinned one,
   `--ner-model none`: rule recognizers only) with every recognizer, thresholds 0.4.
2. Redaction latency, everything on (every entity the engine detects, cache off):
   new 200-character and 2 KB texts cut from the outside set, p50 and p99.
3. `/v1/rank` throughput of one real gateway process (audit on, Cedar, consent,
   redaction) without `context.query` and with a 200-character query holding PII,
   measured in alternating rounds in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from faker import Faker

from bench.servers import (
    fetch_token,
    free_port,
    gateway_command,
    gateway_env,
    lift_client_limits,
    load,
    running,
)
from gateway.datadir import init_data_dir
from gateway.derivation import DerivedKeys
from privacy.components import shared_analyzer
from privacy.redaction import RedactionRules, Redactor

PATTERN_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "URL",
    "US_SSN",
    "US_PASSPORT",
    "DATE_TIME",
)
NER_ENTITIES = ("PERSON", "LOCATION")

# {X} is the value; templates with context words first, bare ones after.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "EMAIL_ADDRESS": (
        "please email me at {X} about the order",
        "my address is {X} if you need it",
        "recommendations from {X} were great",
    ),
    "PHONE_NUMBER": (
        "my phone number is {X}, text me",
        "reach me by telephone at {X} tomorrow",
        "mobile {X} works best",
    ),
    "CREDIT_CARD": (
        "I paid with my credit card {X} last week",
        "charge the card {X} again",
        "{X} was declined",
    ),
    "IBAN_CODE": (
        "refund to my bank account IBAN {X} please",
        "wire the money to {X}",
    ),
    "IP_ADDRESS": (
        "the login came from ip {X} at night",
        "blocked address {X} twice",
    ),
    "URL": (
        "my watchlist is at {X} online",
        "see {X} for the trailer",
    ),
    "US_SSN": (
        "my social security number is {X}",
        "ssn {X} on the form",
    ),
    "US_PASSPORT": (
        "my passport number is {X} and it expires",
        "travel document passport {X} renewed",
    ),
    "DATE_TIME": (
        "I was born on {X} in a small town",
        "the subscription started {X}",
    ),
    "PERSON": (
        "my name is {X} and I like thrillers",
        "recommended by {X} yesterday",
    ),
    "LOCATION": (
        "I live in {X} and watch at night",
        "movies filmed in {X}",
    ),
}
FILLERS = (
    "something funny for a rainy evening",
    "space adventure with a happy ending",
    "documentaries about the ocean and whales",
    "a classic western with great music",
    "romantic comedy set in a bakery",
)


def _value(fake: Faker, entity: str) -> str:
    return {
        "EMAIL_ADDRESS": fake.email,
        "PHONE_NUMBER": fake.phone_number,
        "CREDIT_CARD": fake.credit_card_number,
        "IBAN_CODE": fake.iban,
        "IP_ADDRESS": fake.ipv4_public,
        "URL": fake.url,
        "US_SSN": fake.ssn,
        "US_PASSPORT": fake.passport_number,
        "DATE_TIME": lambda: fake.date(pattern="%Y-%m-%d"),
        "PERSON": fake.name,
        "LOCATION": fake.city,
    }[entity]()


@dataclass(frozen=True)
class Sample:
    text: str
    spans: tuple[tuple[str, int, int], ...]


def labelled_set(n: int, seed: int, entities: tuple[str, ...]) -> list[Sample]:
    """n samples: one or two PII values each in templates, plus PII-free fillers."""
    fake = Faker("en_US")
    Faker.seed(seed)
    rng = random.Random(seed)
    samples: list[Sample] = []
    for i in range(n):
        if i % 10 == 9:
            samples.append(Sample(rng.choice(FILLERS), ()))
            continue
        parts: list[str] = []
        spans: list[tuple[str, int, int]] = []
        for _ in range(rng.choice((1, 1, 2))):
            entity = entities[rng.randrange(len(entities))]
            template = rng.choice(TEMPLATES[entity])
            value = _value(fake, entity)
            prefix = " ".join(parts) + (" " if parts else "")
            head, tail = template.split("{X}")
            start = len(prefix) + len(head)
            spans.append((entity, start, start + len(value)))
            parts.append(head + value + tail)
        samples.append(Sample(" ".join(parts), tuple(spans)))
    return samples


# Outside-set labels -> the engine's entity types (None: no detector, not scored).
OUTSIDE_TYPES: dict[str, str | None] = {
    "STREET_ADDRESS": "LOCATION",
    "GPE": "LOCATION",
    "ZIP_CODE": "LOCATION",
    "DOMAIN_NAME": "URL",
    "AGE": None,
    "TITLE": None,
}


def outside_set(n: int, seed: int) -> list[Sample]:
    """n sentences from presidio-evaluator's generator: its templates, its person records
    (FakeNameGenerator), its address and phone formats. Templates that need its hospital
    list are left out: that provider queries Wikidata over the network."""
    import contextlib
    import io

    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from presidio_evaluator.data_generator import (
            PresidioSentenceFaker,
            presidio_additional_entity_providers,
            presidio_templates_file_path,
        )
        from presidio_evaluator.data_generator.faker_extensions import HospitalProvider
    except ImportError as exc:
        raise SystemExit(f"bench/pii needs the eval extra (presidio-evaluator): {exc}") from exc
    templates = [
        line.strip()
        for line in presidio_templates_file_path.read_text().splitlines()
        if line.strip() and "hospital" not in line.lower()
    ]
    providers = [p for p in presidio_additional_entity_providers if p is not HospitalProvider]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        faker = PresidioSentenceFaker(
            "en_US",
            lower_case_ratio=0.05,
            sentence_templates=templates,
            entity_providers=providers,
            random_seed=seed,
        )
        generated = faker.generate_new_fake_sentences(n)
    samples = []
    for sentence in generated:
        spans = []
        for span in sentence.spans:
            etype = OUTSIDE_TYPES.get(span.entity_type, span.entity_type)
            if etype is not None:
                spans.append((etype, span.start_position, span.end_position))
        samples.append(Sample(sentence.full_text, tuple(spans)))
    return samples


@dataclass
class Tally:
    gold: int = 0
    found: int = 0  # labelled spans overlapped by a prediction of their type
    predicted: int = 0
    right: int = 0  # predictions overlapping a labelled span of their type

    def prf(self) -> tuple[float, float, float]:
        p = self.right / self.predicted if self.predicted else float("nan")
        r = self.found / self.gold if self.gold else float("nan")
        f = 2 * p * r / (p + r) if self.right and self.found else 0.0
        return p, r, f


def score(redactor: Redactor, rules: RedactionRules, samples: list[Sample]) -> dict[str, Tally]:
    """entity -> Tally, overlap matching (see the module doc); "other": predicted types
    the set has no label for."""
    labelled = {e for s in samples for e, _, _ in s.spans}
    tallies: dict[str, Tally] = {e: Tally() for e in sorted(labelled)}
    tallies["other"] = Tally()
    for sample in samples:
        found = [(f.entity_type, f.start, f.end) for f in redactor.analyze(sample.text, rules)]
        for etype, start, end in sample.spans:
            tallies[etype].gold += 1
            if any(p == etype and ps < end and start < pe for p, ps, pe in found):
                tallies[etype].found += 1
        for etype, start, end in found:
            tally = tallies[etype] if etype in labelled else tallies["other"]
            tally.predicted += 1
            if any(g == etype and gs < end and start < ge for g, gs, ge in sample.spans):
                tally.right += 1
    return tallies


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (
        statistics.median(ordered) * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def latency(
    redactor: Redactor, rules: RedactionRules, samples: list[Sample], seed: int
) -> list[tuple[str, float, float, int]]:
    """Cold redaction (every text new, cache off) of 200-character and 2 KB texts cut from
    the outside set's sentences."""
    rng = random.Random(seed + 1)
    sentences = [s.text for s in samples]
    rows = []
    for size, label, n in ((200, "200 chars", 400), (2048, "2 KB", 100)):
        texts = []
        for i in range(n):
            parts: list[str] = [f"({i})"]
            while sum(len(p) + 1 for p in parts) < size:
                parts.append(rng.choice(sentences))
            texts.append(" ".join(parts)[:size])
        for text in texts[:10]:  # warm the code paths, not the cache (it is off)
            redactor.redact(text + " warm", rules, "tenant")
        took: list[float] = []
        for text in texts:
            started = time.perf_counter()
            redactor.redact(text, rules, "tenant")
            took.append(time.perf_counter() - started)
        rows.append((label, *percentiles(took), n))
    return rows


def throughput(duration: float, rounds: int, conc: int) -> list[tuple[str, dict[str, float]]]:
    work = Path(tempfile.mkdtemp(prefix="bench-pii-"))
    report = init_data_dir(work / "data")
    lift_client_limits(report.data_dir)
    items = [f"i{n}" for n in range(1, 101)]
    query = (
        "space adventure like the one maria.keller@example.org liked, my phone 212-555-0199, "
        "paid with card 4111 1111 1111 1111 from 203.0.113.54, something funny for tonight"
    )[:200]
    plain, texty = work / "plain.json", work / "text.json"
    plain.write_text(json.dumps({"user_id": "u7", "item_ids": items}))
    texty.write_text(json.dumps({"user_id": "u7", "item_ids": items, "context": {"query": query}}))
    port = free_port()
    results: dict[str, list[dict[str, float]]] = {"no text": [], "200-char query": []}
    with running(
        [(gateway_command(report.data_dir, port), gateway_env(), f"http://127.0.0.1:{port}/readyz")]
    ):
        token = fetch_token(port, report.client_secrets["demo"].read_text().strip())
        for _ in range(rounds):
            for label, body in (("no text", plain), ("200-char query", texty)):
                results[label].append(load(port, "/v1/rank", body, token, conc, duration / rounds))
    merged = []
    for label, runs in results.items():
        errors = sum(r["errors"] for r in runs)
        if errors:
            raise SystemExit(f"non-200 responses with {label}: {runs}")
        merged.append(
            (label, {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")})
        )
    return merged


def _number(x: float) -> str:
    return "-" if x != x else f"{x:.3f}"  # nan: nothing to divide by


def _cell(tally: Tally) -> str:
    p, r, f = tally.prf()
    return f"{tally.gold} | {_number(p)} | {_number(r)} | {_number(f)}"


def main() -> None:
    from privacy.recognizers import ner_package

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1500, help="outside-set sentences")
    parser.add_argument("--faker-samples", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--ner-model", default=ner_package.PACKAGE, help="an installed spaCy package, or none"
    )
    parser.add_argument(
        "--duration", type=float, default=6.0, help="seconds per throughput variant"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    ner = None if args.ner_model.lower() == "none" else args.ner_model

    outside = outside_set(args.samples, args.seed)
    faker = labelled_set(args.faker_samples, args.seed, PATTERN_ENTITIES + NER_ENTITIES)
    redactor = Redactor(shared_analyzer(ner), keys=DerivedKeys(b"b" * 32), cache_size=0)
    rules = RedactionRules(entities=frozenset(redactor.entities), fingerprint="bench")
    pipeline = f"{ner} (ner only) + rule recognizers" if ner else "rule recognizers only"
    spans = sum(len(s.spans) for s in outside)
    print(
        f"bench/pii: engine {pipeline}, every entity on ({len(redactor.entities)} types), "
        f"threshold {rules.default_threshold}, seed {args.seed}, cores={os.cpu_count()}, "
        f"1 thread; outside set: presidio-evaluator generator, {len(outside)} samples, "
        f"{spans} labelled spans; own set: Faker, {len(faker)} samples"
    )
    ours, theirs = score(redactor, rules, faker), score(redactor, rules, outside)
    print("\n| entity | outside: support | P | R | F1 | Faker: support | P | R | F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for entity in sorted((set(ours) | set(theirs)) - {"other"}):
        left = _cell(theirs[entity]) if entity in theirs else "- | - | - | -"
        right = _cell(ours[entity]) if entity in ours else "- | - | - | -"
        print(f"| {entity} | {left} | {right} |")
    print(
        f"(unscored: {theirs['other'].predicted} / {ours['other'].predicted} predictions of "
        f"types the outside / Faker set does not label, e.g. national ids)"
    )
    print("\nredaction latency, everything on, cache off, new texts (Redactor.redact)")
    print("| text | n | p50 | p99 |")
    print("|---|---|---|---|")
    for label, p50, p99, n in latency(redactor, rules, outside, args.seed):
        print(f"| {label} | {n} | {p50:.2f} ms | {p99:.2f} ms |")

    if args.skip_throughput:
        return
    rows = throughput(args.duration, args.rounds, args.concurrency)
    base = rows[0][1]["rps"]
    print(
        f"\n/v1/rank throughput: 1 gateway process (audit on, consent + redaction stages), "
        f"100 candidates, concurrency {args.concurrency}, {args.duration:.0f} s per variant in "
        f"{args.rounds} alternating rounds (medians); the query repeats, as search queries do"
    )
    print("| request | rps | p50 | p99 | rps vs no text |")
    print("|---|---|---|---|---|")
    for label, r in rows:
        print(
            f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms "
            f"| {r['rps'] / base:.2f} |"
        )


if __name__ == "__main__":
    main()
