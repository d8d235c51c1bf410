"""The decode step: body bytes → a typed query, after the caller is authenticated.

Error messages name the field and the rule, never the submitted value (it may
be personal data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequest, MalformedRequest, UnsupportedMediaType
from gateway.pipeline import InferQuery, RankQuery, RequestContext
from gateway.schemas import InferRequest, RankRequest
from models.ranker import NUMPY_DTYPES, TensorSpec

M = TypeVar("M", bound=BaseModel)


def require_json(headers: Mapping[str, str]) -> None:
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")


def parse_json(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise MalformedRequest("the body is not valid JSON") from None
        shown = [
            {"loc": ".".join(str(p) for p in e["loc"]) or "body", "msg": e["msg"]}
            for e in errors[:20]
        ]
        first = shown[0]
        raise InvalidRequest(
            f"{first['loc']}: {first['msg']}", extensions={"errors": shown}
        ) from None


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


def decode_tensor(spec: TensorSpec, item: Any, max_rows: int) -> NDArray[Any]:
    """One OIP tensor (JSON) → numpy, checked against the model's signature."""
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
    values = _flatten(item.data)
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
        array: NDArray[Any] = np.asarray(values, dtype=dtype).reshape(shape)
    except OverflowError:
        raise InvalidRequest(f"input {spec.name}: value out of range for {spec.datatype}") from None
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidRequest(f"input {spec.name}: values must be finite")
    return array


class InferDecodeStage:
    name = "decode"

    def __init__(
        self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, max_rows: int
    ) -> None:
        self._inputs = {spec.name: spec for spec in inputs}
        self._outputs = {spec.name for spec in outputs}
        self._max_rows = max_rows

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        require_json(ctx.headers)
        request = parse_json(InferRequest, ctx.body)
        names = [item.name for item in request.inputs]
        if len(set(names)) != len(names):
            raise InvalidRequest("inputs: each input may appear once")
        missing = sorted(set(self._inputs) - set(names))
        unknown = sorted(set(names) - set(self._inputs))
        if missing or unknown:
            raise InvalidRequest(f"inputs: missing {missing}, unexpected {unknown}")
        feeds = {
            item.name: decode_tensor(self._inputs[item.name], item, self._max_rows)
            for item in request.inputs
        }
        rows = {array.shape[0] for array in feeds.values() if array.ndim}
        if len(rows) > 1:
            raise InvalidRequest("inputs: all inputs must have the same batch size")
        wanted: tuple[str, ...] | None = None
        if request.outputs is not None:
            wanted = tuple(o.name for o in request.outputs)
            bad = sorted(set(wanted) - self._outputs)
            if bad:
                raise InvalidRequest(f"outputs: unknown output {bad}")
        return ctx.evolve(payload=InferQuery(id=request.id, feeds=feeds, outputs=wanted))
