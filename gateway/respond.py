"""Stage 7: respond. Shapes the model's result into the API's response body.

Output hardening (rank-only, rounded scores, top-k only) comes from the policy
bundle's output policy of the model, on /v1/rank and on OIP infer alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import InternalError
from gateway.oip_wire import WireInferRequest
from gateway.pipeline import (
    InferQuery,
    InferResult,
    ModelRef,
    RankQuery,
    RankResult,
    RequestContext,
)
from models.ranker import TensorSpec
from policies import PolicyReader

# float32 carries ~7 significant digits; more would only print noise.
SCORE_DECIMALS = 6

# Stage 5's keyed score perturbation (security.inspection.perturb), applied to OIP's served
# scores before output hardening where the client chose feature values; it keeps the
# order of a request's scores. /v1/rank answers ids alone: nothing to perturb.
Perturb = Callable[[RankQuery | InferQuery, Any], Any]


def _unperturbed(_query: RankQuery | InferQuery, scores: Any) -> Any:
    return scores


@dataclass(frozen=True, slots=True)
class OutputShape:
    """Output hardening from the policy bundle: less score detail, less to extract."""

    mode: str = "scores"  # scores | rounded | rank_only | top_k
    decimals: int = SCORE_DECIMALS
    max_k: int | None = None


def output_shape(policy: PolicyReader, model: str) -> OutputShape:
    """The model's output policy in the bundle in force (full scores if it names none)."""
    found = policy.in_force().data.model(model)
    if found is None:
        return OutputShape()
    out = found.output
    return OutputShape(mode=out.mode, decimals=out.decimals, max_k=out.max_k)


def model_object(model: ModelRef) -> dict[str, str]:
    """The response's `model`: name, version, and where known the package digest and A/B arm."""
    out = {"name": model.name, "version": model.version}
    if model.package_digest is not None:
        out["package_digest"] = f"sha256:{model.package_digest}"
    if model.variant is not None:
        out["variant"] = model.variant
    return out


class RankRespondStage:
    name = "respond"

    def __init__(self, policy: PolicyReader) -> None:
        self._policy = policy

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        query, result = ctx.payload, ctx.result
        if not isinstance(query, RankQuery) or not isinstance(result, RankResult) or not ctx.model:
            raise InternalError(log_cause="respond stage without a rank result")
        shape = output_shape(self._policy, ctx.model.name)
        scores = np.asarray(result.scores, dtype=np.float64)
        top_k = query.top_k if shape.max_k is None else min(query.top_k, shape.max_k)
        # Stable sort on the negated score: ties keep the client's candidate order.
        order = np.argsort(-scores, kind="stable")[:top_k]
        ids = [result.item_ids[i] for i in order.tolist()]
        ranks = range(1, len(ids) + 1)
        # One dict literal per item from zipped columns: the cheapest way to hand orjson
        # a hundred items (indexing and enumerate per item cost a quarter more).
        if shape.mode == "rank_only":
            items: list[dict[str, Any]] = [
                {"item_id": item, "rank": rank} for item, rank in zip(ids, ranks, strict=True)
            ]
        else:
            decimals = shape.decimals if shape.mode == "rounded" else SCORE_DECIMALS
            rounded = scores[order].round(decimals).tolist()
            items = [
                {"item_id": item, "rank": rank, "score": score}
                for item, rank, score in zip(ids, ranks, rounded, strict=True)
            ]
        body = {
            "request_id": ctx.request_id,
            "model": model_object(ctx.model),
            "personalized": not result.cold_start,
            "items": items,
        }
        return ctx.evolve(response=body)


def harden_tensor(array: Any, shape: OutputShape) -> Any:
    """OIP output hardening: rounded scores, or only each row's rank within the request
    (1 = highest; with top_k, rows past max_k get 0). A client sending one row per
    request then learns nothing from rank_only: extraction needs the scores."""
    values = np.asarray(array)
    if values.dtype.kind != "f" or shape.mode == "scores":
        return values
    if shape.mode == "rounded":
        return np.round(values, shape.decimals).astype(values.dtype)
    flat = values.reshape(-1).astype(np.float64)
    order = np.argsort(-flat, kind="stable")
    ranks = np.empty(flat.shape[0], dtype=np.float64)
    ranks[order] = np.arange(1, flat.shape[0] + 1)
    if shape.mode == "top_k" and shape.max_k is not None:
        ranks[ranks > shape.max_k] = 0
    return ranks.reshape(values.shape).astype(values.dtype)


def _binary_outputs(wire: Any, names: Any) -> frozenset[str]:
    """The outputs the client asked to get as raw bytes (REST binary tensor extension)."""
    if not isinstance(wire, WireInferRequest):
        return frozenset()
    if wire.outputs is None:
        return frozenset(names) if wire.binary_data_output else frozenset()
    return frozenset(o.name for o in wire.outputs if o.binary_data)


class InferRespondStage:
    """The OIP infer response as a dict every wire renders: `data` is the hardened output
    as a flat numpy array (orjson writes it as JSON; REST binary and gRPC take its bytes),
    and `parameters.binary_data` marks the outputs the client asked for as raw bytes."""

    name = "respond"

    def __init__(
        self,
        outputs: tuple[TensorSpec, ...],
        policy: PolicyReader,
        perturb: Perturb = _unperturbed,
    ) -> None:
        self._datatypes = {spec.name: spec.datatype for spec in outputs}
        self._policy = policy
        self._perturb = perturb

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        query, result = ctx.payload, ctx.result
        if (
            not isinstance(query, InferQuery)
            or not isinstance(result, InferResult)
            or not ctx.model
        ):
            raise InternalError(log_cause="respond stage without an infer result")
        shape = output_shape(self._policy, ctx.model.name)
        binary = _binary_outputs(ctx.wire, result.outputs)
        outputs: list[dict[str, Any]] = []
        for name, array in result.outputs.items():
            if np.asarray(array).dtype.kind == "f":
                array = np.asarray(self._perturb(query, array), dtype=array.dtype)
            hardened = np.ascontiguousarray(harden_tensor(array, shape))
            output: dict[str, Any] = {
                "name": name,
                "datatype": self._datatypes[name],
                "shape": list(hardened.shape),
                "data": hardened.reshape(-1),
            }
            if name in binary:
                output["parameters"] = {"binary_data": True}
            outputs.append(output)
        body: dict[str, Any] = {
            "model_name": ctx.model.name,
            "model_version": ctx.model.version,
            "outputs": outputs,
        }
        if query.id is not None:
            body["id"] = query.id
        return ctx.evolve(response=body)
