"""`gateway models pack`: check, optionally quantise, encrypt and sign an ONNX model.

The source model is plaintext on the packer's machine already; what this module
guarantees is that the package it writes holds no plaintext, that quantised
bytes only ever live in memory or in a private temp dir that is wiped, and
that a package is written completely (temp dir, then one rename) or not at all.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.files import write_private
from models.package_errors import PackError
from models.package_format import (
    CIPHERTEXT,
    FORMAT,
    MANIFEST,
    NAME_PATTERN,
    WRAPPED_DEK,
    core_digest,
    dek_aad,
    payload_aad,
)
from models.signing import sign_package
from models.stats import FeatureStats
from security import KeyProvider, KeyringError

Quantizer = Callable[[bytes], bytes]
Holdout = tuple[dict[str, np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class QuantGate:
    """A quantised model is refused if it moves scores or AUC more than this on the holdout."""

    # Scores are click probabilities in [0, 1]; the AUC gate guards ranking quality.
    max_score_diff: float = 0.05
    max_auc_drop: float = 0.005


@dataclass(frozen=True, slots=True)
class QuantReport:
    max_score_diff: float
    auc_fp32: float
    auc_int8: float
    rows: int

    @property
    def auc_drop(self) -> float:
        return self.auc_fp32 - self.auc_int8

    def as_json(self) -> dict[str, float | int]:
        return {
            "max_score_diff": round(self.max_score_diff, 6),
            "auc_fp32": round(self.auc_fp32, 6),
            "auc_int8": round(self.auc_int8, 6),
            "auc_drop": round(self.auc_drop, 6),
            "holdout_rows": self.rows,
        }


@dataclass(frozen=True, slots=True)
class PackResult:
    directory: Path
    manifest: dict[str, Any]
    quantization: QuantReport | None


def _now_iso(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_onnx(model_bytes: bytes) -> None:
    """`onnx.checker` on the bytes; PackError if it is not a valid model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, DecodeError, ValueError) as exc:
        raise PackError(f"not a valid ONNX model: {type(exc).__name__}: {exc}") from None


def io_signature(model_bytes: bytes) -> dict[str, list[dict[str, object]]]:
    from models.ort import session_from_bytes
    from models.ranker import TensorSpec, _spec

    session = session_from_bytes(model_bytes, graph_optimization_level="disable")
    inputs: list[TensorSpec] = [_spec(i) for i in session.get_inputs()]
    outputs: list[TensorSpec] = [_spec(o) for o in session.get_outputs()]
    return {
        "inputs": [s.as_oip() for s in inputs],
        "outputs": [s.as_oip() for s in outputs],
    }


def quantize_int8(model_bytes: bytes) -> bytes:
    """onnxruntime dynamic INT8 quantisation (weights INT8, activations quantised at run time).

    The quantiser wants file paths: it works in a private (0700) temp dir that is
    removed afterwards, whatever happens.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    workdir = Path(tempfile.mkdtemp(prefix="gateway-quant-"))
    try:
        src, dst = workdir / "in.onnx", workdir / "out.onnx"
        write_private(src, model_bytes)
        # Every supported op, embeddings (Gather) included: the demo model shrinks ~3.8x
        # and its holdout AUC does not drop (the gate checks that for each model).
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return dst.read_bytes()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _scores(model_bytes: bytes, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    from models.ort import session_from_bytes

    session = session_from_bytes(model_bytes)
    output = session.get_outputs()[0].name
    (scores,) = session.run([output], dict(inputs))
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def gate_quantization(fp32: bytes, int8: bytes, holdout: Holdout, gate: QuantGate) -> QuantReport:
    """Compare the two models on the holdout; PackError (naming both figures) if over the gate."""
    from models.demo.evaluate import auc

    inputs, labels = holdout
    before, after = _scores(fp32, inputs), _scores(int8, inputs)
    report = QuantReport(
        max_score_diff=float(np.max(np.abs(before - after))) if before.size else 0.0,
        auc_fp32=auc(labels, before),
        auc_int8=auc(labels, after),
        rows=int(before.size),
    )
    if report.max_score_diff > gate.max_score_diff or report.auc_drop > gate.max_auc_drop:
        raise PackError(
            f"INT8 quantisation outside the gate: max score difference "
            f"{report.max_score_diff:.6f} (gate {gate.max_score_diff}), AUC drop "
            f"{report.auc_drop:.6f} ({report.auc_fp32:.6f} -> {report.auc_int8:.6f}; "
            f"gate {gate.max_auc_drop})"
        )
    return report


def load_holdout(path: Path) -> Holdout:
    """An .npz holding the model's inputs by name plus a `label` array."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise PackError(f"cannot read holdout {path}: {exc}") from None
    labels = arrays.pop("label", None)
    if labels is None:
        raise PackError(f"holdout {path} has no `label` array")
    return arrays, labels


def pack_model(
    model_bytes: bytes,
    *,
    name: str,
    version: str,
    root: Path,
    keyring: KeyProvider,
    signing_key: Path,
    feature_stats: FeatureStats | None = None,
    training: Mapping[str, Any] | None = None,
    quantize: str | None = None,
    holdout: Holdout | None = None,
    gate: QuantGate = QuantGate(),
    quantizer: Quantizer = quantize_int8,
    clock: Callable[[], float] = time.time,
) -> PackResult:
    """Write `root/<name>/<version>/` (never overwriting one). Raises PackError."""
    for label, value in (("name", name), ("version", version)):
        if not NAME_PATTERN.match(value):
            raise PackError(f"{label} {value!r} must match {NAME_PATTERN.pattern}")
    final = root / name / version
    if final.exists():
        raise PackError(f"{final} exists; a package version is never overwritten")
    if not signing_key.is_file():
        raise PackError(f"model-signing key not found: {signing_key}")
    check_onnx(model_bytes)
    source_sha = hashlib.sha256(model_bytes).hexdigest()
    quant: QuantReport | None = None
    if quantize not in (None, "none"):
        if quantize != "int8":
            raise PackError(f"unknown quantisation {quantize!r} (int8 is supported)")
        if holdout is None:
            raise PackError("--quantize int8 needs a holdout (--holdout FILE.npz)")
        quantized = quantizer(model_bytes)
        check_onnx(quantized)
        quant = gate_quantization(model_bytes, quantized, holdout, gate)
        model_bytes = quantized
    signature = io_signature(model_bytes)
    # Statistics describe the model's inputs only (a feature store may hold more arrays).
    input_names = {str(spec["name"]) for spec in signature["inputs"]}
    stats = {k: v for k, v in (feature_stats or {}).items() if k in input_names}

    dek = AESGCM.generate_key(bit_length=256)
    dek_id = secrets.token_hex(8)
    nonce = secrets.token_bytes(12)
    try:
        kek_id = keyring.current_key_id()
    except KeyringError as exc:
        raise PackError(f"keyring: {exc}") from None
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": _now_iso(clock),
        "model": {
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
            "size": len(model_bytes),
            "source_sha256": source_sha,
        },
        "signature": signature,
        "feature_stats": stats,
        "quantization": (
            None
            if quant is None
            else {
                "mode": "int8-dynamic",
                "gate": {"max_score_diff": gate.max_score_diff, "max_auc_drop": gate.max_auc_drop},
                **quant.as_json(),
            }
        ),
        # onnxruntime optimises the graph in memory at load; nothing optimised is stored.
        "graph_optimization": "at-load-in-memory",
        "encryption": {
            "algorithm": "AES-256-GCM",
            "nonce": nonce.hex(),
            "dek_id": dek_id,
            "kek_id_at_pack": kek_id,
            "aad": "gateway-model-v1|name|version|sha256(manifest without ciphertext)",
        },
        "training": dict(training or {}),
    }
    ciphertext = AESGCM(dek).encrypt(
        nonce, model_bytes, payload_aad(name, version, core_digest(manifest))
    )
    manifest["ciphertext"] = {
        "sha256": hashlib.sha256(ciphertext).hexdigest(),
        "size": len(ciphertext),
    }
    wrapped = keyring.wrap(dek, dek_aad(name, version, dek_id))

    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.packing-", dir=final.parent))
    try:
        import json

        write_private(staging / CIPHERTEXT, ciphertext)
        write_private(
            staging / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        )
        write_private(
            staging / WRAPPED_DEK, (json.dumps(wrapped.to_json(), indent=2) + "\n").encode()
        )
        sign_package(staging, signing_key)
        os.chmod(staging, 0o700)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PackResult(final, manifest, quant)
