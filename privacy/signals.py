"""Per-request consent signals: Global Privacy Control and IAB TCF v2.2 consent strings.

- `Sec-GPC: 1` (the GPC spec; CCPA regulation 7025) is an opt-out of sale and
  sharing for the request's subject. Any other value is no signal.
- A TCF v2.2 TC string arrives in the `TCF-Consent` header. privacy/tcf.py decodes
  it as the IAB reference library does (checked against it in
  tests/privacy/test_tcf_oracle.py). A string it refuses is *malformed*, which means
  "no consent" for every purpose the bundle maps to TCF, never an error.
  The decoded purposes are mapped to our purposes by the bundle's
  `consent.tcf_purposes` (e.g. personalization: [1, 3, 4]): a purpose is granted
  only if every mapped TCF purpose has consent. When the bundle names our
  `tcf_vendor_id`, the vendor needs consent too, and a publisher restriction on it
  for a mapped purpose (not allowed, or legitimate interest only) withholds the grant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from privacy.tcf import NO_IDS, NOT_ALLOWED, REQUIRE_LI, IdSet, Restriction, TcStringError, decode

GPC_HEADER = "sec-gpc"
TCF_HEADER = "tcf-consent"

TcfState = Literal["absent", "valid", "malformed"]


def gpc_opt_out(headers: Mapping[str, str]) -> bool:
    return headers.get(GPC_HEADER, "").strip() == "1"


@dataclass(frozen=True)
class TcfSignal:
    state: TcfState
    purposes: Mapping[int, bool] = field(default_factory=dict)
    vendors: IdSet = NO_IDS
    restrictions: tuple[Restriction, ...] = ()
    policy_version: int | None = None
    vendor_list_version: int | None = None

    def grants(self, tcf_purposes: tuple[int, ...], vendor_id: int | None) -> bool:
        if self.state != "valid":
            return False
        if not all(self.purposes.get(p, False) for p in tcf_purposes):
            return False
        if vendor_id is None:
            return True
        if vendor_id not in self.vendors:
            return False
        return not any(
            r.purpose in tcf_purposes
            and r.type in (NOT_ALLOWED, REQUIRE_LI)
            and vendor_id in r.vendors
            for r in self.restrictions
        )


ABSENT = TcfSignal("absent")
MALFORMED = TcfSignal("malformed")


def decode_tcf(raw: str | None) -> TcfSignal:
    """Decode a TC string; anything the decoder refuses is MALFORMED. An empty header is
    no signal (HTTP strips the whitespace around a header value)."""
    if raw is None or not raw.strip():
        return ABSENT
    try:
        tc = decode(raw)
    except TcStringError:
        return MALFORMED
    return TcfSignal(
        "valid",
        purposes={p: p in tc.purpose_consents for p in range(1, 25)},
        vendors=tc.vendor_consents,
        restrictions=tc.publisher_restrictions,
        policy_version=tc.policy_version,
        vendor_list_version=tc.vendor_list_version,
    )


def tcf_from_headers(headers: Mapping[str, str]) -> TcfSignal:
    return decode_tcf(headers.get(TCF_HEADER))
