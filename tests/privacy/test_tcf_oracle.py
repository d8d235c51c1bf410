"""privacy/tcf.py against the IAB reference library (@iabtechlabtcf/core) as oracle.

Every string is decoded by both. Where the reference decodes it, ours gives the same
purposes, vendors, restrictions and versions (every field, in fact), or refuses it for
one of the documented stricter reasons; where the reference refuses it, ours refuses
it too, and the gateway then treats it as no consent.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from policies.data_policy import ConsentPolicy
from privacy.consent_stage import decide
from privacy.consent_store import ConsentEntry
from privacy.signals import decode_tcf
from privacy.tcf import MAX_CHARS, IdSet, TcString, TcStringError, decode
from tests.privacy.tcf import (
    ORACLE_DIR,
    encode_core,
    oracle,
    vendor_section,
)

FIXTURES = json.loads((ORACLE_DIR / "fixtures.json").read_text())["strings"]
_SEXTET = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
VENDOR_ENCODING_BIT = 229  # core: 213 bits of fixed fields, then MaxVendorId (16)


def ours(text: str) -> dict[str, Any]:
    """Our decoding in the oracle's shape; {"ok": False, ...} when refused."""
    try:
        tc = decode(text)
    except TcStringError as exc:
        return {"ok": False, "error": str(exc)}
    out: dict[str, Any] = {"ok": True}
    for name in TcString.__dataclass_fields__:
        value = getattr(tc, name)
        if isinstance(value, IdSet | frozenset):
            value = sorted(value)
        elif name == "publisher_restrictions":
            value = [
                {"purpose": r.purpose, "type": r.type, "vendors": list(r.vendors)} for r in value
            ]
        out[name] = value
    return out


def stricter_reason(text: str, reference: dict[str, Any]) -> str | None:
    """Why ours may refuse what the reference decodes (see privacy/tcf.py); None: no reason."""
    if len(text) > MAX_CHARS:
        return "longer than MAX_CHARS"
    if reference.get("version") == 1:
        return "TCF v1"
    kinds = [_SEXTET[s[0]] >> 3 for s in text.split(".")]
    if kinds[0] != 0:
        return "first segment not core"
    if len(set(kinds)) != len(kinds):
        return "segment type repeated"
    return None


def assert_same(texts: list[str]) -> dict[str, int]:
    """Decode with both; returns how many each outcome had, for the caller to check."""
    reference = oracle(decode=texts)["decoded"]
    seen = {"same": 0, "both refuse": 0, "stricter": 0}
    for text, want in zip(texts, reference, strict=True):
        got = ours(text)
        if not want["ok"]:
            assert not got["ok"], f"reference refuses, ours decodes: {text[:120]!r}"
            assert decode_tcf(text).state == "malformed"
            seen["both refuse"] += 1
        elif got["ok"]:
            want.pop("ok"), got.pop("ok")
            assert got == want, f"decoded differently: {text[:120]!r}"
            seen["same"] += 1
        else:
            assert stricter_reason(text, want), (
                f"ours refuses what the reference reads: {text[:120]!r}"
            )
            seen["stricter"] += 1
    return seen


def test_every_string_of_the_reference_test_suite() -> None:
    texts = [f["tc_string"] for f in FIXTURES]
    reference = oracle(decode=texts)["decoded"]
    for fixture, want in zip(FIXTURES, reference, strict=True):
        # The fixture file says what each test expects; the installed library agrees.
        assert want["ok"] is (fixture["reference"] != "rejects"), fixture["test"]
        assert ours(fixture["tc_string"])["ok"] is (fixture["ours"] == "same"), fixture["test"]
    assert assert_same(texts) == {"same": 3, "both refuse": 1, "stricter": 2}
    # Issue 201's string: a restriction repeated for the same vendors is read once.
    issue_201 = decode(FIXTURES[4]["tc_string"])
    first = next(r for r in issue_201.publisher_restrictions if (r.purpose, r.type) == (1, 1))
    assert list(first.vendors) == [7, 20, 71, 122, 140, 183]


def _random_ids(rng: random.Random, top: int) -> list[int]:
    shape = rng.choice(["none", "few", "dense", "runs", "sparse"])
    if shape == "none":
        return []
    if shape == "few":
        return rng.sample(range(1, top + 1), rng.randint(1, min(5, top)))
    if shape == "dense":
        return [v for v in range(1, top + 1) if rng.random() < 0.6]
    if shape == "runs":
        start = rng.randint(1, top)
        return list(range(start, min(top, start + rng.randint(1, 400)) + 1))
    return rng.sample(range(1, 65_535), rng.randint(1, 30))


def _spec(rng: random.Random) -> dict[str, Any]:
    top = rng.choice([1, 10, 100, 1_000, 3_000])
    restrictions = [
        {"purpose": rng.randint(1, 24), "type": rng.randint(0, 2), "vendors": ids}
        for _ in range(rng.randint(0, 4))
        if (ids := _random_ids(rng, top))
    ]
    optional = ["vendorsDisclosed", "vendorsAllowed", "publisherTC"]
    segments = ["core", *rng.sample(optional, rng.randint(0, 3))]
    custom = rng.randint(0, 10)
    return {
        "cmpId": rng.randint(2, 4_095),
        "cmpVersion": rng.randint(0, 4_095),
        "consentScreen": rng.randint(0, 63),
        "consentLanguage": rng.choice(["EN", "DE", "FR", "ZZ"]),
        "publisherCountryCode": rng.choice(["DE", "FR", "AA", "ZZ"]),
        "vendorListVersion": rng.randint(0, 4_095),
        "policyVersion": rng.choice([2, 4, 5, 63]),
        "isServiceSpecific": rng.random() < 0.5,
        "useNonStandardTexts": rng.random() < 0.5,
        "purposeOneTreatment": rng.random() < 0.5,
        "createdDs": rng.randint(0, 2**36 - 1),
        "lastUpdatedDs": rng.randint(0, 2**36 - 1),
        "specialFeatureOptins": rng.sample(range(1, 13), rng.randint(0, 12)),
        "purposeConsents": rng.sample(range(1, 25), rng.randint(0, 24)),
        "purposeLegitimateInterests": rng.sample(range(1, 25), rng.randint(0, 24)),
        "vendorConsents": _random_ids(rng, top),
        "vendorLegitimateInterests": _random_ids(rng, top),
        "vendorsDisclosed": _random_ids(rng, top),
        "vendorsAllowed": _random_ids(rng, top),
        "publisherConsents": rng.sample(range(1, 25), rng.randint(0, 24)),
        "publisherLegitimateInterests": rng.sample(range(1, 25), rng.randint(0, 24)),
        "numCustomPurposes": custom,
        "publisherCustomConsents": rng.sample(range(1, custom + 1), rng.randint(0, custom)),
        "publisherRestrictions": restrictions,
        # A vendor list with gaps: the reference joins restriction runs across them.
        "knownVendorIds": sorted(rng.sample(range(1, top + 1), max(1, top // 2)))
        if rng.random() < 0.3
        else None,
        "segments": segments,
    }


def _encoded_by_the_reference(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    specs = [_spec(rng) for _ in range(count)]
    for spec in specs:
        if spec["knownVendorIds"] is None:
            del spec["knownVendorIds"]
    return oracle(encode=specs)["encoded"]


def _vendor_encoding(text: str) -> str:
    bits = "".join(format(_SEXTET[c], "06b") for c in text.split(".")[0])
    return "range" if bits[VENDOR_ENCODING_BIT] == "1" else "bitfield"


def test_strings_the_reference_encodes_decode_the_same() -> None:
    texts = _encoded_by_the_reference(seed=2024, count=300)
    # The reference picks the shorter vendor encoding: both are covered.
    assert {_vendor_encoding(t) for t in texts} == {"range", "bitfield"}
    assert any(decode(t).publisher_restrictions for t in texts)
    assert assert_same(texts) == {"same": 300, "both refuse": 0, "stricter": 0}


@pytest.mark.parametrize("range_encoding", [False, True])
def test_both_vendor_encodings_read_alike(range_encoding: bool) -> None:
    vendors = {1, 2, 3, 9, 10, 11, 12, 755, 1_000, 2_047}
    texts = [
        encode_core(purposes={1, 3, 4}, vendors=vendors, range_encoding=range_encoding),
        encode_core(purposes=set(range(1, 25)), vendors=set(), range_encoding=range_encoding),
        encode_core(purposes=set(), vendors={4_095}, range_encoding=range_encoding),
        encode_core(purposes={1}, vendors={65_535}, range_encoding=range_encoding),
    ]
    # A bit field up to vendor 65535 is 10,923 characters: past MAX_CHARS, refused.
    assert assert_same(texts)["same"] == (4 if range_encoding else 3)
    assert set(decode(texts[0]).vendor_consents) == vendors


EDGES = {
    "vendor id 0 in a range entry": dict(
        consents_section=vendor_section(range_encoding=True, max_vendor=5, spans=[(0, 3)])
    ),
    "vendor id 0 alone": dict(
        consents_section=vendor_section(range_encoding=True, max_vendor=5, spans=[(0, 0)])
    ),
    "range ending before it starts": dict(
        consents_section=vendor_section(range_encoding=True, max_vendor=9, spans=[(9, 4), (2, 2)])
    ),
    "range past MaxVendorId": dict(
        consents_section=vendor_section(range_encoding=True, max_vendor=3, spans=[(2, 40)])
    ),
    "overlapping ranges": dict(
        consents_section=vendor_section(
            range_encoding=True, max_vendor=30, spans=[(5, 20), (10, 30), (7, 7)]
        )
    ),
    "range list with no entries": dict(
        consents_section=vendor_section(range_encoding=True, max_vendor=30, spans=[])
    ),
    "bit field of MaxVendorId 0": dict(consents_section=vendor_section(max_vendor=0)),
    "bit field longer than the string": dict(
        consents_section="0" * 15 + "1" + "0" + "1" * 64 + "0" * 16
    ),
    "cmp id 0": dict(cmp_id=0),
    "cmp id 1": dict(cmp_id=1),
    "cmp id 2": dict(cmp_id=2),
    "version 1 with v2 fields": dict(version=1),
    "version 3": dict(version=3),
    "version 0": dict(version=0),
    "version 34 (a segment type 4)": dict(version=34),
    "policy version 0": dict(policy_version=0),
    "policy version 63": dict(policy_version=63),
    "vendor list version 4095": dict(vendor_list_version=4_095),
    "created at the largest date": dict(deciseconds=2**36 - 1),
    "country code with non-letters": dict(country="A" + chr(65 + 58)),
    "country code lower case bits": dict(country="a["),
    "restriction purpose 0 with a vendor": dict(restrictions=[(0, 0, [(8, 8)])]),
    "restriction purpose 0 without vendors": dict(restrictions=[(0, 0, [])]),
    "restriction type 3": dict(restrictions=[(2, 3, [(8, 9)])]),
    "restriction range reversed": dict(restrictions=[(2, 0, [(9, 8)])]),
    "restriction of vendor 0": dict(restrictions=[(2, 0, [(0, 0)])]),
    "restriction repeated": dict(
        restrictions=[(2, 1, [(8, 8)]), (2, 1, [(3, 5)]), (1, 2, [(8, 8)])]
    ),
    "restriction purpose 63": dict(restrictions=[(63, 2, [(1, 65_535)])]),
}


def test_edge_cases_built_bit_by_bit() -> None:
    texts = [encode_core(purposes={1, 3, 4}, vendors={9}, **kw) for kw in EDGES.values()]  # type: ignore[arg-type]
    seen = assert_same(texts)
    assert seen["both refuse"] >= 10, seen
    assert seen["same"] >= 12, seen
    by_name = dict(zip(EDGES, texts, strict=True))
    assert set(decode(by_name["range past MaxVendorId"]).vendor_consents) == set(range(2, 41))
    assert not ours(by_name["vendor id 0 alone"])["ok"]


def _mutants(text: str, rng: random.Random) -> list[str]:
    cut = [text[:n] for n in range(1, len(text)) if n % 3 == 0 or n > len(text) - 6]
    flips = []
    for _ in range(40):
        at = rng.randrange(len(text))
        if text[at] == ".":
            continue
        flips.append(text[:at] + rng.choice(list(_SEXTET)) + text[at + 1 :])
    garbage = [
        text + suffix
        for suffix in (
            ".",
            "..",
            "=",
            "==",
            "!",
            " ",
            "\n",
            "A",
            "AAAA",
            ".A",
            ".IBAg",
            ".YAAA",
            ".QAagAQ",
            ".gAAA",
            ".A" * 3,
            "+",
            "/",
            "%3D",
        )
    ]
    others = [" " + text, text.replace("-", "+").replace("_", "/"), text.lower(), text.upper()]
    return cut + flips + garbage + others


def test_truncated_flipped_and_padded_strings() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    seeds = [f["tc_string"] for f in FIXTURES] + _encoded_by_the_reference(seed=99, count=12)
    texts = [m for s in seeds for m in _mutants(s, rng)]
    seen = assert_same(texts)
    assert seen["both refuse"] > 500, seen
    assert seen["same"] > 200, seen


def test_a_refused_string_never_grants() -> None:
    """Malformed means no consent: it denies, even against a stored grant."""
    policy = ConsentPolicy(tcf_purposes={"personalization": (1, 3, 4)})
    stored = {
        "personalization": ConsentEntry("personalization", True, "consent", "eu", "t", 1, "v")
    }
    grant = encode_core(purposes={1, 3, 4}, vendors={9})
    for broken in (grant[:-20], grant + "!", grant.replace("C", "D", 1), FIXTURES[1]["tc_string"]):
        assert oracle(decode=[broken])["decoded"][0]["ok"] is False
        signal = decode_tcf(broken)
        assert signal.state == "malformed"
        assert signal.grants((1, 3, 4), None) is False
        decision = decide(policy, ("personalization",), stored, gpc=False, tcf=signal)
        assert decision.may_personalize is False
        assert decision.sources["personalization"] == "tcf"


def test_range_heavy_strings_stay_cheap() -> None:
    """Thousands of 1-65535 ranges: the reference loops over every id, ours keeps ranges."""
    spans = [(1, 65_535)] * 1_400
    hostile = encode_core(
        purposes={1},
        consents_section=vendor_section(range_encoding=True, max_vendor=1, spans=spans),
    )
    assert len(hostile) < 8_192
    assert len(decode(hostile).vendor_consents) == 65_535
    started = time.perf_counter()
    assert decode_tcf(hostile).state == "valid"
    assert time.perf_counter() - started < 0.5


def test_the_fixture_file_names_its_source() -> None:
    data = json.loads((Path(ORACLE_DIR) / "fixtures.json").read_text())
    assert "iabtcf-es" in data["source"]
    assert len(data["strings"]) == len({f["tc_string"] for f in data["strings"]})
