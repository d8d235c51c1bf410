"""Stage 3: consent. Store + Sec-GPC + TCF -> may the model use this subject's profile?

Per purpose, each source may have an opinion:
- gpc: `Sec-GPC: 1` denies the purposes in `consent.gpc_opt_out`; it never grants;
- tcf: a TC string (valid, withdrawn or malformed) decides the purposes mapped in
  `consent.tcf_purposes`; malformed counts as a denial;
- store: the subject's latest stored entry for the purpose.
By default (`consent.combine: most_restrictive`) any denial wins, named by the first
denying source in `consent.precedence` order; a bundle that sets `combine: precedence`
lets the first source with an opinion decide. Either way a stored withdrawal beats a
TCF grant: a client's header never re-grants what the subject withdrew. No opinion
anywhere: `default_personalization` for personalization, denied otherwise. The rule
itself is `ConsentPolicy.resolve`, which the bundle's own consent test cases
(`consent_cases` in tests/*.yaml, run by `policy test`) exercise too.

`may_personalize` needs every purpose the model's policy lists. It is never a
refusal: the rank stage takes the non-personalised path. The exception is a model
flagged `significant_decision` (GDPR Art. 22): it runs only with explicit stored
consent (lawful basis "consent") for all its purposes, else 403 consent-required.

A consent store that cannot be read counts as no consent (non-personalised
path) and is logged; only an Art. 22 model is refused then (503).

Jurisdiction of the request (it picks the PII entity set of stage 4): the one
stored with the subject's latest consent entry, else default. A caller's
`Data-Jurisdiction` header can only add rules to it (stage 4), never replace it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.pipeline import InferQuery, RankQuery, RequestContext
from policies import ConsentPolicy, PolicyReader
from privacy.consent_store import (
    JURISDICTIONS,
    PURPOSES,
    ConsentEntry,
    ConsentStore,
    ConsentStoreError,
)
from privacy.errors import ConsentRequired, ConsentUnavailable
from privacy.signals import TcfSignal, gpc_opt_out, tcf_from_headers

log = logging.getLogger("gateway.privacy")

JURISDICTION_HEADER = "data-jurisdiction"


@dataclass(frozen=True)
class ConsentDecision:
    may_personalize: bool
    purposes: Mapping[str, bool]
    sources: Mapping[str, str]  # purpose -> gpc | tcf | store | default
    needed: tuple[str, ...]  # purposes the model needs for a personalised call
    jurisdiction: str
    gpc: bool
    tcf: str  # absent | valid | malformed
    explicit: bool  # every needed purpose granted by stored consent (lawful basis consent)
    store_ok: bool = True

    def as_audit(self) -> dict[str, Any]:
        """The audit record's `consent` field: decisions and sources, nothing personal."""
        return {
            "personalized": self.may_personalize,
            "purposes": dict(self.purposes),
            "sources": dict(self.sources),
            "jurisdiction": self.jurisdiction,
            "gpc": self.gpc,
            "tcf": self.tcf,
            "store": "ok" if self.store_ok else "unavailable",
        }


def _jurisdiction(stored: Mapping[str, ConsentEntry]) -> str:
    """The subject's own: the jurisdiction stored with its latest consent, else default.
    A `Data-Jurisdiction` header can only add rules to it (stage 4), never replace it."""
    if stored:
        latest = max(stored.values(), key=lambda e: e.ts_ms)
        return latest.jurisdiction
    return "default"


def requested_jurisdiction(headers: Mapping[str, str]) -> str | None:
    """The caller's `Data-Jurisdiction` header, if it names a known jurisdiction."""
    declared = headers.get(JURISDICTION_HEADER, "").strip().lower()
    return declared if declared in JURISDICTIONS else None


def _opinion(
    source: str,
    purpose: str,
    policy: ConsentPolicy,
    stored: Mapping[str, ConsentEntry],
    gpc: bool,
    tcf: TcfSignal,
    store_ok: bool,
) -> bool | None:
    """What one signal says of one purpose; None when it says nothing."""
    if source == "gpc":
        return False if gpc and purpose in policy.gpc_opt_out else None
    if source == "tcf":
        if tcf.state == "absent" or purpose not in policy.tcf_purposes:
            return None
        return tcf.grants(policy.tcf_purposes[purpose], policy.tcf_vendor_id)
    if not store_ok:
        return False  # an unreadable store: assume no consent
    return stored[purpose].granted if purpose in stored else None


def decide(
    policy: ConsentPolicy,
    needed: tuple[str, ...],
    stored: Mapping[str, ConsentEntry],
    *,
    gpc: bool,
    tcf: TcfSignal,
    jurisdiction: str = "default",
    store_ok: bool = True,
) -> ConsentDecision:
    """Pure: the decision for one request (see the module doc for the rules)."""
    purposes: dict[str, bool] = {}
    sources: dict[str, str] = {}
    for purpose in dict.fromkeys((*PURPOSES, *needed)):
        opinions = {
            source: _opinion(source, purpose, policy, stored, gpc, tcf, store_ok)
            for source in policy.precedence
        }
        sources[purpose], purposes[purpose] = policy.resolve(purpose, opinions)
    explicit = all(
        p in stored and stored[p].granted and stored[p].lawful_basis == "consent" and purposes[p]
        for p in needed
    )
    return ConsentDecision(
        may_personalize=all(purposes[p] for p in needed),
        purposes=purposes,
        sources=sources,
        needed=needed,
        jurisdiction=jurisdiction,
        gpc=gpc,
        tcf=tcf.state,
        explicit=explicit and store_ok,
        store_ok=store_ok,
    )


class ConsentStage:
    name = "consent"

    def __init__(
        self,
        store: ConsentStore,
        policy: PolicyReader,
        *,
        model_name: str,
    ) -> None:
        self._store = store
        self._policy = policy
        self._model = model_name

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        query = ctx.payload
        # An OIP query names a subject on the id path only (models.provenance).
        if not isinstance(query, RankQuery | InferQuery) or query.user_id is None:
            return ctx  # no data subject in this request (OIP raw tensors, admin...)
        data = self._policy.in_force().data
        policy = data.consent
        model = data.model(self._model)
        needed = model.purposes if model is not None else ("personalization",)
        tenant = ctx.principal.tenant if ctx.principal else None
        store_ok = True
        stored: dict[str, ConsentEntry] = {}
        try:
            if self._store.inline_reads:
                stored = self._store.current(tenant, query.user_id)
            else:
                stored = await asyncio.to_thread(self._store.current, tenant, query.user_id)
        except ConsentStoreError as exc:
            store_ok = False
            log.error("consent store unreadable, ranking without personalisation: %s", exc)
        decision = decide(
            policy,
            needed,
            stored,
            gpc=gpc_opt_out(ctx.headers),
            tcf=tcf_from_headers(ctx.headers),
            jurisdiction=_jurisdiction(stored),
            store_ok=store_ok,
        )
        ctx = ctx.evolve(consent=decision)
        if model is not None and model.significant_decision and not decision.explicit:
            if not store_ok:
                raise ConsentUnavailable(log_cause="consent store unreadable for an Art. 22 model")
            raise ConsentRequired(
                "this model makes significant automated decisions and needs the subject's "
                "explicit consent"
            )
        return ctx
