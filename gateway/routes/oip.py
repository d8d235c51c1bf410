"""The Open Inference Protocol v2 REST surface for the ranker model.

Health and server metadata are open (load balancers and probes call them);
model metadata, readiness and inference need a bearer token with scope `infer`;
Triton's statistics, model configuration and repository index need scope `admin`.
Inference speaks JSON and the binary tensor data extension (gateway.oip_rest,
gateway.oip_binary), as `tritonclient.http` and KServe's REST client send them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.components import Components, components_of
from gateway.errors import ModelNotReady, NotFound
from gateway.oip_binary import encode_infer_response
from gateway.oip_repository import model_config, repository_index
from gateway.oip_rest import HEADER_LENGTH, require_oip_json
from gateway.oip_stats import model_statistics
from gateway.pipeline import Action, RequestContext, Respond
from gateway.readiness import dependency_checks
from gateway.routes._json import json_response
from gateway.schemas import RepositoryIndexRequest, parse_json
from models.provenance import advertised_inputs

router = APIRouter(prefix="/v2")

SERVER_NAME = "secure-model-gateway"
SERVER_VERSION = "0.1.0"
# Only what is implemented in full: the model repository extension's load and unload are
# not (models are loaded through /v1/admin/models), so only its index is served.
EXTENSIONS = ("binary_tensor_data", "statistics", "model_configuration")


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
    return json_response(
        {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}
    )


@router.get("/health/live", summary="OIP server liveness")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", summary="OIP server readiness")
async def ready(request: Request) -> Response:
    components = components_of(request)
    dependencies = await dependency_checks(components)
    is_ready = components.serving.ready and all(s == "ok" for s in dependencies.values())
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


async def _admin(request: Request, step: Callable[[RequestContext], Awaitable[Any]]) -> Response:
    components = components_of(request)
    ctx = await components.pipeline(Action.ADMIN).run(
        components.context(request, Action.ADMIN), then=Respond(step)
    )
    return json_response(ctx.response)


async def _statistics(request: Request, name: str | None, version: str | None) -> Response:
    components = components_of(request)

    async def statistics(_ctx: RequestContext) -> dict[str, object]:
        if name is not None:
            _check_model(components, name, version)
        ranker = components.serving.ranker
        if ranker is None:
            # Nothing loaded: Triton lists no model rather than failing the whole call.
            if name is not None:
                raise ModelNotReady("the model is not loaded")
            return {"model_stats": []}
        stats = model_statistics(components.metrics, ranker.ref.name, ranker.ref.version)
        return {"model_stats": [stats]}

    return await _admin(request, statistics)


# Declared before /models/{name}: "stats" is not a model name here.
@router.get("/models/stats", summary="Triton inference statistics of every model (scope: admin)")
async def all_statistics(request: Request) -> Response:
    return await _statistics(request, None, None)


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
        policy = components.policy.in_force().data.model(ranker.ref.name)
        return {
            "name": ranker.ref.name,
            "versions": versions or [ranker.ref.version],
            "platform": "onnxruntime_onnx",
            # What a client sends (models.provenance): ids, declared client features.
            "inputs": [spec.as_oip() for spec in advertised_inputs(ranker.inputs, policy)],
            "outputs": [spec.as_oip() for spec in ranker.outputs],
            "parameters": {
                "version": ranker.ref.version,
                "model_digest": f"sha256:{ranker.ref.digest}",
                "package_digest": f"sha256:{package}" if package else "unpackaged",
                # OIP parameters are scalars: the providers in use, in order.
                "execution_providers": ",".join(ranker.providers),
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

    class Readiness:
        name = "respond"

        async def __call__(self, ctx: RequestContext) -> RequestContext:
            _check_model(components, name, version)
            ready = components.serving.ranker is not None
            return ctx.evolve(response=ready, status=200 if ready else 503)

    ctx = await components.pipeline(Action.MODEL_READ).run(
        components.context(request, Action.MODEL_READ), then=Readiness()
    )
    return json_response({"name": name, "ready": ctx.response}, status=ctx.status)


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
    body, header_length = encode_infer_response(ctx.response)
    if header_length is None:
        return Response(body, headers=headers, media_type="application/json")
    headers[HEADER_LENGTH] = str(header_length)
    return Response(body, headers=headers, media_type="application/octet-stream")


@router.post("/models/{name}/infer", summary="OIP inference (scope: infer)")
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="OIP inference (scope: infer)")
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


@router.get("/models/{name}/stats", summary="Triton inference statistics (scope: admin)")
async def statistics(request: Request, name: str) -> Response:
    return await _statistics(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/stats", summary="Triton inference statistics (scope: admin)"
)
async def version_statistics(request: Request, name: str, version: str) -> Response:
    return await _statistics(request, name, version)


async def _config(request: Request, name: str, version: str | None) -> Response:
    components = components_of(request)

    async def config(_ctx: RequestContext) -> dict[str, object]:
        _check_model(components, name, version)
        ranker = components.serving.ranker
        if ranker is None:
            raise ModelNotReady("the model is not loaded")
        ref = ranker.ref
        policy = components.policy.in_force().data.model(ref.name)
        return model_config(
            ref.name, ref.version, advertised_inputs(ranker.inputs, policy), ranker.outputs
        )

    return await _admin(request, config)


@router.get("/models/{name}/config", summary="Triton model configuration (scope: admin)")
async def config(request: Request, name: str) -> Response:
    return await _config(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/config", summary="Triton model configuration (scope: admin)"
)
async def version_config(request: Request, name: str, version: str) -> Response:
    return await _config(request, name, version)


@router.post("/repository/index", summary="Triton model repository index (scope: admin)")
async def index(request: Request) -> Response:
    components = components_of(request)
    body = await request.body()

    async def listing(_ctx: RequestContext) -> list[dict[str, str]]:
        # Parsed only now, after authentication; tritonclient sends an empty body.
        ask = RepositoryIndexRequest()
        if body.strip():
            require_oip_json(request.headers)
            ask = parse_json(RepositoryIndexRequest, body)
        loaded = [(m.name, m.version) for m in components.serving.loaded()]
        ranker = components.serving.ranker
        if ranker is not None:
            loaded.append((ranker.ref.name, ranker.ref.version))
        try:
            on_disk = components.serving.registry(components.settings.model.name).on_disk()
        except NotFound:
            on_disk = []  # an unpackaged (dev) model: there is no package directory
        return repository_index(loaded, on_disk, ready_only=ask.ready)

    return await _admin(request, listing)
