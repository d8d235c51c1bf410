"""INT8 packaging: the holdout gate admits a faithful quantisation and refuses a broken one."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models.demo import model_bytes
from models.demo_package import demo_holdout
from models.loader import PolicyView
from models.ort import session_from_bytes
from models.pack import Holdout, QuantGate, quantize_int8
from models.package_errors import PackError
from tests.models.conftest import Box


@pytest.fixture(scope="module")
def holdout() -> Holdout:
    return demo_holdout()


def broken_quantizer(blob: bytes) -> bytes:
    """A quantiser with a bug: it flips the sign of the largest float weight tensor."""
    model = onnx.load_from_string(quantize_int8(blob))
    floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    target = max(floats, key=lambda i: int(np.prod(i.dims)))
    target.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(target), target.name))
    return bytes(model.SerializeToString())


def test_int8_package_passes_the_gate_and_records_both_figures(box: Box, holdout: Holdout) -> None:
    result = box.pack("2", quantize="int8", holdout=holdout)
    q = result.quantization
    assert q is not None
    assert q.rows == len(holdout[1])
    assert q.max_score_diff <= QuantGate().max_score_diff
    assert q.auc_drop <= QuantGate().max_auc_drop
    recorded = json.loads((result.directory / "manifest.json").read_text())["quantization"]
    assert recorded["mode"] == "int8-dynamic"
    assert recorded["auc_int8"] == pytest.approx(q.auc_int8, abs=1e-6)
    assert recorded["max_score_diff"] == pytest.approx(q.max_score_diff, abs=1e-6)

    loaded = box.registry(policy=PolicyView(frozenset({"demo-ranker"}), lambda _n: None)).load(
        "demo-ranker", "2"
    )
    inputs, _labels = holdout
    sample = {k: v[:500] for k, v in inputs.items()}
    int8 = loaded.ranker.run_sync(sample)["score"].reshape(-1)
    (fp32,) = session_from_bytes(model_bytes()).run(["score"], sample)
    assert np.max(np.abs(int8 - fp32.reshape(-1))) <= QuantGate().max_score_diff
    assert loaded.ranker.ref.digest != recorded.get("source_sha256")


def test_broken_quantisation_is_refused_with_both_figures(box: Box, holdout: Holdout) -> None:
    with pytest.raises(PackError) as refused:
        box.pack("2", quantize="int8", holdout=holdout, quantizer=broken_quantizer)
    message = str(refused.value)
    assert "max score difference" in message
    assert "AUC drop" in message
    assert not (box.root / "demo-ranker" / "2").exists()


def test_a_strict_gate_refuses_even_a_good_quantisation(box: Box, holdout: Holdout) -> None:
    with pytest.raises(PackError, match="outside the gate"):
        box.pack("2", quantize="int8", holdout=holdout, gate=QuantGate(max_score_diff=1e-6))


def test_quantisation_needs_a_holdout(box: Box) -> None:
    with pytest.raises(PackError, match="holdout"):
        box.pack("2", quantize="int8")
    with pytest.raises(PackError, match="unknown quantisation"):
        box.pack("2", quantize="int4")
