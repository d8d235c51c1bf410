"""The OIP binary tensor data extension at the ASGI level: well-formed bodies answer what
JSON answers, and every malformed one is a typed 400 (`{"error": ...}` on /v2) that
quotes nothing the client sent. Stock clients speak it in tests/clients/."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.errors import MalformedRequest
from gateway.oip_binary import encode_infer_response, tensor_from_raw, tensor_to_raw
from gateway.settings import Settings
from models.features import FeatureStore
from tests.served_scores import assert_served, served_scores

INFER = "/v2/models/demo-ranker/infer"
HEADER = "Inference-Header-Content-Length"
TYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}
MARK = "zelda.unique.mail@example.net"


@pytest.fixture(scope="module")
def feeds(settings: Settings) -> dict[str, np.ndarray]:
    store = FeatureStore.load(settings.resolve(settings.model.features_path))
    return store.inputs_for("u3", list(store.item_ids[10:14]))


@pytest.fixture(scope="module")
def expected(settings: Settings, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The model's scores marked as the default bundle's watermark marks them."""
    return served_scores(settings, feeds)


def binary_body(feeds: dict[str, np.ndarray], **extra: Any) -> tuple[dict[str, Any], list[bytes]]:
    """The JSON header (as a dict, to mutate) and the raw bytes of each input."""
    inputs = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": TYPES[array.dtype],
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, array in feeds.items()
    ]
    raws = [
        np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        for array in feeds.values()
    ]
    return {"inputs": inputs, **extra}, raws


def pack(header: dict[str, Any], raws: list[bytes]) -> tuple[bytes, str]:
    head = orjson.dumps(header)
    return head + b"".join(raws), str(len(head))


def post(
    client: TestClient,
    body: bytes,
    headers: dict[str, str],
    auth: Callable[..., dict[str, str]] | None,
) -> Any:
    # Raw tensors (every model input): the trusted scope (feature provenance).
    sent = {**(auth(("infer", "infer:raw")) if auth is not None else {}), **headers}
    return client.post(INFER, content=body, headers=sent)


def split(response: Any) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers[HEADER])
    return json.loads(response.content[:length]), response.content[length:]


def test_binary_inputs_answer_what_onnxruntime_gives(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    feeds: dict[str, np.ndarray],
    expected: np.ndarray,
) -> None:
    header, raws = binary_body(feeds, id="b-1", outputs=[{"name": "score"}])
    body, length = pack(header, raws)
    response = post(
        client, body, {HEADER: length, "Content-Type": "application/octet-stream"}, auth
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert HEADER.lower() not in response.headers
    out = response.json()
    assert out["id"] == "b-1"
    # Within rounding and the bundle's keyed score perturbation (at most 0.004).
    assert_served(out["outputs"][0]["data"], expected)


@pytest.mark.parametrize(
    "ask",
    [
        {"outputs": [{"name": "score", "parameters": {"binary_data": True}}]},
        {"parameters": {"binary_data_output": True}},
        # The output's own flag overrides the request-level one.
        {
            "parameters": {"binary_data_output": False},
            "outputs": [{"name": "score", "parameters": {"binary_data": True}}],
        },
    ],
)
def test_binary_outputs_follow_the_json_header(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    feeds: dict[str, np.ndarray],
    expected: np.ndarray,
    ask: dict[str, Any],
) -> None:
    # JSON inputs, no Content-Type at all (what tritonclient sends): JSON is meant.
    inputs = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": TYPES[a.dtype],
            "data": a.reshape(-1).tolist(),
        }
        for n, a in feeds.items()
    ]
    response = post(client, orjson.dumps({"inputs": inputs, **ask}), {}, auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    head, raw = split(response)
    (out,) = head["outputs"]
    assert "data" not in out
    assert out["parameters"] == {"binary_data_size": 16}
    assert len(raw) == 16
    # Within rounding and the bundle's keyed score perturbation (at most 0.004).
    assert_served(np.frombuffer(raw, dtype="<f4"), expected)


def test_an_explicit_binary_data_false_answers_json(
    client: TestClient, auth: Callable[..., dict[str, str]], feeds: dict[str, np.ndarray]
) -> None:
    header, raws = binary_body(
        feeds,
        parameters={"binary_data_output": True},
        outputs=[{"name": "score", "parameters": {"binary_data": False}}],
    )
    body, length = pack(header, raws)
    response = post(client, body, {HEADER: length}, auth)
    assert response.status_code == 200, response.text
    assert HEADER.lower() not in response.headers
    assert len(response.json()["outputs"][0]["data"]) == 4


def _malformed(feeds: dict[str, np.ndarray], how: str) -> tuple[bytes, dict[str, str]]:
    header, raws = binary_body(feeds)
    first = header["inputs"][0]
    length: str | None = None
    if how == "header-not-a-number":
        length = "12abc"
    elif how == "header-signed":
        length = "+12"
    elif how == "header-zero":
        length = "0"
    elif how == "header-past-body":
        length = "999999"
    elif how == "bytes-left-over":
        raws.append(b"\x00" * 8)
    elif how == "size-past-body":
        header["inputs"][-1]["parameters"]["binary_data_size"] += 8
    elif how == "size-short":
        # Sizes still add up to the body, but the first tensor gets too few bytes for its shape.
        first["parameters"]["binary_data_size"] -= 8
        header["inputs"][1]["parameters"]["binary_data_size"] += 8
    elif how == "size-not-integer":
        first["parameters"]["binary_data_size"] = "32"
    elif how == "size-bool":
        first["parameters"]["binary_data_size"] = True
    elif how == "size-negative":
        first["parameters"]["binary_data_size"] = -1
    elif how == "size-float":
        first["parameters"]["binary_data_size"] = 32.0
    elif how == "data-and-size":
        first["data"] = [1, 2, 3, 4]
    elif how == "neither-data-nor-size":
        del first["parameters"]
        raws = raws[1:]
    elif how == "shape-disagrees":
        first["shape"] = [5]
    elif how == "unknown-datatype":
        first["datatype"] = "COMPLEX128"
    elif how == "wrong-datatype":
        first["datatype"] = "INT32"
        first["parameters"]["binary_data_size"] = 16
        raws[0] = raws[0][:16]
    elif how == "non-finite":
        index = next(i for i, t in enumerate(header["inputs"]) if t["datatype"] == "FP32")
        raws[index] = struct.pack("<f", float("nan")) + raws[index][4:]
    elif how == "header-not-json":
        head = b"{not json"
        return head + b"".join(raws), {HEADER: str(len(head))}
    elif how == "binary-output-flag-not-bool":
        header["outputs"] = [{"name": "score", "parameters": {"binary_data": "yes"}}]
    elif how == "binary-data-output-not-bool":
        header["parameters"] = {"binary_data_output": 1}
    elif how == "output-twice":
        header["outputs"] = [{"name": "score"}, {"name": "score"}]
    elif how == "body-model-name":
        header["model_name"] = MARK
    elif how == "body-model-version":
        header["model_version"] = MARK
    elif how == "size-without-header":
        return orjson.dumps(header), {"Content-Type": "application/json"}
    body, real_length = pack(header, raws)
    return body, {HEADER: length or real_length, "Content-Type": "application/octet-stream"}


# Each case and the rule its refusal names.
MALFORMED = {
    "header-not-a-number": "must be a decimal byte count",
    "header-signed": "must be a decimal byte count",
    "header-zero": "does not fit the body",
    "header-past-body": "does not fit the body",
    "bytes-left-over": "does not add up to the body's length",
    "size-past-body": "runs past the body",
    "size-short": "24 bytes of data, shape and datatype need 32",
    "size-not-integer": "binary_data_size must be an integer",
    "size-bool": "binary_data_size must be an integer",
    "size-negative": "binary_data_size must be an integer",
    "size-float": "binary_data_size must be an integer",
    "data-and-size": "both data and binary_data_size",
    "neither-data-nor-size": "neither data nor binary_data_size",
    "shape-disagrees": "32 bytes of data, shape and datatype need 40",
    "unknown-datatype": "not a known OIP datatype",
    "wrong-datatype": "datatype must be INT64",
    "non-finite": "values must be finite",
    "header-not-json": "not valid JSON",
    "binary-output-flag-not-bool": "binary_data must be true or false",
    "binary-data-output-not-bool": "binary_data_output must be true or false",
    "output-twice": "each output may be requested once",
    "body-model-name": "model_name in the request does not match",
    "body-model-version": "model_version in the request does not match",
    "size-without-header": "needs the Inference-Header-Content-Length header",
}


@pytest.mark.parametrize("how", MALFORMED)
def test_malformed_binary_bodies_get_a_typed_400(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    feeds: dict[str, np.ndarray],
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    body, headers = _malformed(feeds, how)
    with caplog.at_level(logging.DEBUG):
        response = post(client, body, headers, auth)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}
    assert MALFORMED[how] in response.json()["error"]
    assert MARK not in response.text
    assert MARK not in "\n".join(r.getMessage() for r in caplog.records)


def test_a_malformed_body_is_not_parsed_before_authentication(
    client: TestClient, feeds: dict[str, np.ndarray]
) -> None:
    body, headers = _malformed(feeds, "bytes-left-over")
    response = post(client, body, headers, None)
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "text/plain"}, 415),
        # The octet-stream media type is only for bodies that say where their JSON ends.
        ({"Content-Type": "application/octet-stream"}, 415),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, 415),
        ({"Content-Type": "text/plain", HEADER: "10"}, 415),
    ],
)
def test_media_types_and_encodings_outside_the_protocol_are_refused(
    client: TestClient,
    auth: Callable[..., dict[str, str]],
    feeds: dict[str, np.ndarray],
    headers: dict[str, str],
    status: int,
) -> None:
    inputs = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": TYPES[a.dtype],
            "data": a.reshape(-1).tolist(),
        }
        for n, a in feeds.items()
    ]
    response = post(client, orjson.dumps({"inputs": inputs}), headers, auth)
    assert response.status_code == status
    assert set(response.json()) == {"error"}


def test_input_names_are_not_echoed(
    client: TestClient, auth: Callable[..., dict[str, str]], feeds: dict[str, np.ndarray]
) -> None:
    header, raws = binary_body(feeds)
    header["inputs"][0]["name"] = MARK
    body, length = pack(header, raws)
    response = post(client, body, {HEADER: length}, auth)
    assert response.status_code == 400
    assert MARK not in response.text


def test_a_body_over_the_limit_is_refused_before_it_is_read(
    client: TestClient, auth: Callable[..., dict[str, str]], settings: Settings
) -> None:
    too_big = b"\x00" * (settings.limits.max_body_bytes + 1)
    response = post(client, too_big, {HEADER: "2"}, auth)
    assert response.status_code == 413


def test_rows_beyond_the_limit_are_refused(
    client: TestClient, auth: Callable[..., dict[str, str]], settings: Settings
) -> None:
    rows = settings.limits.max_candidates + 1
    header = {
        "inputs": [
            {
                "name": "user_id",
                "shape": [rows],
                "datatype": "INT64",
                "parameters": {"binary_data_size": rows * 8},
            },
        ]
    }
    body, length = pack(header, [np.zeros(rows, dtype="<i8").tobytes()])
    response = post(client, body, {HEADER: length}, auth)
    assert response.status_code == 400


# -- the tensor codec against tritonclient's own (in a subprocess: see tests/clients) --

_ORACLE = """
import json, sys
import numpy as np
from tritonclient.utils import serialize_byte_tensor
cases = json.load(sys.stdin)
out = []
for case in cases:
    array = np.array([s.encode("latin-1") for s in case], dtype=np.object_)
    out.append(serialize_byte_tensor(array).item().hex() if array.size else "")
json.dump(out, sys.stdout)
"""
BYTES_CASES = [["a", "", "ümlaut\x00tail"], [""], ["x" * 300], []]


@pytest.fixture(scope="module")
def triton_bytes() -> list[bytes]:
    done = subprocess.run(
        [sys.executable, "-c", _ORACLE],
        input=json.dumps(BYTES_CASES).encode(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [bytes.fromhex(h) for h in json.loads(done.stdout)]


@pytest.mark.parametrize("case", range(len(BYTES_CASES)))
def test_bytes_tensors_match_tritonclient(triton_bytes: list[bytes], case: int) -> None:
    values = [s.encode("latin-1") for s in BYTES_CASES[case]]
    raw = triton_bytes[case]
    decoded = tensor_from_raw("t", "BYTES", [len(values)], raw)
    assert decoded.tolist() == values
    assert tensor_to_raw("BYTES", decoded) == raw


@pytest.mark.parametrize(
    ("raw", "shape"),
    [
        (b"\x01\x00\x00", [1]),  # length cut short
        (struct.pack("<I", 5) + b"abc", [1]),  # element runs past the data
        (struct.pack("<I", 1) + b"a" + b"z", [1]),  # bytes left over
        (struct.pack("<I", 0), [2]),  # fewer elements than the shape
        (struct.pack("<I", 2**32 - 1), [1]),  # a huge length, no data
        (b"", [10**12]),  # an absurd shape must not drive an allocation
    ],
)
def test_malformed_bytes_tensors_are_refused(raw: bytes, shape: list[int]) -> None:
    with pytest.raises(MalformedRequest):
        tensor_from_raw("t", "BYTES", shape, raw)


def test_bool_bytes_must_be_zero_or_one() -> None:
    assert tensor_from_raw("t", "BOOL", [2], b"\x00\x01").tolist() == [False, True]
    with pytest.raises(MalformedRequest):
        tensor_from_raw("t", "BOOL", [2], b"\x00\x02")


@pytest.mark.parametrize("datatype", ["INT8", "UINT16", "INT32", "INT64", "FP16", "FP32", "FP64"])
def test_fixed_size_tensors_round_trip_little_endian(datatype: str) -> None:
    dtype = {
        "INT8": "<i1",
        "UINT16": "<u2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }[datatype]
    array = np.arange(6, dtype=dtype).reshape(2, 3)
    raw = array.tobytes()
    decoded = tensor_from_raw("t", datatype, [2, 3], raw)
    assert decoded.flags.writeable
    np.testing.assert_array_equal(decoded, array)
    assert tensor_to_raw(datatype, decoded) == raw


def test_response_encoding_puts_binary_outputs_after_the_header() -> None:
    body = {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {
                "name": "a",
                "datatype": "FP32",
                "shape": [2],
                "data": np.array([1.5, 2.5], dtype=np.float32),
                "parameters": {"binary_data": True},
            },
            {"name": "b", "datatype": "INT64", "shape": [1], "data": np.array([7])},
            {
                "name": "c",
                "datatype": "BYTES",
                "shape": [1],
                "data": np.array([b"hi"], dtype=object),
                "parameters": {"binary_data": True},
            },
        ],
    }
    raw, length = encode_infer_response(body)
    assert length is not None
    head = json.loads(raw[:length])
    assert head["outputs"][0] == {
        "name": "a",
        "datatype": "FP32",
        "shape": [2],
        "parameters": {"binary_data_size": 8},
    }
    assert head["outputs"][1]["data"] == [7]
    assert head["outputs"][2]["parameters"] == {"binary_data_size": 6}
    assert raw[length:] == np.array([1.5, 2.5], dtype="<f4").tobytes() + b"\x02\x00\x00\x00hi"


def test_the_body_may_name_the_model_and_version_of_the_path(
    client: TestClient, auth: Callable[..., dict[str, str]], feeds: dict[str, np.ndarray]
) -> None:
    header, raws = binary_body(feeds, model_name="demo-ranker", model_version="1")
    body, length = pack(header, raws)
    response = post(client, body, {HEADER: length}, auth)
    assert response.status_code == 200, response.text
