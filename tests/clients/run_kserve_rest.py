"""Runs KServe's `InferenceRESTClient` (kserve 0.21), unchanged, against a gateway.

Run by tests/clients/test_kserve_rest.py in its own interpreter (see _gateway.py), with
the same spec on stdin as run_triton_http.py; one JSON report on stdout: each step
{"ok": ...} or {"error": {"status", "message"}} as the client raised it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

NUMPY = {"INT64": np.int64, "FP32": np.float32}


async def step(call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    try:
        return {"ok": await call()}
    except httpx.HTTPStatusError as exc:
        return {"error": {"status": str(exc.response.status_code), "message": str(exc)}}


async def main() -> None:
    spec = json.load(sys.stdin)
    url, model, tokens = spec["url"], spec["model"], spec["tokens"]
    arrays = {
        t["name"]: np.asarray(t["data"], dtype=NUMPY[t["datatype"]]).reshape(t["shape"])
        for t in spec["inputs"]
    }
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))

    def auth(scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[scope]}"} if scope else {}

    def request(
        *,
        binary: bool,
        outputs: list[RequestedOutput] | None = None,
        model_name: str = model,
        bad_shape: bool = False,
        request_id: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> InferRequest:
        inputs = []
        for name, array in arrays.items():
            shape = list(array.shape)
            item = InferInput(name, shape, "INT64" if array.dtype == np.int64 else "FP32")
            item.set_data_from_numpy(array, binary_data=binary)
            if bad_shape:
                item.shape = [1, *shape]
            inputs.append(item)
        return InferRequest(
            model_name,
            inputs,
            request_id=request_id,
            request_outputs=outputs,
            parameters=parameters,
        )

    def infer(
        data: InferRequest, scope: str = "infer", model_name: str = model
    ) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            headers: dict[str, str] = {}
            response = await client.infer(
                url, data, model_name=model_name, headers=auth(scope), response_headers=headers
            )
            (output,) = response.outputs
            score = output.as_numpy()
            return {
                "id": response.id,
                "model_name": response.model_name,
                "name": output.name,
                "shape": list(output.shape),
                "datatype": output.datatype,
                "score": score.tolist(),
                "score_dtype": str(score.dtype),
                "binary_response": "inference-header-content-length" in headers,
            }

        return call

    binary_out = [RequestedOutput("score", parameters={"binary_data": True})]
    report = {
        "live": await step(lambda: client.is_server_live(url)),
        "ready": await step(lambda: client.is_server_ready(url)),
        "model_ready": await step(lambda: client.is_model_ready(url, model, headers=auth("infer"))),
        # InferRequest.to_rest() puts model_name (and a uuid id) in the body.
        "json": await step(infer(request(binary=False, request_id="kserve-1"))),
        "binary_in": await step(infer(request(binary=True))),
        "binary_in_binary_out": await step(infer(request(binary=True, outputs=binary_out))),
        "json_in_binary_out_all": await step(
            infer(request(binary=False, parameters={"binary_data_output": True}))
        ),
        # The body names another model than the path.
        "body_names_other_model": await step(
            infer(request(binary=False, model_name="other-model"), model_name=model)
        ),
        "wrong_model": await step(
            infer(request(binary=False, model_name="no-such-model"), model_name="no-such-model")
        ),
        "bad_shape": await step(infer(request(binary=True, bad_shape=True))),
        "missing_token": await step(infer(request(binary=False), scope="")),
        "wrong_scope": await step(infer(request(binary=False), scope="rank")),
    }
    await client.close()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
