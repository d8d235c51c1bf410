"""Operator endpoints for models (scope `admin`): list, and load a version while serving.

A load runs every package check (models.loader) off the event loop; the control
plane swaps a model that passed them all in one step (gateway.control). Requests
already running keep the pipeline (and session) they started with, and the replaced
session is closed after the request timeout. A refused package changes nothing:
the last good model keeps serving.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.components import components_of
from gateway.control import control_of
from gateway.pipeline import Action, RequestContext, Respond
from gateway.routes._json import json_response

router = APIRouter(prefix="/v1/admin/models")


@router.get("", summary="Loaded model versions and the packages on disk")
async def list_models(request: Request) -> Response:
    c = components_of(request)

    async def describe(_ctx: RequestContext) -> dict[str, object]:
        registry = c.serving.registry(c.settings.model.name)
        primary = registry.primary(c.settings.model.name)
        return {
            "primary": primary.describe() if primary is not None else None,
            "loaded": [m.describe() for m in registry.loaded()],
            "on_disk": [{"name": n, "version": v} for n, v in registry.on_disk()],
            "not_ready": sorted(r.key for r in c.serving.not_ready()),
        }

    ctx = await c.pipeline(Action.ADMIN).run(
        c.context(request, Action.ADMIN), then=Respond(describe)
    )
    return json_response(ctx.response)


@router.post(
    "/{name}/versions/{version}/load",
    summary="Verify and load a packaged version; `?activate=false` loads without serving it",
)
async def load_model(request: Request, name: str, version: str, activate: bool = True) -> Response:
    c = components_of(request)
    control = control_of(request)

    async def load(_ctx: RequestContext) -> dict[str, object]:
        loaded = await control.load_model(name, version, activate=activate)
        return {"loaded": loaded.describe(), "primary": activate}

    ctx = await c.pipeline(Action.ADMIN).run(c.context(request, Action.ADMIN), then=Respond(load))
    return json_response(ctx.response)
