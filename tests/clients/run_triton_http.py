"""Runs `tritonclient.http` (2.73), unchanged, against a gateway; one JSON report on stdout.

Run by tests/clients/test_triton_http.py in its own interpreter (see _gateway.py). The
spec on stdin: {"host_port", "model", "tokens": {scope: token}, "inputs": [{"name",
"datatype", "shape", "data"}]}. Each step reports {"ok": ...} or {"error": {"status",
"message"}} as the client raised it; the test decides what is right.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

NUMPY = {"INT64": np.int64, "FP32": np.float32, "INT32": np.int32, "FP64": np.float64}


def step(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": call()}
    except InferenceServerException as exc:
        return {"error": {"status": exc.status(), "message": exc.message()}}


def main() -> None:
    spec = json.load(sys.stdin)
    model = spec["model"]
    tokens = spec["tokens"]
    arrays = {
        t["name"]: np.asarray(t["data"], dtype=NUMPY[t["datatype"]]).reshape(t["shape"])
        for t in spec["inputs"]
    }
    client = httpclient.InferenceServerClient(spec["host_port"], network_timeout=60.0)

    def auth(scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[scope]}"}

    def inputs(
        binary: bool | dict[str, bool], shapes: dict[str, list[int]] | None = None
    ) -> list[Any]:
        made = []
        for name, array in arrays.items():
            as_binary = binary if isinstance(binary, bool) else binary[name]
            shape = (shapes or {}).get(name, list(array.shape))
            item = httpclient.InferInput(name, list(array.shape), NUMPY_NAMES[array.dtype.type])
            item.set_data_from_numpy(array, binary_data=as_binary)
            # A declared shape that does not match the data: what a buggy or hostile
            # client sends (the client checks only its own numpy array).
            item.set_shape(shape)
            made.append(item)
        return made

    def infer(
        scope: str = "infer",
        *,
        binary: bool | dict[str, bool] = True,
        outputs: list[Any] | None = None,
        model_name: str = model,
        model_version: str = "",
        request_id: str = "",
        shapes: dict[str, list[int]] | None = None,
        compression: str | None = None,
    ) -> Callable[[], Any]:
        def call() -> Any:
            result = client.infer(
                model_name,
                inputs(binary, shapes),
                model_version=model_version,
                outputs=outputs,
                request_id=request_id,
                headers=auth(scope) if scope else None,
                request_compression_algorithm=compression,
            )
            return {
                "response": result.get_response(),
                "score": result.as_numpy("score").tolist(),
                "score_dtype": str(result.as_numpy("score").dtype),
            }

        return call

    # Feature provenance: string ids as BYTES with a default client's token.
    ids = spec["ids"]
    id_arrays = {
        "user_id": np.array([ids["user_id"].encode()], dtype=np.object_),
        "item_id": np.array([i.encode() for i in ids["item_ids"]], dtype=np.object_),
    }

    def infer_ids(
        tensors: dict[str, np.ndarray], *, binary: bool, scope: str = "ids"
    ) -> Callable[[], Any]:
        def call() -> Any:
            made = []
            for name, array in tensors.items():
                datatype = "BYTES" if array.dtype == np.object_ else NUMPY_NAMES[array.dtype.type]
                item = httpclient.InferInput(name, list(array.shape), datatype)
                item.set_data_from_numpy(array, binary_data=binary)
                made.append(item)
            result = client.infer(model, made, headers=auth(scope))
            return {"response": result.get_response(), "score": result.as_numpy("score").tolist()}

        return call

    def from_metadata() -> Any:
        # What a stock client does with no prior knowledge: build the request from metadata.
        meta = client.get_model_metadata(model, headers=auth("ids"))
        values = {"user_id": [ids["user_id"]], "item_id": ids["item_ids"]}
        made = []
        for described in meta["inputs"]:
            array = np.array([v.encode() for v in values[described["name"]]], dtype=np.object_)
            name, datatype = described["name"], described["datatype"]
            item = httpclient.InferInput(name, list(array.shape), datatype)
            item.set_data_from_numpy(array)
            made.append(item)
        result = client.infer(model, made, headers=auth("ids"))
        return {"response": result.get_response(), "score": result.as_numpy("score").tolist()}

    forged = {**id_arrays, "user_features": arrays["user_features"] + np.float32(0.3)}
    score = httpclient.InferRequestedOutput
    report = {
        "ids_json": step(infer_ids(id_arrays, binary=False)),
        "ids_binary": step(infer_ids(id_arrays, binary=True)),
        "ids_from_metadata": step(from_metadata),
        "ids_with_features": step(infer_ids(forged, binary=True)),
        "raw_without_scope": step(infer_ids(arrays, binary=True)),
        "server_metadata": step(lambda: client.get_server_metadata()),
        "live": step(lambda: client.is_server_live()),
        "ready": step(lambda: client.is_server_ready()),
        "model_ready": step(lambda: client.is_model_ready(model, headers=auth("infer"))),
        "model_metadata": step(lambda: client.get_model_metadata(model, headers=auth("infer"))),
        # Inference, every way the client sends it.
        "json": step(infer(binary=False, outputs=[score("score", binary_data=False)])),
        "binary_in_binary_out": step(infer(binary=True, request_id="triton-7")),
        "binary_in_json_out": step(infer(binary=True, outputs=[score("score", binary_data=False)])),
        "json_in_binary_out": step(infer(binary=False, outputs=[score("score", binary_data=True)])),
        "mixed_inputs": step(
            infer(binary={name: i % 2 == 0 for i, name in enumerate(arrays)}, model_version="1")
        ),
        # Errors, as the client raises them.
        "wrong_model": step(infer(model_name="no-such-model")),
        "wrong_version": step(infer(model_version="9")),
        "bad_shape": step(infer(shapes={next(iter(arrays)): [1]})),
        "bad_shape_json": step(infer(binary=False, shapes={next(iter(arrays)): [1]})),
        "missing_token": step(infer(scope="")),
        "wrong_scope": step(infer(scope="rank")),
        "unknown_output": step(infer(outputs=[score("no-such-output")])),
        # Compressed bodies are refused: decompressing would outgrow the body limit.
        "gzip_request": step(infer(compression="gzip")),
        # Triton's extensions, scope admin.
        "statistics": step(lambda: client.get_inference_statistics(model, headers=auth("admin"))),
        "statistics_all": step(lambda: client.get_inference_statistics(headers=auth("admin"))),
        "statistics_version": step(
            lambda: client.get_inference_statistics(model, "1", headers=auth("admin"))
        ),
        "statistics_infer_scope": step(
            lambda: client.get_inference_statistics(model, headers=auth("infer"))
        ),
        "config": step(lambda: client.get_model_config(model, headers=auth("admin"))),
        "config_wrong_model": step(
            lambda: client.get_model_config("no-such-model", headers=auth("admin"))
        ),
        "repository_index": step(lambda: client.get_model_repository_index(headers=auth("admin"))),
        "repository_index_infer_scope": step(
            lambda: client.get_model_repository_index(headers=auth("infer"))
        ),
    }
    client.close()
    json.dump(report, sys.stdout)


NUMPY_NAMES = {np.int64: "INT64", np.float32: "FP32", np.int32: "INT32", np.float64: "FP64"}

if __name__ == "__main__":
    main()
