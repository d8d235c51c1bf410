"""`POST /v1/rank`: rank candidate items for a user (scope `rank`)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.app import components_of
from gateway.routes._json import json_response

router = APIRouter()


@router.post("/v1/rank", summary="Rank candidate items for a user (scope: rank)")
async def rank(request: Request) -> Response:
    components = components_of(request)
    pipeline = components.pipeline("rank")
    ctx = components.context(request, "rank", await request.body())
    ctx = await pipeline.run(ctx)
    inspection = components.inspection
    headers = inspection.verdict_headers(ctx.inspection) if inspection else None
    return json_response(ctx.response, headers=headers)
