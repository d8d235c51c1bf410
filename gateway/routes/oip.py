"""The Open Inference Protocol v2 REST surface for the ranker model.

Health and server metadata are open (load balancers and probes call them);
model metadata, readiness and inference need a bearer token with scope `infer`.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.components import Components, components_of
from gateway.errors import ModelNotReady, NotFound
from gateway.pipeline import Action, RequestContext, Respond
from gateway.readiness import dependency_checks
from gateway.routes._json import json_response

router = APIRouter(prefix="/v2")

SERVER_NAME = "secure-model-gateway"
SERVER_VERSION = "0.1.0"


def _missing_model(components: Components, name: str, version: str | None) -> NotFound | None:
    model = components.settings.model
    if name != model.name:
        return NotFound("the model is not served here")
    # OIP serves the primary version, which an admin hot swap may have changed.
    ranker = components.serving.ranker
    served = ranker.ref.version if ranker is not None else model.version
    if version not in (None, served):
        return NotFound("the model has no such version here")
    return None


def _check_model(components: Components, name: str, version: str | None) -> None:
    missing = _missing_model(components, name, version)
    if missing is not None:
        raise missing


@router.get("", summary="OIP server metadata")
async def server_metadata() -> Response:
    return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})


@router.get("/health/live", summary="OIP server liveness")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", summary="OIP server readiness")
async def ready(request: Request) -> Response:
    components = components_of(request)
    dependencies = await dependency_checks(components)
    is_ready = components.serving.ready and all(s == "ok" for s in dependencies.values())
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


async def _metadata(request: Request, name: str, version: str | None) -> Response:
    components = components_of(request)

    async def describe(_ctx: RequestContext) -> dict[str, object]:
        _check_model(components, name, version)
        ranker = components.serving.ranker
        if ranker is None:
            raise ModelNotReady("the model is not loaded")
        loaded = components.serving.loaded()
        versions = [m.version for m in loaded if m.name == ranker.ref.name]
        package = ranker.ref.package_digest
        return {
            "name": ranker.ref.name,
            "versions": versions or [ranker.ref.version],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.as_oip() for spec in ranker.inputs],
            "outputs": [spec.as_oip() for spec in ranker.outputs],
            "parameters": {
                "version": ranker.ref.version,
                "model_digest": f"sha256:{ranker.ref.digest}",
                "package_digest": f"sha256:{package}" if package else "unpackaged",
            },
        }

    ctx = await components.pipeline(Action.MODEL_READ).run(
        components.context(request, Action.MODEL_READ), then=Respond(describe)
    )
    return json_response(ctx.response)


@router.get("/models/{name}", summary="OIP model metadata (scope: infer)")
async def model_metadata(request: Request, name: str) -> Response:
    return await _metadata(request, name, None)


@router.get("/models/{name}/versions/{version}", summary="OIP model metadata (scope: infer)")
async def model_version_metadata(request: Request, name: str, version: str) -> Response:
    return await _metadata(request, name, version)


async def _model_ready(request: Request, name: str, version: str | None) -> Response:
    components = components_of(request)

    async def readiness(_ctx: RequestContext) -> bool:
        _check_model(components, name, version)
        return components.serving.ranker is not None

    ctx = await components.pipeline(Action.MODEL_READ).run(
        components.context(request, Action.MODEL_READ), then=Respond(readiness)
    )
    return json_response({"name": name, "ready": ctx.response}, status=200 if ctx.response else 503)


@router.get("/models/{name}/ready", summary="OIP model readiness (scope: infer)")
async def model_ready(request: Request, name: str) -> Response:
    return await _model_ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="OIP model readiness (scope: infer)")
async def model_version_ready(request: Request, name: str, version: str) -> Response:
    return await _model_ready(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    components = components_of(request)
    missing = _missing_model(components, name, version)
    if missing is not None:
        # Authenticate first, so anonymous callers cannot probe which models exist.
        async def refuse(_ctx: RequestContext) -> None:
            raise missing

        await components.pipeline(Action.MODEL_READ).run(
            components.context(request, Action.INFER), then=Respond(refuse)
        )
    ctx = components.context(request, Action.INFER, await request.body())
    ctx = await components.pipeline(Action.INFER).run(ctx)
    headers = components.inspection.verdict_headers(ctx.inspection)
    return json_response(ctx.response, headers=headers)


@router.post("/models/{name}/infer", summary="OIP inference (scope: infer)")
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="OIP inference (scope: infer)")
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)
