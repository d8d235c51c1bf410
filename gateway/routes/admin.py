"""Operator endpoints (scope `admin`): policy reload."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.components import components_of
from gateway.control import control_of
from gateway.errors import InvalidRequest
from gateway.pipeline import Action, RequestContext, Respond
from gateway.routes._json import json_response

router = APIRouter(prefix="/v1/admin")


@router.post("/policy/reload", summary="Load, verify and test the policy bundle; swap if good")
async def policy_reload(request: Request) -> Response:
    components = components_of(request)
    control = control_of(request)

    async def reload(_ctx: RequestContext) -> dict[str, object]:
        result = await control.reload_policy("admin-api")
        if result.error is not None:
            # The last good bundle stays in force; the caller learns why the candidate failed.
            raise InvalidRequest(f"policy bundle refused: {result.error}")
        bundle = result.bundle
        return {
            "swapped": result.swapped,
            "bundle": {"name": bundle.name, "version": bundle.version, "hash": bundle.content_hash},
        }

    ctx = await components.pipeline(Action.ADMIN).run(
        components.context(request, Action.ADMIN), then=Respond(reload)
    )
    return json_response(ctx.response)
