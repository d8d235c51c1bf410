"""Runs KServe's stock gRPC client (kserve 0.21 `InferenceGRPCClient`) against a gateway.

Run by tests/clients/test_kserve_grpc.py in its own interpreter (see _grpc_gateway.py):
reads a spec on stdin (target, model, tokens, feeds, oversize element count) and prints
one JSON object, an outcome per check. KServe's client sends typed `contents` for list
data and raw contents for numpy data, so both are tried; the methods it has no helper
for (metadata) go through KServe's own generated stub. Last, it compares the gateway's
compiled proto with KServe's, in this one process: they must be the same descriptor,
and the gateway's private pool must not clash with KServe's registration.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as kserve_pb
from kserve.protocol.infer_type import RequestedOutput

NUMPY = {"INT64": np.int64, "FP32": np.float32}


async def outcome(check: Awaitable[Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "value": await check}
    except grpc.aio.AioRpcError as exc:
        return {
            "ok": False,
            "code": exc.code().name,
            "message": exc.details(),
            "trailers": {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)},
        }


def bearer(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def request(
    model: str, feeds: dict[str, Any], *, raw: bool, outputs: list[str] | None = None
) -> InferRequest:
    inputs = []
    for name, t in feeds.items():
        if raw:
            array = np.asarray(t["data"], dtype=NUMPY[t["datatype"]]).reshape(t["shape"])
            item = InferInput(name, list(array.shape), t["datatype"])
            item.set_data_from_numpy(array, binary_data=True)
        else:
            item = InferInput(name, t["shape"], t["datatype"], data=list(t["data"]))
        inputs.append(item)
    requested = [RequestedOutput(name) for name in outputs] if outputs else None
    return InferRequest(
        model_name=model, infer_inputs=inputs, request_id="kserve-1", request_outputs=requested
    )


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    target, model, tokens, feeds = spec["target"], spec["model"], spec["tokens"], spec["feeds"]
    out: dict[str, Any] = {}
    # retries=0: a refusal is the answer, not something to try again.
    client = InferenceGRPCClient(url=target, timeout=30, retries=0)

    async def infer(token: str | None, infer_request: InferRequest) -> dict[str, Any]:
        response = await client.infer(infer_request, headers=bearer(token))
        (score,) = [o for o in response.outputs if o.name == "score"]
        return {
            "id": response.id,
            "model_name": response.model_name,
            "outputs": [o.name for o in response.outputs],
            "shape": list(score.shape),
            "score": score.as_numpy().reshape(-1).tolist(),
        }

    async def metadata(token: str | None, name: str) -> dict[str, Any]:
        reply = await client._client_stub.ModelMetadata(
            kserve_pb.ModelMetadataRequest(name=name), metadata=bearer(token), timeout=30
        )
        return {
            "name": reply.name,
            "versions": list(reply.versions),
            "inputs": [(t.name, t.datatype, list(t.shape)) for t in reply.inputs],
            "outputs": [(t.name, t.datatype, list(t.shape)) for t in reply.outputs],
        }

    async def server_metadata() -> dict[str, Any]:
        reply = await client._client_stub.ServerMetadata(
            kserve_pb.ServerMetadataRequest(), timeout=30
        )
        return {"name": reply.name, "version": reply.version}

    out["live"] = await outcome(client.is_server_live())
    out["ready"] = await outcome(client.is_server_ready())
    out["server_metadata"] = await outcome(server_metadata())
    out["model_ready"] = await outcome(client.is_model_ready(model, headers=bearer(tokens["good"])))
    out["model_ready_anonymous"] = await outcome(client.is_model_ready(model))
    out["model_metadata"] = await outcome(metadata(tokens["good"], model))
    out["model_metadata_anonymous"] = await outcome(metadata(None, model))
    out["infer_typed"] = await outcome(infer(tokens["good"], request(model, feeds, raw=False)))
    out["infer_raw"] = await outcome(infer(tokens["good"], request(model, feeds, raw=True)))
    out["infer_requested_output"] = await outcome(
        infer(tokens["good"], request(model, feeds, raw=True, outputs=["score"]))
    )
    for case in ("anonymous", "forged", "expired", "rank_only"):
        out[f"infer_{case}"] = await outcome(
            infer(tokens.get(case), request(model, feeds, raw=False))
        )
    out["infer_other_model"] = await outcome(
        infer(tokens["good"], request("other", feeds, raw=False))
    )
    bad = dict(feeds)
    features = bad["item_features"]
    bad["item_features"] = {**features, "shape": [features["shape"][0] * 2, 10]}
    out["infer_bad_shape"] = await outcome(infer(tokens["good"], request(model, bad, raw=False)))
    huge = dict(feeds)
    count = spec["oversize_elements"]
    huge["item_features"] = {"datatype": "FP32", "shape": [count], "data": [0.0] * count}
    out["infer_oversize"] = await outcome(infer(tokens["good"], request(model, huge, raw=True)))
    out["live_after_oversize"] = await outcome(client.is_server_live())
    await client.close()

    # The gateway's stubs next to KServe's in one process: same descriptor, no clash.
    from gateway.grpc import grpc_predict_v2_pb2 as gateway_pb

    ours, theirs = gateway_pb.DESCRIPTOR.serialized_pb, kserve_pb.DESCRIPTOR.serialized_pb
    out["same_descriptor"] = ours == theirs
    return out


def main() -> None:
    json.dump(asyncio.run(run(json.load(sys.stdin))), sys.stdout)


if __name__ == "__main__":
    main()
