"""The pipeline each action runs, built from the components (at start and after a swap)."""

from __future__ import annotations

from audit.stage import AuditStage
from gateway.components import Components
from gateway.decode import InferDecodeStage, RankDecodeStage
from gateway.derivation import Purpose
from gateway.errors import ModelNotReady
from gateway.pipeline import Action, Pipeline, Principal, RequestContext, Stage
from gateway.respond import InferRespondStage, RankRespondStage
from models.features import FeatureStore
from models.provenance import Provenance, ServerFeatures
from models.stages import InferStage, RankStage
from models.variants import VariantRankStage
from security.authn import AuthenticateStage

# Actions whose only work is the route's own respond step.
_PLAIN_ACTIONS = (
    Action.MODEL_READ,
    Action.AUDIT_READ,
    Action.AUDIT_EXPORT,
    Action.ADMIN,
    Action.CONSENT_WRITE,
    Action.CONSENT_READ,
    Action.SUBJECT_READ,
    Action.SUBJECT_ERASE,
    Action.EVENTS,
)


class ModelNotLoadedStage:
    """Stage 6 stand-in while the model is not loaded: refuse, after authn and audit."""

    name = "rank"

    def __init__(self, reason: str) -> None:
        self._reason = reason

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        raise ModelNotReady("the model is not loaded", log_cause=self._reason)


def build_pipelines(c: Components) -> dict[str, Pipeline]:
    limits = c.settings.limits
    authn = AuthenticateStage(c.validator)
    # The per-client rate limit runs inside stage 2: before the body is parsed.
    authz = c.inspection.authorize(
        c.policy.authorize_stage(c.settings.model.name, c.settings.model.version)
    )
    final = [AuditStage(c.audit, c.clock, c.refusals)] if c.audit is not None else []

    # Logs name the clients the operator configured; any other id (an external IdP's, a
    # claim) is a value someone else chose, and may be personal: the audit record has it.
    issuer = c.settings.issuer
    listed = frozenset(client.client_id for client in issuer.clients) if issuer.enabled else ()

    def log_client(principal: Principal) -> str:
        return principal.client_id if principal.client_id in listed else "unlisted"

    def pipeline(*stages: Stage) -> Pipeline:
        return Pipeline(
            [authn, authz, *stages],
            final=final,
            observe=c.metrics.observe_stage,
            log_client=log_client,
            load=c.load,
        )

    pipelines: dict[str, Pipeline] = {action: pipeline() for action in _PLAIN_ACTIONS}
    ranker, features = c.serving.ranker, c.serving.features
    if ranker is None or features is None:
        missing = ModelNotLoadedStage("; ".join(str(r) for r in c.serving.not_ready()))
        pipelines[Action.RANK] = pipeline(missing)
        pipelines[Action.INFER] = pipeline(missing)
        return pipelines
    inspect = c.inspection.stage()
    pipelines[Action.RANK] = pipeline(
        RankDecodeStage(
            max_candidates=limits.max_candidates, max_context_chars=limits.max_context_chars
        ),
        *c.privacy.rank_stages(),
        inspect,
        _rank_stage(c, features),
        RankRespondStage(c.policy),
    )
    # Feature provenance: ids and declared client features from the client, the rest
    # from the store after stage 3; raw tensors only where the bundle allows `infer.raw`.
    provenance = Provenance(
        ranker.inputs,
        features,
        c.policy,
        model_name=ranker.ref.name,
        features_tenant=c.settings.model.features_tenant,
    )
    consent, redact = c.privacy.rank_stages()
    pipelines[Action.INFER] = pipeline(
        InferDecodeStage(
            ranker.inputs,
            ranker.outputs,
            max_rows=limits.max_candidates,
            model=ranker.ref,
            provenance=provenance,
            raw_check=c.policy.authorize_stage(ranker.ref.name, ranker.ref.version),
        ),
        ServerFeatures(consent, provenance),
        redact,
        inspect,
        InferStage(ranker),
        InferRespondStage(ranker.outputs, c.policy, c.inspection.perturb),
    )
    return pipelines


def _rank_stage(c: Components, features: FeatureStore) -> Stage:
    """Stage 6 of /v1/rank: the A/B arm (or the primary) of the registry, read per request."""
    name = c.settings.model.name
    tenant = c.settings.model.features_tenant
    return VariantRankStage(
        name,
        c.serving.registry(name),
        stage_for=lambda loaded: RankStage(loaded.ranker, features, features_tenant=tenant),
        policy=c.policy,
        salt=c.settings.derived_keys[Purpose.AB_ASSIGNMENT],
        metrics=c.variant_metrics,
        redirect=c.experiments.redirect,
    )
