"""The A/B report of a model's arms (scope `admin`).

`GET /v1/admin/experiments/{model}` is the same report as `gateway ab report MODEL`
(models.experiments.report), and changes nothing. The bundle's guardrail action is
applied by each replica every `experiments.guardrail_interval_s` (gateway.control),
or now by `POST .../guardrails`: where it is `stop` and an arm is past a guardrail,
the decision is appended to the audit log, durably, before the arm's users go to the
control arm (503 audit-unavailable and no change if it cannot be recorded).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.components import components_of
from gateway.errors import NotFound
from gateway.pipeline import Action, RequestContext, Respond
from gateway.routes._json import json_response

router = APIRouter(prefix="/v1/admin/experiments")

MAX_MODEL_NAME = 128


async def _report(request: Request, model: str, *, enforce: bool) -> Response:
    c = components_of(request)

    async def report(_ctx: RequestContext) -> dict[str, Any]:
        if not 1 <= len(model) <= MAX_MODEL_NAME or c.policy.in_force().data.model(model) is None:
            raise NotFound("no experiment for this model")
        found = await asyncio.to_thread(c.experiments.report, model)
        if enforce:
            found["stopped_now"] = await c.experiments.enforce(found)
        return found

    ctx = await c.pipeline(Action.ADMIN).run(c.context(request, Action.ADMIN), then=Respond(report))
    return json_response(ctx.response)


@router.get("/{model}", summary="A/B report of a model's arms, with guardrails (scope: admin)")
async def experiment_report(request: Request, model: str) -> Response:
    return await _report(request, model, enforce=False)


@router.post(
    "/{model}/guardrails",
    summary="Apply the bundle's guardrail action now, then report (scope: admin)",
)
async def apply_guardrails(request: Request, model: str) -> Response:
    return await _report(request, model, enforce=True)
