"""`inference.GRPCInferenceService`: the Open Inference Protocol over gRPC, same pipeline as REST.

ServerLive, ServerReady and ServerMetadata are open like their REST twins (probes call
them). ModelReady, ModelMetadata and ModelInfer run the numbered pipeline with the
bearer token of the `authorization` metadata, and are audited under `grpc:<Method>`.

Handlers take the message's bytes and parse them themselves: a message that does not
parse, names another model or breaks the tensor wire format is refused only after
stages 1-2 (through the model-read pipeline, as REST refuses an unknown model), so an
anonymous caller learns nothing from validation, and the refusal is audited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from gateway.components import Components
from gateway.errors import GatewayError, MalformedRequest, ModelNotReady, NotFound
from gateway.grpc import grpc_predict_v2_pb2 as pb
from gateway.grpc.calls import Call, CallRunner
from gateway.grpc.tensors import infer_response, wire_request
from gateway.pipeline import Action, RequestContext, Respond
from gateway.readiness import dependency_checks
from gateway.routes.oip import SERVER_NAME, SERVER_VERSION
from models.provenance import advertised_inputs

SERVICE = "inference.GRPCInferenceService"
Handler = Callable[[bytes, aio.ServicerContext[Any, Any]], Awaitable[bytes]]


# protobuf ships no type information: messages are `Any` to mypy, their bytes are typed here.
def _parse(message: Any, raw: bytes) -> Any:
    try:
        return message.FromString(raw)
    except DecodeError:
        raise MalformedRequest("the message is not a valid protobuf") from None


def _bytes(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


class InferenceService:
    def __init__(self, components: Components) -> None:
        self._c = components
        self._runner = CallRunner(components)

    async def drain(self) -> None:
        """Wait for calls whose clients left (gateway.grpc.calls): they are still audited."""
        await self._runner.drain()

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, Handler] = {
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ServerMetadata": self._server_metadata,
            "ModelReady": self._model_ready,
            "ModelMetadata": self._model_metadata,
            "ModelInfer": self._model_infer,
        }
        # No (de)serializers: the bytes reach the handler, which parses after stage 1-2.
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()},
        )

    # -- open methods ------------------------------------------------------

    async def _server_live(self, raw: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        async def work(_call: Call) -> bytes:
            _parse(pb.ServerLiveRequest, raw)
            return _bytes(pb.ServerLiveResponse(live=True))

        return await self._runner.run("ServerLive", context, work)

    async def _server_ready(self, raw: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        async def work(_call: Call) -> bytes:
            _parse(pb.ServerReadyRequest, raw)
            states = await dependency_checks(self._c)
            ready = self._c.serving.ready and all(s == "ok" for s in states.values())
            return _bytes(pb.ServerReadyResponse(ready=ready))

        return await self._runner.run("ServerReady", context, work)

    async def _server_metadata(self, raw: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        async def work(_call: Call) -> bytes:
            _parse(pb.ServerMetadataRequest, raw)
            reply = pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)
            return _bytes(reply)

        return await self._runner.run("ServerMetadata", context, work)

    # -- authenticated methods ---------------------------------------------

    def _missing_model(self, name: str, version: str) -> NotFound | None:
        if name != self._c.settings.model.name:
            return NotFound("the model is not served here")
        # The primary version, which an admin hot swap may have changed.
        ranker = self._c.serving.ranker
        served = ranker.ref.version if ranker is not None else self._c.settings.model.version
        if version not in ("", served):
            return NotFound("the model has no such version here")
        return None

    async def _refuse(self, call: Call, action: str, error: GatewayError) -> None:
        """Stages 1-2 first (so an anonymous caller learns nothing), then `error`, audited."""

        async def refuse(_ctx: RequestContext) -> None:
            raise error

        await self._c.pipeline(Action.MODEL_READ).run(call.context(action), then=Respond(refuse))
        raise error  # pragma: no cover - the pipeline above always raises

    async def _model_ready(self, raw: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        async def work(call: Call) -> bytes:
            try:
                request = _parse(pb.ModelReadyRequest, raw)
            except GatewayError as error:
                await self._refuse(call, Action.MODEL_READ, error)
                raise
            missing = self._missing_model(request.name, request.version)

            async def readiness(_ctx: RequestContext) -> bool:
                if missing is not None:
                    raise missing
                return self._c.serving.ranker is not None

            ctx = await self._c.pipeline(Action.MODEL_READ).run(
                call.context(Action.MODEL_READ), then=Respond(readiness)
            )
            return _bytes(pb.ModelReadyResponse(ready=bool(ctx.response)))

        return await self._runner.run("ModelReady", context, work)

    async def _model_metadata(self, raw: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        async def work(call: Call) -> bytes:
            try:
                request = _parse(pb.ModelMetadataRequest, raw)
            except GatewayError as error:
                await self._refuse(call, Action.MODEL_READ, error)
                raise
            missing = self._missing_model(request.name, request.version)

            async def describe(_ctx: RequestContext) -> pb.ModelMetadataResponse:
                if missing is not None:
                    raise missing
                ranker = self._c.serving.ranker
                if ranker is None:
                    raise ModelNotReady("the model is not loaded")
                versions = [
                    m.version for m in self._c.serving.loaded() if m.name == ranker.ref.name
                ]
                tensor = pb.ModelMetadataResponse.TensorMetadata
                # What a client sends under the bundle's input declaration (ids as BYTES,
                # declared client features), not what the server fills from its store.
                policy = self._c.policy.in_force().data.model(ranker.ref.name)
                return pb.ModelMetadataResponse(
                    name=ranker.ref.name,
                    versions=versions or [ranker.ref.version],
                    platform="onnxruntime_onnx",
                    inputs=[
                        tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                        for s in advertised_inputs(ranker.inputs, policy)
                    ],
                    outputs=[
                        tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                        for s in ranker.outputs
                    ],
                )

            ctx = await self._c.pipeline(Action.MODEL_READ).run(
                call.context(Action.MODEL_READ), then=Respond(describe)
            )
            reply: pb.ModelMetadataResponse = ctx.response
            return _bytes(reply)

        return await self._runner.run("ModelMetadata", context, work)

    async def _model_infer(self, raw: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        async def work(call: Call) -> bytes:
            try:
                request = _parse(pb.ModelInferRequest, raw)
                missing = self._missing_model(request.model_name, request.model_version)
                if missing is not None:
                    raise missing
                wire = wire_request(request)
            except GatewayError as error:
                await self._refuse(call, Action.INFER, error)
                raise
            ctx = await self._c.pipeline(Action.INFER).run(call.context(Action.INFER, wire=wire))
            call.reply_metadata.update(
                (name.lower(), value)
                for name, value in self._c.inspection.verdict_headers(ctx.inspection).items()
            )
            return _bytes(infer_response(ctx.response))

        return await self._runner.run("ModelInfer", context, work)
