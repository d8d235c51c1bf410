"""bench/pii: PII detection quality, redaction latency, and /v1/rank cost of a text field.

    python -m bench.pii [--samples 600] [--seed 1234] [--ner-model PKG] [--duration 6]

1. A labelled set generated reproducibly: seeded Faker values in sentence
   templates (with and without context words), gold spans known by construction.
   Precision, recall, F1 per entity type, for the blank offline pipeline and, when
   `--ner-model` names an installed spaCy package, for that pipeline too.
   A prediction is a true positive when it overlaps a gold span of its type.
2. Redaction latency (the production `Redactor`, default-bundle-like rules) for
   200-character and 2 KB texts: cold (every text new) and cached (repeated).
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
from collections.abc import Callable
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


def score(
    redactor: Redactor, rules: RedactionRules, samples: list[Sample], entities: tuple[str, ...]
) -> dict[str, tuple[int, int, int]]:
    """entity -> (tp, fp, fn), overlap matching of same-type spans."""
    counts = {e: [0, 0, 0] for e in entities}
    for sample in samples:
        found = [(f.entity_type, f.start, f.end) for f in redactor.analyze(sample.text, rules)]
        matched_gold: set[int] = set()
        for etype, start, end in found:
            hit = next(
                (
                    k
                    for k, (g, gs, ge) in enumerate(sample.spans)
                    if g == etype and start < ge and gs < end and k not in matched_gold
                ),
                None,
            )
            if etype not in counts:
                continue
            if hit is None:
                counts[etype][1] += 1
            else:
                counts[etype][0] += 1
                matched_gold.add(hit)
        for k, (g, _, _) in enumerate(sample.spans):
            if k not in matched_gold:
                counts[g][2] += 1
    return {e: (c[0], c[1], c[2]) for e, c in counts.items()}


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else float("nan")  # nothing predicted
    r = tp / (tp + fn) if tp + fn else 1.0
    f = 2 * p * r / (p + r) if tp else 0.0
    return p, r, f


def text_of(fake: Faker, size: int, rng: random.Random) -> str:
    """A text of about `size` characters with PII sprinkled in (new every call)."""
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < size:
        if rng.random() < 0.3:
            entity = rng.choice(PATTERN_ENTITIES)
            parts.append(rng.choice(TEMPLATES[entity]).replace("{X}", _value(fake, entity)))
        else:
            parts.append(fake.sentence(nb_words=8))
    return " ".join(parts)[:size]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (
        statistics.median(ordered) * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def latency(
    redactor: Redactor, rules: RedactionRules, seed: int, n_cold: int, n_hot: int
) -> list[tuple[str, float, float]]:
    fake = Faker("en_US")
    Faker.seed(seed + 1)
    rng = random.Random(seed + 1)
    rows = []
    for size, label in ((200, "200 chars"), (2048, "2 KB")):
        texts = [text_of(fake, size, rng) for _ in range(n_cold)]
        cold: list[float] = []
        for text in texts:
            started = time.perf_counter()
            redactor.redact(text, rules, "tenant")
            cold.append(time.perf_counter() - started)
        hot: list[float] = []
        for i in range(n_hot):
            text = texts[i % 20]
            started = time.perf_counter()
            redactor.redact(text, rules, "tenant")
            hot.append(time.perf_counter() - started)
        rows.append((f"{label}, cold", *percentiles(cold)))
        rows.append((f"{label}, cached", *percentiles(hot)))
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


def quality_table(
    name: str, build: Callable[[], Redactor], entities: tuple[str, ...], samples: list[Sample]
) -> None:
    redactor = build()
    rules = RedactionRules(entities=frozenset(entities), fingerprint="bench")
    counts = score(redactor, rules, samples, entities)
    print(f"\nquality, pipeline {name} (threshold 0.4, overlap match)")
    print("| entity | support | precision | recall | F1 |")
    print("|---|---|---|---|---|")
    for entity, (tp, fp, fn) in counts.items():
        p, r, f = prf(tp, fp, fn)
        print(f"| {entity} | {tp + fn} | {p:.3f} | {r:.3f} | {f:.3f} |")
    pattern = [counts[e] for e in entities if e in PATTERN_ENTITIES]
    p, r, f = prf(*(sum(c[i] for c in pattern) for i in range(3)))
    support = sum(c[0] + c[2] for c in pattern)
    print(f"| pattern entities (micro) | {support} | {p:.3f} | {r:.3f} | {f:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--ner-model", default=None, help="an installed spaCy package")
    parser.add_argument(
        "--duration", type=float, default=6.0, help="seconds per throughput variant"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()

    print(
        f"bench/pii: seed {args.seed}, {args.samples} Faker-generated samples, "
        f"cores={os.cpu_count()}"
    )
    entities = PATTERN_ENTITIES + NER_ENTITIES
    samples = labelled_set(args.samples, args.seed, entities)

    def blank() -> Redactor:
        return Redactor(shared_analyzer(None), keys=DerivedKeys(b"b" * 32), cache_size=10_000)

    quality_table("blank (offline, pattern + context)", blank, entities, samples)
    if args.ner_model:

        def ner() -> Redactor:
            return Redactor(
                shared_analyzer(args.ner_model), keys=DerivedKeys(b"b" * 32), cache_size=10_000
            )

        quality_table(args.ner_model, ner, entities, samples)
    else:
        print("(no --ner-model given: PERSON/LOCATION need an installed spaCy NER package)")

    rules = RedactionRules(
        entities=frozenset(("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS")),
        operators={"EMAIL_ADDRESS": "pseudonymize", "PHONE_NUMBER": "mask"},
        fingerprint="bench",
    )
    pipelines = [("blank", blank())]
    if args.ner_model:
        pipelines.append((args.ner_model, ner()))
    print("\nredaction latency (Redactor.redact, default-jurisdiction rules, one thread)")
    print("| pipeline | text | p50 | p99 |")
    print("|---|---|---|---|")
    for name, redactor in pipelines:
        for label, p50, p99 in latency(redactor, rules, args.seed, n_cold=200, n_hot=2000):
            print(f"| {name} | {label} | {p50:.3f} ms | {p99:.3f} ms |")

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
