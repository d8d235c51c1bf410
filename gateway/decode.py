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

from gateway.errors import InsufficientScope, InvalidRequest, MalformedRequest
from gateway.oip_rest import decode_rest
from gateway.oip_wire import WireInferRequest, WireTensor
from gateway.pipeline import Action, InferQuery, ModelRef, RankQuery, RequestContext, Stage
from gateway.schemas import RankRequest, parse_json, require_json
from models.provenance import ITEM_ID, USER_ID, InputPlan, Provenance, ServerProvidedInput
from models.ranker import NUMPY_DTYPES, TensorSpec

# The JSON body helpers live with the schemas; routes keep importing them from here.
__all__ = [
    "InferDecodeStage",
    "RankDecodeStage",
    "decode_ids",
    "decode_tensor",
    "parse_json",
    "require_json",
]


# An id as /v1/rank takes it (gateway.schemas.Identifier).
_MAX_ID_CHARS = 128


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


def decode_ids(name: str, item: WireTensor, most: int) -> tuple[str, ...]:
    """An id input of the provenance path: a 1-D BYTES tensor of 1..`most` UTF-8 strings
    (JSON strings, or the bytes the binary extension and gRPC carry), each 1-128
    characters as `/v1/rank` takes them."""
    if item.datatype != "BYTES":
        raise InvalidRequest(f"input {name}: datatype must be BYTES (string ids)")
    shape = tuple(item.shape)
    if len(shape) != 1 or not 1 <= shape[0] <= most:
        raise InvalidRequest(f"input {name}: shape must be [n] with 1 <= n <= {most}")
    data = item.data
    values = data.reshape(-1).tolist() if isinstance(data, np.ndarray) else data
    if not isinstance(values, list):
        raise InvalidRequest(f"input {name}: data must be a list")
    values = _flatten(values)
    if len(values) != shape[0]:
        raise InvalidRequest(
            f"input {name}: data has {len(values)} elements, shape needs {shape[0]}"
        )
    ids: list[str] = []
    for value in values:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"input {name}: ids must be UTF-8 text") from None
        if not isinstance(value, str):
            raise InvalidRequest(f"input {name}: BYTES data must be strings")
        if not 1 <= len(value) <= _MAX_ID_CHARS:
            raise InvalidRequest(f"input {name}: each id is 1 to {_MAX_ID_CHARS} characters")
        ids.append(value)
    return tuple(ids)


class InferDecodeStage:
    """Checks an OIP infer request against the model's signature, whatever wire it came on:
    `ctx.wire` when another surface decoded it (gRPC), else the REST body (`oip_rest`).
    The request it checked stays in `ctx.wire` for the respond stage (binary outputs).

    Feature provenance (models.provenance): under the bundle's input declaration the
    client sends ids (BYTES) and its declared features, and the query names them as the
    client's (`client_inputs`); the server fills the rest after stage 3. A request that
    sends a server-provided input (or any input of an undeclared model) is raw: it needs
    the bundle's `infer.raw` permission (`raw_check`, stage 2 asked about that action),
    else it is refused naming those inputs. `provenance` None: no declaration is read
    and every request is raw (the signature check alone; wire tests)."""

    name = "decode"

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        max_rows: int,
        model: ModelRef | None = None,
        provenance: Provenance | None,
        raw_check: Stage | None = None,
    ) -> None:
        self._inputs = {spec.name: spec for spec in inputs}
        self._outputs = {spec.name for spec in outputs}
        self._max_rows = max_rows
        self._model = model
        self._provenance = provenance
        self._raw_check = raw_check

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        wire = ctx.wire
        if not isinstance(wire, WireInferRequest):
            wire = decode_rest(ctx.headers, ctx.body)
        self._check_model(wire)
        names = [item.name for item in wire.inputs]
        if len(set(names)) != len(names):
            raise InvalidRequest("inputs: each input may appear once")
        wanted = self._wanted(wire)
        if self._provenance is None:
            return ctx.evolve(payload=self._raw(wire, names, wanted), wire=wire)
        plan = self._provenance.plan()
        server_sent = plan.server & set(names)
        if not plan.declared or server_sent:
            ctx = await self._allow_raw(ctx, server_sent, declared=plan.declared)
            return ctx.evolve(payload=self._raw(wire, names, wanted), wire=wire)
        return ctx.evolve(payload=self._declared(wire, names, wanted, plan), wire=wire)

    async def _allow_raw(
        self, ctx: RequestContext, server_sent: frozenset[str], *, declared: bool
    ) -> RequestContext:
        """Raw tensors only with the bundle's leave (`infer.raw`); its policy ids join the
        request's, so the audit record says what let the caller choose every feature."""
        refused = ServerProvidedInput(sorted(server_sent), declared=declared)
        refused.log_cause = "raw tensors without infer.raw"
        if self._raw_check is None:
            raise refused
        try:
            allowed = await self._raw_check(ctx.evolve(action=Action.INFER_RAW))
        except InsufficientScope:
            raise refused from None
        decided = (*(ctx.authorization or ()), *(allowed.authorization or ()))
        return ctx.evolve(authorization=decided)

    def _raw(
        self, wire: WireInferRequest, names: list[str], wanted: tuple[str, ...] | None
    ) -> InferQuery:
        missing = sorted(set(self._inputs) - set(names))
        unknown = set(names) - set(self._inputs)
        if missing or unknown:
            # The model's names may be shown; the client's unknown ones are only counted.
            raise InvalidRequest(f"inputs: missing {missing}, {len(unknown)} unexpected")
        feeds = {
            item.name: decode_tensor(self._inputs[item.name], item, self._max_rows)
            for item in wire.inputs
        }
        self._same_rows([array.shape[0] for array in feeds.values() if array.ndim])
        return InferQuery(id=wire.id, feeds=feeds, outputs=wanted)

    def _declared(
        self,
        wire: WireInferRequest,
        names: list[str],
        wanted: tuple[str, ...] | None,
        plan: InputPlan,
    ) -> InferQuery:
        expected = plan.client_inputs
        missing = sorted(expected - set(names))
        unknown = set(names) - set(self._inputs)
        if missing or unknown:
            raise InvalidRequest(f"inputs: missing {missing}, {len(unknown)} unexpected")
        sent = {item.name: item for item in wire.inputs}
        user_id: str | None = None
        item_ids: tuple[str, ...] | None = None
        if USER_ID in plan.ids:
            (user_id,) = decode_ids(USER_ID, sent[USER_ID], 1)
        if ITEM_ID in plan.ids:
            item_ids = decode_ids(ITEM_ID, sent[ITEM_ID], self._max_rows)
            if len(set(item_ids)) != len(item_ids):
                raise InvalidRequest(f"input {ITEM_ID}: candidates must be unique")
        feeds = {
            spec.name: decode_tensor(spec, sent[spec.name], self._max_rows) for spec in plan.client
        }
        rows = [array.shape[0] for array in feeds.values() if array.ndim]
        self._same_rows(rows if item_ids is None else [len(item_ids), *rows])
        return InferQuery(
            id=wire.id,
            feeds=feeds,
            outputs=wanted,
            client_inputs=expected,
            user_id=user_id,
            item_ids=item_ids,
        )

    @staticmethod
    def _same_rows(rows: list[int]) -> None:
        if len(set(rows)) > 1:
            raise InvalidRequest("inputs: all inputs must have the same batch size")

    def _wanted(self, wire: WireInferRequest) -> tuple[str, ...] | None:
        if wire.outputs is None:
            return None
        wanted = tuple(o.name for o in wire.outputs)
        if len(set(wanted)) != len(wanted):
            raise InvalidRequest("outputs: each output may be requested once")
        bad = set(wanted) - self._outputs
        if bad:
            raise InvalidRequest(
                f"outputs: {len(bad)} unknown, the model has {sorted(self._outputs)}"
            )
        return wanted

    def _check_model(self, wire: WireInferRequest) -> None:
        if self._model is None:
            return
        if wire.model_name is not None and wire.model_name != self._model.name:
            raise MalformedRequest("model_name in the request does not match the addressed model")
        if wire.model_version not in (None, "", self._model.version):
            raise MalformedRequest(
                "model_version in the request does not match the addressed version"
            )
