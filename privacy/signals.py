"""Per-request consent signals: Global Privacy Control and IAB TCF v2 consent strings.

- `Sec-GPC: 1` (the GPC spec; CCPA regulation 7025) is an opt-out of sale and
  sharing for the request's subject. Any other value is no signal.
- A TCF v2 TC string arrives in the `TCF-Consent` header. It is decoded with the
  `iab_tcf` package (`iab-tcf-bitarray`: the maintained fork of `iab-tcf`, same
  decoder, on `bitarray` wheels instead of a compiled 2022 fork). A string that
  does not decode, is not version 2, or is absurdly long is *malformed*, which
  means "no consent" for every purpose the bundle maps to TCF, never an error.
  The decoded purposes are mapped to our purposes by the bundle's
  `consent.tcf_purposes` (e.g. personalization: [1, 3, 4]): a purpose is granted
  only if every mapped TCF purpose has consent (and the vendor, if the bundle
  names our `tcf_vendor_id`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import iab_tcf  # type: ignore[import-untyped]

GPC_HEADER = "sec-gpc"
TCF_HEADER = "tcf-consent"
MAX_TC_STRING = 8_192  # far above a real string; bounds the decoder's work

TcfState = Literal["absent", "valid", "malformed"]


def gpc_opt_out(headers: Mapping[str, str]) -> bool:
    return headers.get(GPC_HEADER, "").strip() == "1"


@dataclass(frozen=True)
class TcfSignal:
    state: TcfState
    purposes: Mapping[int, bool] = field(default_factory=dict)
    vendors: frozenset[int] = frozenset()
    policy_version: int | None = None

    def grants(self, tcf_purposes: tuple[int, ...], vendor_id: int | None) -> bool:
        if self.state != "valid":
            return False
        if vendor_id is not None and vendor_id not in self.vendors:
            return False
        return all(self.purposes.get(p, False) for p in tcf_purposes)


ABSENT = TcfSignal("absent")
MALFORMED = TcfSignal("malformed")


def _consented_vendors(consent: Any) -> frozenset[int]:
    """The consent vendor section, bit field or range encoded (the decoder fills
    `consented_vendors` for the first only). Ids past MaxVendorId are not consented."""
    highest = int(consent.max_consent_vendor_id)
    if not consent.is_consent_range_encoding:
        return frozenset(int(k) for k, v in consent.consented_vendors.items() if v)
    found: set[int] = set()
    for start, end in consent.consented_vendors_range:
        first, last = int(start), min(int(end), highest)
        if not 1 <= first <= last:
            raise ValueError("malformed vendor range")
        found.update(range(first, last + 1))
    return frozenset(found)


def decode_tcf(raw: str | None) -> TcfSignal:
    """Decode a TC string; anything that is not a well-formed v2 string is MALFORMED."""
    if raw is None:
        return ABSENT
    text = raw.strip()
    if not text:
        return ABSENT
    if len(text) > MAX_TC_STRING:
        return MALFORMED
    try:
        consent = iab_tcf.decode_v2(text)
        if consent.version != 2:
            return MALFORMED
        purposes = {int(k): bool(v) for k, v in consent.purposes_consent.items()}
        vendors = _consented_vendors(consent)
        policy_version = int(consent.tcf_policy_version)
    except Exception:  # third-party decoder: any failure means "no consent"
        return MALFORMED
    return TcfSignal("valid", purposes, vendors, policy_version)


def tcf_from_headers(headers: Mapping[str, str]) -> TcfSignal:
    return decode_tcf(headers.get(TCF_HEADER))
