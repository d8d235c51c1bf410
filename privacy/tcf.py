"""IAB TCF v2.2 TC strings, decoded the way the IAB reference library decodes them.

The reference is `@iabtechlabtcf/core` (`TCString.decode`); tests/privacy/
test_tcf_oracle.py runs it on the same strings and compares every field read here.
Its rules, kept on purpose, including the odd ones:

- each `.`-separated segment is base64url without padding; any other character, or
  an empty segment, rejects the string. Bits past the last field are padding and
  ignored; reading a field past the end of its segment rejects the string;
- the segment type is the first 3 bits; the core segment's version must be 2;
- CmpId must be above 1; a publisher country code must decode to letters;
- a vendor section is a bit field of MaxVendorId bits or a list of single ids and
  ranges. A range entry may exceed MaxVendorId (the reference keeps those ids), a
  range whose end is below its start adds nothing, vendor id 0 rejects the string;
- a publisher restriction range whose end is below its start rejects the string; a
  restriction with a vendor must name a purpose above 0 and a type 0-2; one without
  vendors is dropped; repeated (purpose, type) restrictions are merged.

Stricter than the reference, each failing closed (the string is malformed, so no
consent): a TCF v1 string (the reference decodes it as version 1; v1 is retired), a
string whose first segment is not the core segment, a segment type repeated, and a
string longer than MAX_CHARS. Vendor ids are kept as merged ranges, so a hostile
string of thousands of 1-65535 ranges costs no more than a short one.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

MAX_CHARS = 8_192  # far above a real string; bounds the decoder's work
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEXTET = {c: i for i, c in enumerate(_ALPHABET)}

CORE, VENDORS_DISCLOSED, VENDORS_ALLOWED, PUBLISHER_TC = 0, 1, 2, 3
NOT_ALLOWED, REQUIRE_CONSENT, REQUIRE_LI = 0, 1, 2


class TcStringError(ValueError):
    """The string is not a TC string the reference decoder (or this stricter one) accepts.
    The message names the field, never the string's content."""


@dataclass(frozen=True)
class IdSet:
    """Positive ids as sorted, disjoint, non-adjacent inclusive ranges."""

    ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, spans: Iterable[tuple[int, int]]) -> IdSet:
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return cls(tuple(merged))

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, int):
            return False
        at = bisect.bisect_right(self.ranges, item, key=lambda span: span[0]) - 1
        return at >= 0 and self.ranges[at][0] <= item <= self.ranges[at][1]

    def __iter__(self) -> Iterator[int]:
        for start, end in self.ranges:
            yield from range(start, end + 1)

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in self.ranges)


NO_IDS = IdSet()


@dataclass(frozen=True)
class Restriction:
    """A publisher restriction: for `vendors`, `purpose` is not allowed (type 0), needs
    consent (1) or needs legitimate interest (2)."""

    purpose: int
    type: int
    vendors: IdSet


@dataclass(frozen=True)
class TcString:
    version: int
    created_ds: int  # deciseconds since the epoch, as encoded
    last_updated_ds: int
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    is_service_specific: bool
    use_non_standard_texts: bool
    special_feature_optins: frozenset[int]
    purpose_consents: frozenset[int]
    purpose_legitimate_interests: frozenset[int]
    purpose_one_treatment: bool
    publisher_country_code: str
    vendor_consents: IdSet
    vendor_legitimate_interests: IdSet
    publisher_restrictions: tuple[Restriction, ...]
    vendors_disclosed: IdSet = NO_IDS
    vendors_allowed: IdSet = NO_IDS
    publisher_consents: frozenset[int] = frozenset()
    publisher_legitimate_interests: frozenset[int] = frozenset()
    num_custom_purposes: int = 0
    publisher_custom_consents: frozenset[int] = frozenset()
    publisher_custom_legitimate_interests: frozenset[int] = frozenset()


@dataclass
class _Bits:
    bits: str
    at: int = 0

    def uint(self, width: int, name: str) -> int:
        if self.at + width > len(self.bits):
            raise TcStringError(f"{name}: past the end of its segment")
        value = int(self.bits[self.at : self.at + width], 2) if width else 0
        self.at += width
        return value

    def flag(self, name: str) -> bool:
        return self.uint(1, name) == 1

    def field(self, width: int, name: str) -> frozenset[int]:
        """A fixed bit field: bit i (from 1) set means id i is in."""
        chunk = self.uint(width, name)
        return frozenset(i for i in range(1, width + 1) if chunk >> (width - i) & 1)

    def letters(self, name: str) -> str:
        return chr(65 + self.uint(6, name)) + chr(65 + self.uint(6, name))


def _vendor_section(bits: _Bits, name: str) -> IdSet:
    max_id = bits.uint(16, name)
    if not bits.flag(name):  # bit field
        return IdSet.of((v, v) for v in bits.field(max_id, name))
    spans: list[tuple[int, int]] = []
    for _ in range(bits.uint(12, name)):
        is_range = bits.flag(name)
        start = bits.uint(16, name)
        end = bits.uint(16, name) if is_range else start
        if start > end:
            continue  # the reference adds nothing for it
        if start == 0:
            raise TcStringError(f"{name}: vendor id 0")
        spans.append((start, end))
    return IdSet.of(spans)


def _restrictions(bits: _Bits) -> tuple[Restriction, ...]:
    found: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for _ in range(bits.uint(12, "publisher restrictions")):
        purpose = bits.uint(6, "restriction purpose")
        kind = bits.uint(2, "restriction type")
        spans: list[tuple[int, int]] = []
        for _ in range(bits.uint(12, "restriction entries")):
            is_range = bits.flag("restriction entry")
            start = bits.uint(16, "restriction vendor")
            end = bits.uint(16, "restriction vendor") if is_range else start
            if end < start:
                raise TcStringError("restriction vendor range ends before it starts")
            spans.append((start, end))
        if spans and (purpose == 0 or kind > REQUIRE_LI):
            raise TcStringError("restriction purpose or type out of range")
        if spans:
            found.setdefault((purpose, kind), []).extend(spans)
    return tuple(Restriction(p, k, IdSet.of(s)) for (p, k), s in sorted(found.items()))


def _core(bits: _Bits) -> TcString:
    version = bits.uint(6, "version")
    if version != 2:
        raise TcStringError("not a TCF v2 string")
    created, updated = bits.uint(36, "created"), bits.uint(36, "last updated")
    cmp_id = bits.uint(12, "cmp id")
    if cmp_id <= 1:
        raise TcStringError("cmp id must be above 1")
    cmp_version, screen = bits.uint(12, "cmp version"), bits.uint(6, "consent screen")
    language = bits.letters("consent language")
    vendor_list, policy = bits.uint(12, "vendor list version"), bits.uint(6, "policy version")
    service_specific, non_standard = bits.flag("service specific"), bits.flag("texts")
    features = bits.field(12, "special features")
    consents, interests = bits.field(24, "purposes"), bits.field(24, "purposes LI")
    one_treatment = bits.flag("purpose one treatment")
    country = bits.letters("publisher country code")
    if not all("A" <= c <= "z" for c in country):  # the reference's /^[A-z]{2}$/
        raise TcStringError("publisher country code is not two letters")
    return TcString(
        version=version,
        created_ds=created,
        last_updated_ds=updated,
        cmp_id=cmp_id,
        cmp_version=cmp_version,
        consent_screen=screen,
        consent_language=language,
        vendor_list_version=vendor_list,
        policy_version=policy,
        is_service_specific=service_specific,
        use_non_standard_texts=non_standard,
        special_feature_optins=features,
        purpose_consents=consents,
        purpose_legitimate_interests=interests,
        purpose_one_treatment=one_treatment,
        publisher_country_code=country.upper(),
        vendor_consents=_vendor_section(bits, "vendor consents"),
        vendor_legitimate_interests=_vendor_section(bits, "vendor legitimate interests"),
        publisher_restrictions=_restrictions(bits),
    )


def _publisher_tc(bits: _Bits) -> dict[str, object]:
    consents, interests = bits.field(24, "publisher purposes"), bits.field(24, "publisher LI")
    custom = bits.uint(6, "custom purposes")
    return {
        "publisher_consents": consents,
        "publisher_legitimate_interests": interests,
        "num_custom_purposes": custom,
        "publisher_custom_consents": bits.field(custom, "custom consents"),
        "publisher_custom_legitimate_interests": bits.field(custom, "custom LI"),
    }


def _bits_of(segment: str) -> str:
    if not _BASE64URL.fullmatch(segment):
        raise TcStringError("segment is not base64url")
    return "".join(format(_SEXTET[c], "06b") for c in segment)


def decode(text: str) -> TcString:
    """Decode a TC string; raises TcStringError for anything the decoder refuses."""
    if len(text) > MAX_CHARS:
        raise TcStringError("longer than any real TC string")
    segments = [_Bits(_bits_of(s)) for s in text.split(".")]
    kinds = [bits.uint(3, "segment type") for bits in segments]
    if kinds[0] != CORE:
        raise TcStringError("the first segment is not the core segment")
    if len(set(kinds)) != len(kinds) or max(kinds) > PUBLISHER_TC:
        raise TcStringError("segment type repeated or unknown")
    segments[0].at = 0  # the core segment's type bits are its version's first bits
    core = _core(segments[0])
    extra: dict[str, object] = {}
    for kind, bits in zip(kinds[1:], segments[1:], strict=True):
        if kind == VENDORS_DISCLOSED:
            extra["vendors_disclosed"] = _vendor_section(bits, "vendors disclosed")
        elif kind == VENDORS_ALLOWED:
            extra["vendors_allowed"] = _vendor_section(bits, "vendors allowed")
        else:
            extra.update(_publisher_tc(bits))
    return replace(core, **extra)  # type: ignore[arg-type]
