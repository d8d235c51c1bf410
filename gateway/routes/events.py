"""`POST /v1/events`: outcome events of a ranking (scope `events`).

A batch names one ranking (`request_id`, the gateway's id from the rank response), its
subject (`user_id`) and up to `experiments.max_events_per_request` impressions, clicks or
conversions of its items. The gateway joins the batch to the arm and model version that
served the ranking (its audit record: models.experiments.join), counts it only where the
subject's consent covers the bundle's events purpose (`analytics`), and stores it under
the subject's audit pseudonym. The call runs the pipeline (authenticate, authorize,
audit); the work is its respond stage, so the record carries the real outcome, the
subject (sealed), the arm and the consent decision.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from gateway.components import Components, components_of
from gateway.decode import parse_json, require_json
from gateway.errors import InvalidRequest
from gateway.pipeline import Action, ModelRef, RequestContext, SubjectQuery
from gateway.routes._json import json_response
from models.experiments import ArmKey, OutcomeEvent, ServedArm
from privacy.consent_stage import ConsentDecision, decide
from privacy.consent_store import ConsentEntry, ConsentStoreError
from privacy.errors import ConsentRequired, ConsentUnavailable
from privacy.signals import gpc_opt_out, tcf_from_headers

router = APIRouter()

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class EventIn(_Strict):
    type: Literal["impression", "click", "conversion"]
    item_id: Identifier


class EventBatch(_Strict):
    request_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    user_id: Identifier
    events: Annotated[list[EventIn], Field(min_length=1, max_length=1_000)]


class _EventsRespond:
    """Stage 7 of `POST /v1/events`: parse, join, check consent, store."""

    name = "respond"

    def __init__(self, c: Components) -> None:
        self._c = c

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        c = self._c
        require_json(ctx.headers)
        batch = parse_json(EventBatch, ctx.body)
        limit = c.settings.experiments.max_events_per_request
        if len(batch.events) > limit:
            raise InvalidRequest(f"events: at most {limit} per request")
        tenant = ctx.principal.tenant if ctx.principal else None
        served = await asyncio.to_thread(
            c.experiments.join, tenant, batch.user_id, batch.request_id
        )
        events_policy = c.policy.in_force().data.events
        decision = await _consent(c, ctx, tenant, batch.user_id, events_policy.purpose)
        ctx = ctx.evolve(
            payload=SubjectQuery(batch.user_id), consent=decision, model=_model_ref(served)
        )
        consented = decision.purposes.get(events_policy.purpose, False)
        if not consented and events_policy.without_consent == "refuse":
            raise ConsentRequired(
                f"the subject has not consented to the {events_policy.purpose} purpose"
            )
        counted = 0
        if consented:
            counted = await asyncio.to_thread(c.experiments.add, _events(c, batch, served, tenant))
        body: dict[str, Any] = {
            "request_id": ctx.request_id,
            "ranking": batch.request_id,
            "model": {"name": served.model, "version": served.version, "variant": served.variant},
            "received": len(batch.events),
            "counted": counted,
            "consent": {events_policy.purpose: consented},
        }
        return ctx.evolve(response=json_response(body, status=202), status=202)


def _model_ref(served: ServedArm) -> ModelRef:
    return ModelRef(
        name=served.model,
        version=served.version,
        digest=served.digest,
        package_digest=served.package_digest,
        variant=None if served.variant == "-" else served.variant,
    )


def _events(
    c: Components, batch: EventBatch, served: ServedArm, tenant: str | None
) -> list[OutcomeEvent]:
    arm = ArmKey(served.model, served.version, served.variant)
    owner = c.privacy.consent.handle(tenant, batch.user_id)
    now_ms = int(c.clock() * 1000)
    return [
        OutcomeEvent(
            request_id=batch.request_id,
            item_id=e.item_id,
            kind=e.type,
            arm=arm,
            tenant=tenant,
            subject=served.subject,
            owner=owner,
            ts_ms=now_ms,
        )
        for e in batch.events
    ]


async def _consent(
    c: Components, ctx: RequestContext, tenant: str | None, user_id: str, purpose: str
) -> ConsentDecision:
    """Stage 3's rules for one purpose: the stored consent, Sec-GPC and TCF of this call.
    An unreadable store counts as no consent for `uncounted`, and refuses (503) otherwise."""
    policy = c.policy.in_force().data
    stored: dict[str, ConsentEntry] = {}
    store_ok = True
    try:
        stored = await asyncio.to_thread(c.privacy.consent.current, tenant, user_id)
    except ConsentStoreError as exc:
        if policy.events.without_consent == "refuse":
            raise ConsentUnavailable(log_cause=f"consent store: {exc}") from exc
        store_ok = False
    latest = max(stored.values(), key=lambda e: e.ts_ms).jurisdiction if stored else "default"
    return decide(
        policy.consent,
        (purpose,),
        stored,
        gpc=gpc_opt_out(ctx.headers),
        tcf=tcf_from_headers(ctx.headers),
        jurisdiction=latest,
        store_ok=store_ok,
    )


@router.post("/v1/events", summary="Record outcome events of a ranking (scope: events)")
async def post_events(request: Request) -> Response:
    c = components_of(request)
    ctx = await c.pipeline(Action.EVENTS).run(
        c.context(request, Action.EVENTS, await request.body()), then=_EventsRespond(c)
    )
    response: Response = ctx.response
    return response
