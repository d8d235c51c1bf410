"""Build the demo ranker's ONNX graph by hand from numpy weights.

Hand-built rather than `torch.onnx.export` so the graph is exactly what this
file says (no exporter version drift, no dynamo/TorchScript differences), and
so that rebuilding it needs numpy and onnx only. The trainer passes the
weights of its torch module; the layout mirrors that module op for op.

    dense  = (concat(user_features, item_features) - mean) * scale
    deep   = W3·relu(W2·relu(W1·[user_emb[user_id], item_emb[item_id], dense] + b1) + b2) + b3
    wide   = (user_features[:, :G] * item_features[:, :G]) · w_wide
    score  = sigmoid(deep + wide)                                   shape [N]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is what opset 17 shipped with; any onnxruntime that runs opset 17 loads it.
IR_VERSION = 8

OUTPUT_NAME = "score"

# Weight names the builder expects, with their shapes in terms of the
# signature: Linear weights are torch-style [out, in] (Gemm transB=1).
WEIGHT_NAMES = (
    "user_emb",  # [U+1, E]
    "item_emb",  # [I+1, E]
    "feat_mean",  # [Fu+Fi]
    "feat_scale",  # [Fu+Fi]
    "w1",
    "b1",
    "w2",
    "b2",
    "w3",
    "b3",
    "w_wide",  # [G, 1]
)


@dataclass(frozen=True)
class Signature:
    n_user_features: int
    n_item_features: int
    n_genres: int


def build_model(
    weights: Mapping[str, NDArray[np.float32]], signature: Signature, *, doc: str = ""
) -> onnx.ModelProto:
    missing = [n for n in WEIGHT_NAMES if n not in weights]
    if missing:
        raise ValueError(f"missing weights: {missing}")
    fu, fi, g = signature.n_user_features, signature.n_item_features, signature.n_genres

    inits = [
        numpy_helper.from_array(np.ascontiguousarray(weights[n], dtype=np.float32), n)
        for n in WEIGHT_NAMES
    ]
    inits += [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis1_start"),
        numpy_helper.from_array(np.array([g], dtype=np.int64), "genre_end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"),
    ]
    node = helper.make_node
    nodes = [
        node("Gather", ["user_emb", "user_id"], ["u_emb"], axis=0),
        node("Gather", ["item_emb", "item_id"], ["i_emb"], axis=0),
        node("Concat", ["user_features", "item_features"], ["dense_raw"], axis=1),
        node("Sub", ["dense_raw", "feat_mean"], ["dense_centred"]),
        node("Mul", ["dense_centred", "feat_scale"], ["dense"]),
        node("Concat", ["u_emb", "i_emb", "dense"], ["x"], axis=1),
        node("Gemm", ["x", "w1", "b1"], ["h1_pre"], transB=1),
        node("Relu", ["h1_pre"], ["h1"]),
        node("Gemm", ["h1", "w2", "b2"], ["h2_pre"], transB=1),
        node("Relu", ["h2_pre"], ["h2"]),
        node("Gemm", ["h2", "w3", "b3"], ["deep"], transB=1),
        node("Slice", ["user_features", "axis1_start", "genre_end", "axis1"], ["u_genre"]),
        node("Slice", ["item_features", "axis1_start", "genre_end", "axis1"], ["i_genre"]),
        node("Mul", ["u_genre", "i_genre"], ["cross"]),
        node("MatMul", ["cross", "w_wide"], ["wide"]),
        node("Add", ["deep", "wide"], ["logit"]),
        node("Sigmoid", ["logit"], ["prob"]),
        node("Reshape", ["prob", "flat_shape"], [OUTPUT_NAME]),
    ]
    inputs = [
        helper.make_tensor_value_info("user_id", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("item_id", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("user_features", TensorProto.FLOAT, ["N", fu]),
        helper.make_tensor_value_info("item_features", TensorProto.FLOAT, ["N", fi]),
    ]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])]
    graph = helper.make_graph(nodes, "demo_ranker", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="secure-model-gateway.models.demo",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def signature_json(signature: Signature) -> dict[str, list[dict[str, object]]]:
    """The input/output signature as recorded in the model card."""
    fu, fi = signature.n_user_features, signature.n_item_features
    return {
        "inputs": [
            {"name": "user_id", "dtype": "int64", "shape": ["N"]},
            {"name": "item_id", "dtype": "int64", "shape": ["N"]},
            {"name": "user_features", "dtype": "float32", "shape": ["N", fu]},
            {"name": "item_features", "dtype": "float32", "shape": ["N", fi]},
        ],
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N"]}],
    }
