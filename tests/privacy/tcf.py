"""A minimal IAB TCF v2 core-string encoder for tests (the library under test only decodes).

Field widths follow the TCF v2.2 "TC String" core segment specification.
"""

from __future__ import annotations

import base64


def _bits(value: int, width: int) -> str:
    return format(value, f"0{width}b")


def _letters(code: str) -> str:
    return "".join(_bits(ord(c) - ord("A"), 6) for c in code.upper())


def _runs(vendors: set[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for vendor in sorted(vendors):
        if runs and vendor == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], vendor)
        else:
            runs.append((vendor, vendor))
    return runs


def _vendor_section(vendors: set[int], max_vendor: int, range_encoding: bool) -> str:
    """IsRangeEncoding, then a bit field, or NumEntries and (IsARange, start[, end]) each."""
    if not range_encoding:
        return "0" + "".join("1" if v in vendors else "0" for v in range(1, max_vendor + 1))
    runs = _runs(vendors)
    entries = "".join(
        ("1" + _bits(start, 16) + _bits(end, 16)) if end > start else ("0" + _bits(start, 16))
        for start, end in runs
    )
    return "1" + _bits(len(runs), 12) + entries


def encode_core(
    *,
    purposes: set[int],
    vendors: set[int] = frozenset(),  # type: ignore[assignment]
    policy_version: int = 4,
    deciseconds: int = 17_000_000_000,
    range_encoding: bool = False,
) -> str:
    max_vendor = max(vendors, default=0)
    fields = [
        _bits(2, 6),  # Version
        _bits(deciseconds, 36),  # Created
        _bits(deciseconds, 36),  # LastUpdated
        _bits(7, 12),  # CmpId
        _bits(1, 12),  # CmpVersion
        _bits(1, 6),  # ConsentScreen
        _letters("EN"),  # ConsentLanguage
        _bits(150, 12),  # VendorListVersion
        _bits(policy_version, 6),  # TcfPolicyVersion
        "1",  # IsServiceSpecific
        "0",  # UseNonStandardTexts
        _bits(0, 12),  # SpecialFeatureOptIns
        "".join("1" if p in purposes else "0" for p in range(1, 25)),  # PurposesConsent
        _bits(0, 24),  # PurposesLITransparency
        "0",  # PurposeOneTreatment
        _letters("DE"),  # PublisherCC
        _bits(max_vendor, 16),  # MaxVendorId (consent)
        _vendor_section(vendors, max_vendor, range_encoding),
        _bits(0, 16),  # MaxVendorId (legitimate interest)
        "0",
        _bits(0, 12),  # NumPubRestrictions
    ]
    bitstring = "".join(fields)
    bitstring += "0" * (-len(bitstring) % 8)
    raw = int(bitstring, 2).to_bytes(len(bitstring) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
