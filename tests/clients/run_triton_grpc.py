"""Runs Triton's stock gRPC client (tritonclient.grpc 2.73) against a gateway; prints JSON.

Run by tests/clients/test_triton_grpc.py in its own interpreter (see _grpc_gateway.py):
reads a spec on stdin (target, model, tokens, feeds, oversize element count) and prints
one JSON object, an outcome per check: {"ok": true, "value": ...} or
{"ok": false, "code": "UNAUTHENTICATED", "message": ..., "trailers": {...}}.
Besides the high-level client, Triton's own generated stub sends typed `contents`
(the client itself always sends raw contents) and reads the trailing metadata.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

NUMPY = {"INT64": np.int64, "FP32": np.float32}
TYPED = {"INT64": "int64_contents", "FP32": "fp32_contents"}


def outcome(check: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "value": check()}
    except InferenceServerException as exc:
        return {
            "ok": False,
            "code": str(exc.status()).rsplit(".", 1)[-1],
            "message": exc.message(),
        }
    except grpc.RpcError as exc:
        return {
            "ok": False,
            "code": exc.code().name,
            "message": exc.details(),
            "trailers": dict(exc.trailing_metadata() or ()),
        }


def bearer(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def arrays(feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(t["data"], dtype=NUMPY[t["datatype"]]).reshape(t["shape"])
        for name, t in feeds.items()
    }


def timeout_only(spec: dict[str, Any], feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """One typed infer through Triton's stub against a gateway whose request timeout is
    shorter than any inference: the refusal, with its trailers (the request id)."""
    request = service_pb2.ModelInferRequest(model_name=spec["model"])
    for name, array in feeds.items():
        datatype = triton.np_to_triton_dtype(array.dtype)
        item = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        getattr(item.contents, TYPED[datatype]).extend(array.reshape(-1).tolist())
    with grpc.insecure_channel(spec["target"]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = list(bearer(spec["tokens"]["good"]).items())
        return {"infer": outcome(lambda: stub.ModelInfer(request, metadata=metadata, timeout=30))}


def main() -> None:
    spec = json.load(sys.stdin)
    target, model, tokens = spec["target"], spec["model"], spec["tokens"]
    feeds = arrays(spec["feeds"])
    if spec.get("only") == "timeout":
        json.dump(timeout_only(spec, feeds), sys.stdout)
        return
    if spec.get("only") == "smoke":
        smoke = triton.InferenceServerClient(url=target)
        inputs = []
        for name, array in feeds.items():
            item = triton.InferInput(
                name, list(array.shape), triton.np_to_triton_dtype(array.dtype)
            )
            item.set_data_from_numpy(array)
            inputs.append(item)
        found = {
            "live": outcome(smoke.is_server_live),
            "infer": outcome(
                lambda: (
                    smoke.infer(model, inputs, headers=bearer(tokens["good"]))
                    .as_numpy("score")
                    .tolist()
                )
            ),
        }
        json.dump(found, sys.stdout)
        return
    client = triton.InferenceServerClient(url=target)
    channel = grpc.insecure_channel(target)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    out: dict[str, Any] = {}

    def infer(
        token: str | None,
        *,
        tensors: dict[str, np.ndarray] | None = None,
        name: str = model,
        outputs: list[str] | None = None,
        request_id: str = "",
    ) -> dict[str, Any]:
        inputs = []
        for tensor_name, array in (tensors or feeds).items():
            item = triton.InferInput(
                tensor_name, list(array.shape), triton.np_to_triton_dtype(array.dtype)
            )
            item.set_data_from_numpy(array)
            inputs.append(item)
        requested = [triton.InferRequestedOutput(o) for o in outputs] if outputs else None
        result = client.infer(
            name, inputs, outputs=requested, request_id=request_id, headers=bearer(token)
        )
        response = result.get_response(as_json=True)
        return {
            "id": response.get("id", ""),
            "model_name": response["model_name"],
            "outputs": [o["name"] for o in response["outputs"]],
            "shape": result.as_numpy("score").shape,
            "score": result.as_numpy("score").tolist(),
        }

    out["live"] = outcome(client.is_server_live)
    out["ready"] = outcome(client.is_server_ready)
    out["server_metadata"] = outcome(lambda: client.get_server_metadata(as_json=True))
    out["model_ready"] = outcome(
        lambda: client.is_model_ready(model, headers=bearer(tokens["good"]))
    )
    out["model_ready_anonymous"] = outcome(lambda: client.is_model_ready(model))
    out["model_metadata"] = outcome(
        lambda: client.get_model_metadata(model, headers=bearer(tokens["good"]), as_json=True)
    )
    out["model_metadata_other"] = outcome(
        lambda: client.get_model_metadata("other", headers=bearer(tokens["good"]), as_json=True)
    )
    out["infer_raw"] = outcome(lambda: infer(tokens["good"], request_id="req-7"))
    out["infer_requested_output"] = outcome(lambda: infer(tokens["good"], outputs=["score"]))
    out["infer_unknown_output"] = outcome(lambda: infer(tokens["good"], outputs=["nope"]))
    for case in ("anonymous", "forged", "expired", "rank_only"):
        out[f"infer_{case}"] = outcome(lambda case=case: infer(tokens.get(case)))
    out["infer_other_model"] = outcome(lambda: infer(tokens["good"], name="other"))
    out["infer_other_model_anonymous"] = outcome(lambda: infer(None, name="other"))
    bad_shape = {**feeds, "item_features": feeds["item_features"][:, :-1]}
    out["infer_bad_shape"] = outcome(lambda: infer(tokens["good"], tensors=bad_shape))
    huge = {**feeds, "item_features": np.zeros(spec["oversize_elements"], dtype=np.float32)}
    out["infer_oversize"] = outcome(lambda: infer(tokens["good"], tensors=huge))
    out["live_after_oversize"] = outcome(client.is_server_live)

    # Triton's own stub: typed contents, and the trailing metadata.
    def typed_request(name: str = model) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=name, id="typed-1")
        for tensor_name, array in feeds.items():
            datatype = triton.np_to_triton_dtype(array.dtype)
            item = request.inputs.add(name=tensor_name, datatype=datatype, shape=array.shape)
            getattr(item.contents, TYPED[datatype]).extend(array.reshape(-1).tolist())
        request.outputs.add(name="score")
        return request

    def typed(token: str | None, request: service_pb2.ModelInferRequest) -> dict[str, Any]:
        metadata = [*bearer(token).items(), ("x-request-id", "client-typed-1")]
        response, call = stub.ModelInfer.with_call(request, metadata=metadata, timeout=30)
        trailers = dict(call.trailing_metadata() or ())
        return {
            "id": response.id,
            "shape": list(response.outputs[0].shape),
            "score": np.frombuffer(response.raw_output_contents[0], dtype="<f4").tolist(),
            "request_id": trailers.get("x-request-id"),
            "client_request_id": trailers.get("x-client-request-id"),
        }

    out["infer_typed"] = outcome(lambda: typed(tokens["good"], typed_request()))
    out["infer_typed_anonymous"] = outcome(lambda: typed(None, typed_request()))
    out["infer_typed_rank_only"] = outcome(lambda: typed(tokens["rank_only"], typed_request()))
    both = typed_request()
    both.raw_input_contents.extend(np.ascontiguousarray(a).tobytes() for a in feeds.values())
    out["infer_typed_and_raw"] = outcome(lambda: typed(tokens["good"], both))

    # Bytes that are no protobuf: parsed only after authentication.
    garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    out["garbage_anonymous"] = outcome(lambda: garbage(b"\xff\xff\xff", timeout=30) and None)
    out["garbage"] = outcome(
        lambda: (
            garbage(b"\xff\xff\xff", metadata=list(bearer(tokens["good"]).items()), timeout=30)
            and None
        )
    )
    # Feature provenance: a default client's token sends string ids as BYTES; the server
    # fills the features. Sending the features themselves is refused without infer:raw.
    ids = spec["ids"]
    id_tensors = {
        "user_id": np.array([ids["user_id"].encode()], dtype=np.object_),
        "item_id": np.array([i.encode() for i in ids["item_ids"]], dtype=np.object_),
    }
    out["ids_metadata"] = outcome(
        lambda: client.get_model_metadata(model, headers=bearer(tokens["ids"]), as_json=True)
    )
    out["ids_infer"] = outcome(lambda: infer(tokens["ids"], tensors=id_tensors, request_id="ids-1"))
    forged = {**id_tensors, "user_features": feeds["user_features"] + np.float32(0.3)}
    out["ids_with_features"] = outcome(lambda: infer(tokens["ids"], tensors=forged))
    out["raw_without_scope"] = outcome(lambda: infer(tokens["ids"]))

    def typed_ids() -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=model, id="typed-ids")
        for name, array in id_tensors.items():
            item = request.inputs.add(name=name, datatype="BYTES", shape=array.shape)
            item.contents.bytes_contents.extend(array.tolist())
        return request

    out["ids_typed"] = outcome(lambda: typed(tokens["ids"], typed_ids()))
    client.close()
    channel.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
