"""`POST /v1/rank`: rank candidate items for a user (scope `rank`)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.components import components_of
from gateway.pipeline import Action
from gateway.routes._json import json_response

router = APIRouter()


@router.post("/v1/rank", summary="Rank candidate items for a user (scope: rank)")
async def rank(request: Request) -> Response:
    components = components_of(request)
    pipeline = components.pipeline(Action.RANK)
    ctx = components.context(request, Action.RANK, await request.body())
    ctx = await pipeline.run(ctx)
    body = ctx.response
    # Stage 4's counts per entity type (what was redacted, never the values).
    if ctx.redaction is not None:
        body = {**body, "redacted": dict(ctx.redaction.counts)}
    personalized = bool(body.get("personalized"))
    headers = {"Personalization": "on" if personalized else "off"}
    headers.update(components.inspection.verdict_headers(ctx.inspection))
    return json_response(body, headers=headers)
