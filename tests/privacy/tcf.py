"""TCF test helpers: a bit-level TC string encoder and the IAB reference library as oracle.

The encoder writes the TCF v2.2 core segment field by field (widths from the "TC String"
specification) and can write what no CMP would (vendor id 0, reversed ranges, CmpId 0,
a version 3), so edge cases reach both decoders. The oracle is tests/privacy/tcf_oracle/
oracle.cjs over `@iabtechlabtcf/core`, installed by scripts/test.sh (`npm ci`).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

ORACLE_DIR = Path(__file__).resolve().parent / "tcf_oracle"
ORACLE = ORACLE_DIR / "oracle.cjs"
REFERENCE = ORACLE_DIR / "node_modules" / "@iabtechlabtcf" / "core" / "package.json"

Span = tuple[int, int]


def _bits(value: int, width: int) -> str:
    return format(value, f"0{width}b")


def _letters(code: str) -> str:
    return "".join(_bits(ord(c) - ord("A"), 6) for c in code.upper())


def _runs(vendors: Iterable[int]) -> list[Span]:
    runs: list[Span] = []
    for vendor in sorted(vendors):
        if runs and vendor == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], vendor)
        else:
            runs.append((vendor, vendor))
    return runs


def range_entries(spans: Sequence[Span]) -> str:
    """NumEntries, then (IsARange, start[, end]) per span: a span (a, a) is a single id."""
    return _bits(len(spans), 12) + "".join(
        ("1" + _bits(start, 16) + _bits(end, 16)) if end != start else ("0" + _bits(start, 16))
        for start, end in spans
    )


def vendor_section(
    vendors: Iterable[int] = (),
    *,
    range_encoding: bool = False,
    max_vendor: int | None = None,
    spans: Sequence[Span] | None = None,
) -> str:
    """MaxVendorId, IsRangeEncoding, then a bit field or range entries (`spans` verbatim)."""
    chosen = set(vendors)
    top = max(chosen, default=0) if max_vendor is None else max_vendor
    if not range_encoding:
        return (
            _bits(top, 16) + "0" + "".join("1" if v in chosen else "0" for v in range(1, top + 1))
        )
    return _bits(top, 16) + "1" + range_entries(_runs(chosen) if spans is None else spans)


def restrictions_section(restrictions: Sequence[tuple[int, int, Sequence[Span]]]) -> str:
    """NumPubRestrictions, then (PurposeId, RestrictionType, range entries) each."""
    return _bits(len(restrictions), 12) + "".join(
        _bits(purpose, 6) + _bits(kind, 2) + range_entries(spans)
        for purpose, kind, spans in restrictions
    )


def to_base64url(bitstring: str) -> str:
    bitstring += "0" * (-len(bitstring) % 8)
    raw = int(bitstring, 2).to_bytes(len(bitstring) // 8, "big") if bitstring else b""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def encode_core(
    *,
    purposes: Iterable[int],
    vendors: Iterable[int] = (),
    policy_version: int = 4,
    deciseconds: int = 17_000_000_000,
    range_encoding: bool = False,
    version: int = 2,
    cmp_id: int = 7,
    vendor_list_version: int = 150,
    country: str = "DE",
    consents_section: str | None = None,
    restrictions: Sequence[tuple[int, int, Sequence[Span]]] = (),
) -> str:
    fields = [
        _bits(version, 6),
        _bits(deciseconds, 36),  # Created
        _bits(deciseconds, 36),  # LastUpdated
        _bits(cmp_id, 12),
        _bits(1, 12),  # CmpVersion
        _bits(1, 6),  # ConsentScreen
        _letters("EN"),  # ConsentLanguage
        _bits(vendor_list_version, 12),
        _bits(policy_version, 6),
        "1",  # IsServiceSpecific
        "0",  # UseNonStandardTexts
        _bits(0, 12),  # SpecialFeatureOptIns
        "".join("1" if p in set(purposes) else "0" for p in range(1, 25)),  # PurposesConsent
        _bits(0, 24),  # PurposesLITransparency
        "0",  # PurposeOneTreatment
        "".join(_bits(ord(c) - ord("A"), 6) for c in country),  # PublisherCC, raw
        consents_section or vendor_section(vendors, range_encoding=range_encoding),
        vendor_section(),  # vendor legitimate interests
        restrictions_section(restrictions),
    ]
    return to_base64url("".join(fields))


# -- the oracle ------------------------------------------------------------


def oracle_unavailable() -> str | None:
    """Why the reference library cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not REFERENCE.is_file():
        return f"@iabtechlabtcf/core is not installed (run: npm ci --prefix {ORACLE_DIR})"
    return None


def require_oracle() -> None:
    """Skip, loudly, when the oracle cannot run: a skipped comparison proves nothing."""
    reason = oracle_unavailable()
    if reason is not None:
        message = f"TCF reference oracle unavailable, decoder NOT COMPARED: {reason}"
        print(f"WARNING: {message}", file=sys.stderr)
        pytest.skip(message)


def oracle(
    decode: Sequence[str] = (), encode: Sequence[dict[str, Any]] = ()
) -> dict[str, list[Any]]:
    """One run of the reference library over many strings and specs (skips, loudly, when
    it cannot run)."""
    require_oracle()
    request = json.dumps({"decode": list(decode), "encode": list(encode)})
    done = subprocess.run(
        ["node", str(ORACLE)],
        input=request,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, list[Any]] = json.loads(done.stdout)
    return result
