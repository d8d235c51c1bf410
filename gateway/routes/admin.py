"""Operator endpoints (scope `admin`): policy reload."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.app import components_of, reload_policy
from gateway.errors import InvalidRequest, NotFound
from gateway.pipeline import RequestContext, Respond
from gateway.routes._json import json_response

router = APIRouter(prefix="/v1/admin")


@router.post("/policy/reload", summary="Load, verify and test the policy bundle; swap if good")
async def policy_reload(request: Request) -> Response:
    components = components_of(request)

    async def reload(_ctx: RequestContext) -> dict[str, object]:
        if components.policy is None:
            raise NotFound("the policy engine is off")
        result = await reload_policy(components, "admin-api")
        if result.error is not None:
            # The last good bundle stays in force; the caller learns why the candidate failed.
            raise InvalidRequest(f"policy bundle refused: {result.error}")
        bundle = result.bundle
        return {
            "swapped": result.swapped,
            "bundle": {"name": bundle.name, "version": bundle.version, "hash": bundle.content_hash},
        }

    ctx = await components.pipeline("admin").run(
        components.context(request, "admin"), then=Respond(reload)
    )
    return json_response(ctx.response)
