"""The decode step: body bytes → a typed query, after the caller is authenticated.

Error messages name the field and the rule, never the submitted value (it may
be personal data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.errors import InvalidRequest, MalformedRequest
from gateway.oip_rest import decode_rest
from gateway.oip_wire import WireInferRequest, WireTensor
from gateway.pipeline import InferQuery, ModelRef, RankQuery, RequestContext
from gateway.schemas import RankRequest, parse_json, require_json
from models.ranker import NUMPY_DTYPES, TensorSpec

# The JSON body helpers live with the schemas; routes keep importing them from here.
__all__ = [
    "InferDecodeStage",
    "RankDecodeStage",
    "decode_tensor",
    "parse_json",
    "require_json",
]


class RankDecodeStage:
    name = "decode"

    def __init__(self, *, max_candidates: int, max_context_chars: int) -> None:
        self._max_candidates = max_candidates
        self._max_context = max_context_chars

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        require_json(ctx.headers)
        request = parse_json(RankRequest, ctx.body)
        n = len(request.item_ids)
        if n > self._max_candidates:
            raise InvalidRequest(f"item_ids: at most {self._max_candidates} candidates, got {n}")
        if len(set(request.item_ids)) != n:
            raise InvalidRequest("item_ids: candidates must be unique")
        context: dict[str, str] = {}
        if request.context is not None:
            context = {k: v for k, v in request.context.model_dump().items() if v is not None}
            if len(context.get("query", "")) > self._max_context:
                raise InvalidRequest(f"context.query: at most {self._max_context} characters")
        top_k = n if request.top_k is None else min(request.top_k, n)
        query = RankQuery(
            user_id=request.user_id, item_ids=tuple(request.item_ids), top_k=top_k, context=context
        )
        return ctx.evolve(payload=query)


def _flatten(data: Sequence[Any]) -> list[Any]:
    if data and isinstance(data[0], list):
        flat: list[Any] = []
        for part in data:
            if not isinstance(part, list):
                raise InvalidRequest("inputs: tensor data mixes nested and flat values")
            flat.extend(_flatten(part))
        return flat
    return list(data)


def _from_json(spec: TensorSpec, dtype: np.dtype[Any], data: Any, shape: tuple[int, ...]) -> Any:
    if not isinstance(data, list):
        raise InvalidRequest(f"input {spec.name}: data must be a list")
    values = _flatten(data)
    if len(values) != math.prod(shape):
        raise InvalidRequest(
            f"input {spec.name}: data has {len(values)} elements, shape needs {math.prod(shape)}"
        )
    if dtype.kind in "iu" and not all(type(v) is int for v in values):
        raise InvalidRequest(f"input {spec.name}: {spec.datatype} data must be integers")
    if dtype.kind == "f" and not all(type(v) in (int, float) for v in values):
        raise InvalidRequest(f"input {spec.name}: {spec.datatype} data must be numbers")
    if dtype.kind == "b" and not all(type(v) is bool for v in values):
        raise InvalidRequest(f"input {spec.name}: BOOL data must be true/false")
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except OverflowError:
        raise InvalidRequest(f"input {spec.name}: value out of range for {spec.datatype}") from None


def decode_tensor(spec: TensorSpec, item: WireTensor, max_rows: int) -> NDArray[Any]:
    """One OIP tensor, from any wire, → numpy, checked against the model's signature.

    `data` is JSON's list (flat or nested) or an array the wire already decoded (binary
    REST, gRPC); either way the element count must be what the shape says."""
    if item.datatype != spec.datatype:
        raise InvalidRequest(f"input {spec.name}: datatype must be {spec.datatype}")
    dtype = NUMPY_DTYPES.get(spec.datatype)
    if dtype is None:
        raise InvalidRequest(f"input {spec.name}: datatype {spec.datatype} is not supported")
    shape = tuple(item.shape)
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise InvalidRequest(
            f"input {spec.name}: shape {list(shape)} does not fit {list(spec.shape)}"
        )
    if shape and shape[0] > max_rows:
        raise InvalidRequest(f"input {spec.name}: at most {max_rows} rows")
    array: NDArray[Any]
    if isinstance(item.data, np.ndarray):
        if item.data.dtype != dtype or item.data.size != math.prod(shape):
            raise InvalidRequest(
                f"input {spec.name}: data does not hold {math.prod(shape)} {spec.datatype} values"
            )
        array = item.data.reshape(shape)
        if not array.flags.writeable:
            # A view of the wire's buffer (np.frombuffer): later stages get their own copy.
            array = array.copy()
    else:
        array = _from_json(spec, dtype, item.data, shape)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidRequest(f"input {spec.name}: values must be finite")
    return array


class InferDecodeStage:
    """Checks an OIP infer request against the model's signature, whatever wire it came on:
    `ctx.wire` when another surface decoded it (gRPC), else the REST body (`oip_rest`).
    The request it checked stays in `ctx.wire` for the respond stage (binary outputs)."""

    name = "decode"

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        max_rows: int,
        model: ModelRef | None = None,
    ) -> None:
        self._inputs = {spec.name: spec for spec in inputs}
        self._outputs = {spec.name for spec in outputs}
        self._max_rows = max_rows
        self._model = model

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        wire = ctx.wire
        if not isinstance(wire, WireInferRequest):
            wire = decode_rest(ctx.headers, ctx.body)
        self._check_model(wire)
        names = [item.name for item in wire.inputs]
        if len(set(names)) != len(names):
            raise InvalidRequest("inputs: each input may appear once")
        missing = sorted(set(self._inputs) - set(names))
        unknown = set(names) - set(self._inputs)
        if missing or unknown:
            # The model's names may be shown; the client's unknown ones are only counted.
            raise InvalidRequest(f"inputs: missing {missing}, {len(unknown)} unexpected")
        feeds = {
            item.name: decode_tensor(self._inputs[item.name], item, self._max_rows)
            for item in wire.inputs
        }
        rows = {array.shape[0] for array in feeds.values() if array.ndim}
        if len(rows) > 1:
            raise InvalidRequest("inputs: all inputs must have the same batch size")
        wanted: tuple[str, ...] | None = None
        if wire.outputs is not None:
            wanted = tuple(o.name for o in wire.outputs)
            if len(set(wanted)) != len(wanted):
                raise InvalidRequest("outputs: each output may be requested once")
            bad = set(wanted) - self._outputs
            if bad:
                raise InvalidRequest(
                    f"outputs: {len(bad)} unknown, the model has {sorted(self._outputs)}"
                )
        query = InferQuery(id=wire.id, feeds=feeds, outputs=wanted)
        return ctx.evolve(payload=query, wire=wire)

    def _check_model(self, wire: WireInferRequest) -> None:
        if self._model is None:
            return
        if wire.model_name is not None and wire.model_name != self._model.name:
            raise MalformedRequest("model_name in the request does not match the addressed model")
        if wire.model_version not in (None, "", self._model.version):
            raise MalformedRequest(
                "model_version in the request does not match the addressed version"
            )
