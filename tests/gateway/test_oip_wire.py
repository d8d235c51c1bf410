"""The infer decode stage checks a `WireInferRequest` the same way whatever wire it came
on: decoded by another surface into `ctx.wire` (gRPC), or from the REST body."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from gateway.decode import InferDecodeStage
from gateway.errors import GatewayError, InvalidRequest, MalformedRequest
from gateway.oip_wire import WireInferRequest, WireOutputRequest, WireTensor
from gateway.pipeline import Action, InferQuery, ModelRef
from models.ranker import TensorSpec
from tests.stage_context import stage_context

INPUTS = (
    TensorSpec("user_id", "INT64", (-1,)),
    TensorSpec("item_features", "FP32", (-1, 3)),
)
OUTPUTS = (TensorSpec("score", "FP32", (-1,)),)
MODEL = ModelRef(name="demo-ranker", version="1", digest="0" * 64)


def stage() -> InferDecodeStage:
    # No provenance: the signature check alone (every request is raw tensors).
    return InferDecodeStage(INPUTS, OUTPUTS, max_rows=10, model=MODEL, provenance=None)


def wire(**changes: Any) -> WireInferRequest:
    tensors = {
        "user_id": WireTensor("user_id", "INT64", (2,), np.array([3, 4], dtype=np.int64)),
        "item_features": WireTensor(
            "item_features", "FP32", (2, 3), np.arange(6, dtype=np.float32)
        ),
    }
    tensors.update(changes.pop("tensors", {}))
    return WireInferRequest(id="g-1", inputs=tuple(tensors.values()), **changes)


async def run(request: WireInferRequest) -> Any:
    return await stage()(stage_context(Action.INFER, wire=request))


@pytest.mark.asyncio
async def test_a_decoded_request_becomes_the_query() -> None:
    ctx = await run(wire(outputs=(WireOutputRequest("score", binary_data=True),)))
    query = ctx.payload
    assert isinstance(query, InferQuery)
    assert query.id == "g-1"
    assert query.outputs == ("score",)
    assert query.feeds["item_features"].shape == (2, 3)
    assert query.feeds["user_id"].dtype == np.int64
    # The request stays for the respond stage (its binary flags).
    assert ctx.wire.outputs[0].binary_data is True


@pytest.mark.asyncio
async def test_rest_bodies_decode_into_the_same_query() -> None:
    body = orjson.dumps(
        {
            "id": "g-1",
            "inputs": [
                {"name": "user_id", "shape": [2], "datatype": "INT64", "data": [3, 4]},
                {
                    "name": "item_features",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "data": [[0, 1, 2], [3, 4, 5]],
                },
            ],
        }
    )
    rest = await stage()(stage_context(Action.INFER, body=body))
    grpc = await run(wire())
    for name in ("user_id", "item_features"):
        np.testing.assert_array_equal(rest.payload.feeds[name], grpc.payload.feeds[name])
        assert rest.payload.feeds[name].dtype == grpc.payload.feeds[name].dtype
    assert isinstance(rest.wire, WireInferRequest)


BAD: dict[str, tuple[dict[str, Any], type[GatewayError]]] = {
    "array-of-another-dtype": (
        {"tensors": {"user_id": WireTensor("user_id", "INT64", (2,), np.array([3, 4], "<i4"))}},
        InvalidRequest,
    ),
    "array-size-not-shape": (
        {"tensors": {"user_id": WireTensor("user_id", "INT64", (3,), np.array([3, 4]))}},
        InvalidRequest,
    ),
    "non-finite": (
        {
            "tensors": {
                "item_features": WireTensor(
                    "item_features", "FP32", (2, 3), np.full(6, np.inf, dtype=np.float32)
                )
            }
        },
        InvalidRequest,
    ),
    "other-model": ({"model_name": "other"}, MalformedRequest),
    "other-version": ({"model_version": "2"}, MalformedRequest),
    "unknown-output": ({"outputs": (WireOutputRequest("nope"),)}, InvalidRequest),
    "too-many-rows": (
        {
            "tensors": {
                "user_id": WireTensor("user_id", "INT64", (11,), np.zeros(11, dtype=np.int64))
            }
        },
        InvalidRequest,
    ),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("how", sorted(BAD))
async def test_decoded_requests_are_checked_like_rest_ones(how: str) -> None:
    changes, error = BAD[how]
    with pytest.raises(GatewayError) as caught:
        await run(wire(**changes))
    assert type(caught.value) is error


@pytest.mark.asyncio
async def test_a_read_only_view_of_the_wire_buffer_is_copied() -> None:
    raw = np.array([3, 4], dtype=np.int64).tobytes()
    view = np.frombuffer(raw, dtype=np.int64)
    assert not view.flags.writeable
    ctx = await run(wire(tensors={"user_id": WireTensor("user_id", "INT64", (2,), view)}))
    fed = ctx.payload.feeds["user_id"]
    assert fed.flags.writeable
    assert fed.tolist() == [3, 4]
