"""Operator endpoints for models (scope `admin`): list, and load a version while serving.

A load runs every package check (models.loader) off the event loop. Only a model
that passed them all is swapped in, by replacing the pipelines' references in
one step; requests already running keep the pipeline (and session) they started
with, and the replaced session is closed after the request timeout. A refused
package changes nothing: the last good model keeps serving.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.app import Components, _build_pipelines, components_of
from gateway.errors import InvalidRequest, NotFound
from gateway.pipeline import RequestContext, Respond
from gateway.routes._json import json_response
from models.package_errors import ModelPackageError
from models.registry import LoadedModel, ModelRegistry
from models.serving import not_ready_key

log = logging.getLogger("gateway.models")
router = APIRouter(prefix="/v1/admin/models")


def _registry(c: Components, name: str) -> ModelRegistry:
    if c.models is None:
        raise NotFound("model packages are not in use")
    if name != c.settings.model.name:
        raise NotFound(f"model '{name}' is not served here")
    return c.models


async def load_version(c: Components, name: str, version: str, *, activate: bool) -> LoadedModel:
    """Verify, decrypt and load a package; if asked, make it primary (atomic swap)."""
    registry = _registry(c, name)
    try:
        loaded = await asyncio.to_thread(registry.load, name, version)
    except ModelPackageError as exc:
        log.error("hot load of %s %s refused at step %s: %s", name, version, exc.step, exc)
        raise InvalidRequest(
            f"model package refused at step {exc.step}: {type(exc).__name__}",
            log_cause=str(exc),
        ) from None
    # From here to the end nothing awaits: the swap is one step for every request,
    # and of two concurrent loads the one that finishes last is primary.
    c.not_ready.pop(not_ready_key(name, version), None)
    if activate:
        previous = registry.activate(name, version)
        # The registry's primary, not `loaded`: a concurrent load of the same version may
        # have replaced (and will retire) the object this call loaded.
        primary = registry.primary(name)
        c.ranker = primary.ranker if primary is not None else loaded.ranker
        c.not_ready.pop("model", None)
        c.not_ready.pop(not_ready_key(name, c.settings.model.version), None)
        _build_pipelines(c)
        if previous is not None and registry.get(name, previous.version) is not previous:
            # Replaced by a reload of the same version: nobody new can reach it.
            registry.retire(previous, registry.retire_grace_s)
        log.info("model %s %s is now primary", name, version)
    c.metrics.model_ready.labels(name).set(0 if c.not_ready else 1)
    return loaded


@router.get("", summary="Loaded model versions and the packages on disk")
async def list_models(request: Request) -> Response:
    c = components_of(request)

    async def describe(_ctx: RequestContext) -> dict[str, object]:
        registry = _registry(c, c.settings.model.name)
        primary = registry.primary(c.settings.model.name)
        return {
            "primary": primary.describe() if primary is not None else None,
            "loaded": [m.describe() for m in registry.loaded()],
            "on_disk": [{"name": n, "version": v} for n, v in registry.on_disk()],
            "not_ready": sorted(c.not_ready),
        }

    ctx = await c.pipeline("admin").run(c.context(request, "admin"), then=Respond(describe))
    return json_response(ctx.response)


@router.post(
    "/{name}/versions/{version}/load",
    summary="Verify and load a packaged version; `?activate=false` loads without serving it",
)
async def load_model(request: Request, name: str, version: str, activate: bool = True) -> Response:
    c = components_of(request)

    async def load(_ctx: RequestContext) -> dict[str, object]:
        loaded = await load_version(c, name, version, activate=activate)
        return {"loaded": loaded.describe(), "primary": activate}

    ctx = await c.pipeline("admin").run(c.context(request, "admin"), then=Respond(load))
    return json_response(ctx.response)
