"""Stage 4: redact. Personal data in free text is replaced before the model or the audit sees it.

Which rules: those of every jurisdiction that applies, the stricter of them (union of
entities, lowest thresholds, least revealing operator): always `default`, plus the
subject's (stored with its consent), the tenant's (`jurisdictions.tenants` in the
bundle) and a `Data-Jurisdiction` header's. The header can only add rules.

What is redacted: `/v1/rank` `context.query` always, plus the `context` fields
the bundle's `redaction.fields` names; OIP v2 string (BYTES) tensors, element by
element. Which entities and how: the jurisdiction's entity set, operators and
thresholds from the bundle in force (`jurisdictions`), the bundle's allow-list.

Fail closed: if the analyzer raises or exceeds `privacy.redaction_timeout_ms`,
the request is refused with 503 redaction-unavailable (and audited); raw text is
never passed on. The analyzer runs on a small thread pool, off the event loop;
a request without text does no work at all. Log lines name the exception type
only: an analyzer's message could quote the text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.pipeline import InferQuery, RankQuery, RequestContext
from policies import DataPolicy, PolicyReader, RedactionPolicy
from privacy.consent_stage import requested_jurisdiction
from privacy.errors import RedactionUnavailable
from privacy.redaction import Redacted, RedactionRules, Redactor, stricter

log = logging.getLogger("gateway.privacy")

ALWAYS = ("context.query",)


@dataclass(frozen=True)
class RedactionOutcome:
    counts: Mapping[str, int]
    jurisdiction: str
    fields: int  # text fields examined

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_audit(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "jurisdiction": self.jurisdiction}


def rules_for(
    data: DataPolicy, jurisdiction: str, fingerprint: str, detectable: Iterable[str] = ()
) -> RedactionRules:
    """One jurisdiction's rules alone (`all` resolved against what the engine detects)."""
    region = data.jurisdictions.for_region(jurisdiction)
    return RedactionRules(
        entities=region.entities(detectable),
        operators=dict(region.operators),
        thresholds=dict(region.score_thresholds),
        default_threshold=data.redaction.default_threshold,
        allow_list=data.redaction.allow_list,
        fingerprint=f"{fingerprint}|{jurisdiction}",
    )


def applicable(subject: str, tenant: str | None, header: str | None) -> str:
    """The jurisdictions whose rules all apply, joined by "+": always `default`, then the
    subject's (from its consent record), the tenant's (its configuration) and the one a
    request header names. A header adds rules; nothing a client sends removes any."""
    named = ["default"]
    for region in (subject, tenant, header):
        if region is not None and region not in named:
            named.append(region)
    return "+".join(named)


def combined_rules(
    data: DataPolicy, jurisdiction: str, fingerprint: str, detectable: Iterable[str]
) -> RedactionRules:
    """The stricter of every named jurisdiction's rules (`applicable`'s "+" list)."""
    detectable = tuple(detectable)
    regions = jurisdiction.split("+")
    rules = rules_for(data, regions[0], fingerprint, detectable)
    for region in regions[1:]:
        rules = stricter(rules, rules_for(data, region, fingerprint, detectable))
    return rules


def _merge(counts: dict[str, int], found: Mapping[str, int]) -> None:
    for entity, n in found.items():
        counts[entity] = counts.get(entity, 0) + n


class RedactStage:
    name = "redact"

    def __init__(
        self,
        redactor: Redactor,
        policy: PolicyReader,
        *,
        timeout_s: float,
        executor: ThreadPoolExecutor,
    ) -> None:
        self._redactor = redactor
        self._policy = policy  # the bundle in force and its content hash
        self._timeout = timeout_s
        self._executor = executor
        self._rules: dict[tuple[str, str], RedactionRules] = {}

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        query = ctx.payload
        in_force = self._policy.in_force()
        data, bundle_hash = in_force.data, in_force.content_hash
        tenant = ctx.principal.tenant if ctx.principal else None
        jurisdiction = applicable(
            ctx.consent.jurisdiction if ctx.consent is not None else "default",
            data.jurisdictions.for_tenant(tenant),
            requested_jurisdiction(ctx.headers),
        )
        rules = self._rules.get((bundle_hash, jurisdiction))
        if rules is None:
            rules = combined_rules(data, jurisdiction, bundle_hash, self._redactor.entities)
            if len(self._rules) > 64:  # old bundles' rules
                self._rules.clear()
            self._rules[(bundle_hash, jurisdiction)] = rules
        if isinstance(query, RankQuery):
            fields = _rank_fields(data.redaction)
            texts = {k: v for k, v in query.context.items() if k in fields and v.strip()}
            if not texts:
                return ctx.evolve(redaction=RedactionOutcome({}, jurisdiction, 0))
            done = await self._run(list(texts.values()), rules, tenant)
            context = dict(query.context)
            counts: dict[str, int] = {}
            for key, redacted in zip(texts, done, strict=True):
                context[key] = redacted.text
                _merge(counts, redacted.counts)
            payload = RankQuery(
                user_id=query.user_id, item_ids=query.item_ids, top_k=query.top_k, context=context
            )
            outcome = RedactionOutcome(counts, jurisdiction, len(texts))
            return ctx.evolve(payload=payload, redaction=outcome)
        if isinstance(query, InferQuery):
            return await self._infer(ctx, query, rules, tenant, jurisdiction)
        return ctx

    async def _infer(
        self,
        ctx: RequestContext,
        query: InferQuery,
        rules: RedactionRules,
        tenant: str | None,
        jurisdiction: str,
    ) -> RequestContext:
        strings = {
            name: array
            for name, array in query.feeds.items()
            if isinstance(array, np.ndarray) and array.dtype.kind in "OUS"
        }
        if not strings:
            return ctx.evolve(redaction=RedactionOutcome({}, jurisdiction, 0))
        feeds = dict(query.feeds)
        counts: dict[str, int] = {}
        n = 0
        for name, array in strings.items():
            flat = [_text(v) for v in array.reshape(-1).tolist()]
            done = await self._run(flat, rules, tenant)
            for redacted in done:
                _merge(counts, redacted.counts)
            n += len(flat)
            feeds[name] = np.array([r.text for r in done], dtype=object).reshape(array.shape)
        payload = dataclasses.replace(query, feeds=feeds)  # provenance fields kept
        return ctx.evolve(payload=payload, redaction=RedactionOutcome(counts, jurisdiction, n))

    async def _run(
        self, texts: list[str], rules: RedactionRules, tenant: str | None
    ) -> list[Redacted]:
        # Repeated texts (search queries) are answered from the keyed cache on the loop:
        # an HMAC and a dict lookup cost less than a hop to the thread pool.
        hits = [self._redactor.cached(t, rules, tenant) for t in texts]
        if all(h is not None for h in hits):
            return [h for h in hits if h is not None]

        def work() -> list[Redacted]:
            return [self._redactor.redact(t, rules, tenant) for t in texts]

        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, work), timeout=self._timeout
            )
        except TimeoutError:
            raise RedactionUnavailable(log_cause="PII analyzer timed out") from None
        except Exception as exc:  # third-party analyzer: any failure refuses (fail closed)
            raise RedactionUnavailable(
                log_cause=f"PII analyzer failed: {type(exc).__name__}"
            ) from None


def _rank_fields(policy: RedactionPolicy) -> frozenset[str]:
    return frozenset(p.removeprefix("$.").split(".", 1)[1] for p in (*ALWAYS, *policy.fields))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
