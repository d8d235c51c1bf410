"""Stage 6: rank. `/v1/rank` looks features up server-side here; OIP infer runs the model
on feeds its decode step and models.provenance assembled (ids mapped to store rows, or
raw tensors from a trusted caller)."""

from __future__ import annotations

from gateway.errors import InternalError
from gateway.pipeline import InferQuery, InferResult, RankQuery, RankResult, RequestContext
from models.features import FeatureStore
from models.ranker import Ranker


def profile_user(ctx: RequestContext, user_id: str, features_tenant: str | None) -> str:
    """Whose stored profile a request may use: `user_id`, or "" for the cold-start row.

    Stage 3's verdict: without a personalisation basis the profile is never read; the
    neutral user "" (never a stored id) gets the cold-start row: popularity only. No
    verdict at all is no basis (fail closed). The store's profiles belong to one tenant:
    another tenant's user of the same id is someone else. /v1/rank and the OIP id path
    (models.provenance) both decide here."""
    personal = ctx.consent is not None and ctx.consent.may_personalize is True
    tenant = ctx.principal.tenant if ctx.principal is not None else None
    if tenant != features_tenant:
        personal = False
    return user_id if personal else ""


class RankStage:
    name = "rank"

    def __init__(
        self,
        ranker: Ranker,
        features: FeatureStore,
        *,
        features_tenant: str | None = None,
        score_output: str = "score",
    ):
        self._ranker = ranker
        self._features = features
        self._features_tenant = features_tenant
        self._score = score_output

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        query = ctx.payload
        if not isinstance(query, RankQuery):
            raise InternalError(log_cause="rank stage got no RankQuery")
        user_id = profile_user(ctx, query.user_id, self._features_tenant)
        feeds = self._features.inputs_for(user_id, query.item_ids)
        outputs = await self._ranker.run(feeds)
        result = RankResult(
            item_ids=query.item_ids,
            scores=outputs[self._score].reshape(-1),
            cold_start=not self._features.known_user(user_id),
        )
        return ctx.evolve(model=self._ranker.ref, result=result)


class InferStage:
    name = "rank"

    def __init__(self, ranker: Ranker) -> None:
        self._ranker = ranker

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        query = ctx.payload
        if not isinstance(query, InferQuery):
            raise InternalError(log_cause="infer stage got no InferQuery")
        outputs = await self._ranker.run(query.feeds)
        if query.outputs is not None:
            outputs = {name: outputs[name] for name in query.outputs}
        return ctx.evolve(model=self._ranker.ref, result=InferResult(outputs=outputs))
