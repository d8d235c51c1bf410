"""Feature provenance: where each model input comes from, and the server's share of it.

The policy bundle declares each input of a model (`ModelPolicy.inputs`):
- `id`: the client sends string ids as OIP BYTES tensors, `user_id` (one) and `item_id`
  (the candidates); the gateway maps them to feature-store rows, as `/v1/rank` does;
- `server`: read from the feature store by those ids; a client may not send it;
- `client`: a real-time feature the client sends, checked against the model's signature
  and inspected by stage 5.
Raw tensors (every input as the model takes it) are for callers the bundle lets do
`infer.raw` (scope `infer:raw`, which no default client holds). A model whose inputs
are not declared is raw-only: nothing is filled server-side, so without `infer:raw` its
OIP infer is refused rather than run on tensors the client chose.

What a client cannot send, an attacker cannot perturb: with the default declaration an
OIP caller chooses only which ids to ask about, exactly as on `/v1/rank`.

The decode step (gateway.decode) checks what the client sent against the plan; after
stage 3 (`ServerFeatures`, which wraps the consent stage) the server fills the rest from
the store, with the user's profile only where stage 3 found a basis for it
(models.stages.profile_user), so stages 4-6 see the model's full inputs and know which
of them the client chose (`InferQuery.client_inputs`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from gateway.errors import InternalError, MalformedRequest
from gateway.pipeline import InferQuery, RequestContext, Stage
from models.features import FeatureStore
from models.ranker import TensorSpec
from models.stages import profile_user
from policies import ModelPolicy, PolicyReader

log = logging.getLogger("gateway.models")

USER_ID = "user_id"
ITEM_ID = "item_id"
# The feature-store inputs (FeatureStore.inputs_for) and the store table each reads.
_STORE_WIDTH = {"user_features": "n_user_features", "item_features": "n_item_features"}
RAW_SCOPE = "infer:raw"


class ServerProvidedInput(MalformedRequest):
    """The client sent an input the server provides (or the model is raw-only), without
    the bundle's leave to send raw tensors. Names only the model's own input names."""

    slug = "server-provided-input"
    title = "Input provided by the server"

    def __init__(self, names: Sequence[str], *, declared: bool = True) -> None:
        listed = sorted(names)
        if declared:
            detail = (
                f"input(s) {listed} are provided by the server from its feature store: send "
                f"the ids ({USER_ID}, {ITEM_ID}) as BYTES and the declared client inputs; raw "
                f"tensors need the {RAW_SCOPE} scope"
            )
        else:
            detail = (
                f"this model's inputs are not declared in the policy: it takes raw tensors "
                f"only, which need the {RAW_SCOPE} scope"
            )
        super().__init__(detail, extensions={"server_provided": listed})


class DeclarationMismatchError(ValueError):
    """The bundle's input declaration does not fit the served model (or its store)."""


@dataclass(frozen=True, slots=True)
class InputPlan:
    """One model's inputs by provenance, checked against its signature and the store."""

    model_inputs: tuple[TensorSpec, ...]
    declared: bool  # False: no declaration, raw tensors only
    ids: tuple[str, ...] = ()
    server: frozenset[str] = frozenset()
    client: tuple[TensorSpec, ...] = ()

    @property
    def client_inputs(self) -> frozenset[str]:
        """The feeds whose values the client chooses on the provenance path."""
        return frozenset(self.ids) | {spec.name for spec in self.client}

    def needs_raw(self, sent: set[str]) -> frozenset[str]:
        """The inputs in `sent` that only a raw caller may send (all of them undeclared)."""
        if not self.declared:
            return frozenset(sent)
        return self.server & sent

    def advertised(self) -> tuple[TensorSpec, ...]:
        """What a client sends, in signature order: ids as BYTES (one user, n items) and the
        declared client features; server inputs are not the client's business."""
        if not self.declared:
            return self.model_inputs
        shown: list[TensorSpec] = []
        for spec in self.model_inputs:
            if spec.name in self.ids:
                rows = (1,) if spec.name == USER_ID else (-1,)
                shown.append(TensorSpec(spec.name, "BYTES", rows))
            elif spec.name not in self.server:
                shown.append(spec)
        return tuple(shown)


def plan_for(
    inputs: Sequence[TensorSpec],
    declaration: Mapping[str, str] | None,
    features: FeatureStore | None = None,
) -> InputPlan:
    """The plan for a model's signature; `DeclarationMismatchError` names what does not fit.

    The data policy already checked what it can alone (kinds, store names, the ids each
    server input is read by); here the names must be the model's, every input declared,
    and the ids and store features of the types and widths the store gives."""
    specs = tuple(inputs)
    if declaration is None:
        return InputPlan(model_inputs=specs, declared=False)
    names = {spec.name for spec in specs}
    extra = sorted(set(declaration) - names)
    undeclared = sorted(names - set(declaration))
    if extra or undeclared:
        raise DeclarationMismatchError(
            f"declared inputs {extra} are not the model's; model inputs {undeclared} are "
            "not declared"
        )
    for spec in specs:
        source = declaration[spec.name]
        if source == "id" and (spec.datatype != "INT64" or len(spec.shape) != 1):
            raise DeclarationMismatchError(f"id input {spec.name!r} must be INT64 [-1]")
        if source == "server":
            width: int | None = None
            if features is not None:
                width = getattr(features, _STORE_WIDTH[spec.name])
            fits = spec.datatype == "FP32" and len(spec.shape) == 2
            if not fits or (width is not None and spec.shape[1] not in (-1, width)):
                raise DeclarationMismatchError(
                    f"server input {spec.name!r} must be FP32 [-1, {width or -1}] to be read "
                    "from the feature store"
                )
    return InputPlan(
        model_inputs=specs,
        declared=True,
        ids=tuple(s.name for s in specs if declaration[s.name] == "id"),
        server=frozenset(s.name for s in specs if declaration[s.name] == "server"),
        client=tuple(s for s in specs if declaration[s.name] == "client"),
    )


def advertised_inputs(inputs: Sequence[TensorSpec], model: ModelPolicy | None) -> list[TensorSpec]:
    """Model metadata's inputs (REST, gRPC, Triton's config): what a client sends under
    the bundle in force. A declaration that does not fit the model serves no request
    (Provenance refuses them); metadata then shows the model's own signature."""
    try:
        return list(plan_for(inputs, model.inputs if model is not None else None).advertised())
    except DeclarationMismatchError:
        return list(inputs)


class Provenance:
    """The plan under the bundle in force (cached per bundle) and the server's fill."""

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        features: FeatureStore,
        policy: PolicyReader,
        *,
        model_name: str,
        features_tenant: str | None = None,
    ) -> None:
        self._inputs = tuple(inputs)
        self._features = features
        self._policy = policy
        self._model = model_name
        self._features_tenant = features_tenant
        self._plans: dict[str, InputPlan | DeclarationMismatchError] = {}

    def plan(self) -> InputPlan:
        """The plan of the bundle in force; a declaration that does not fit the model
        refuses every infer request (500, the log says why) instead of guessing."""
        in_force = self._policy.in_force()
        plan = self._plans.get(in_force.content_hash)
        if plan is None:
            model = in_force.data.model(self._model)
            try:
                plan = plan_for(self._inputs, model.inputs if model else None, self._features)
            except DeclarationMismatchError as exc:
                log.error("policy %s: inputs of %s: %s", in_force.content_hash, self._model, exc)
                plan = exc
            if len(self._plans) > 8:  # earlier bundles'
                self._plans.clear()
            self._plans[in_force.content_hash] = plan
        if isinstance(plan, DeclarationMismatchError):
            raise InternalError(log_cause=f"input declaration does not fit the model: {plan}")
        return plan

    def fill(self, ctx: RequestContext, query: InferQuery) -> InferQuery:
        """The model inputs the client did not send, from the store by the query's ids.

        Unknown items are refused as `/v1/rank` refuses them (UnknownItems); the user's
        row is read only where stage 3 allows it, else the cold-start row."""
        if query.item_ids is None:
            return query
        user = profile_user(ctx, query.user_id or "", self._features_tenant)
        stored = self._features.inputs_for(user, query.item_ids)
        feeds = dict(query.feeds)
        for spec in self._inputs:
            if spec.name in feeds:
                continue
            value = stored.get(spec.name)
            if value is None:
                raise InternalError(log_cause=f"input {spec.name!r} is neither sent nor stored")
            feeds[spec.name] = value
        return replace(query, feeds=feeds)


class ServerFeatures:
    """Stage 3 for OIP infer, then the server's inputs of the provenance path.

    Consent decides first whether the user's profile may be read (the privacy package's
    consent stage, wrapped unchanged); the fill follows at once, so stage 4 (redact),
    5 (inspect) and 6 (rank) see the model's full inputs."""

    name = "consent"

    def __init__(self, consent: Stage, provenance: Provenance) -> None:
        self._consent = consent
        self._provenance = provenance

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        ctx = await self._consent(ctx)
        query = ctx.payload
        if isinstance(query, InferQuery) and query.item_ids is not None:
            ctx = ctx.evolve(payload=self._provenance.fill(ctx, query))
        return ctx
