"""Stage 2: authorize with the policy bundle's Cedar policies.

For the actions that reveal audit records, a permitted request also gets its
`AuditReach` (policies.vocabulary) as its payload: the routes show a record only if
it is within reach. Reaching every tenant's records is a second Cedar question (the
`AuditLog` with `all_tenants = true`), asked of the same bundle; a bundle whose schema
does not know the attribute answers it with an error, which counts as no.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol

from gateway.errors import Forbidden, InsufficientScope, InternalError
from gateway.pipeline import ACTION_SCOPES, RequestContext
from policies.cedar_engine import AuthzRequest, Decision
from policies.vocabulary import (
    ALL_TENANTS,
    AUDIT_RECORD_ACTIONS,
    RESOURCE_IDS,
    RESOURCE_OF,
    AuditReach,
)

if TYPE_CHECKING:
    from policies.bundle import PolicyBundle


class Decider(Protocol):
    """Decides with the bundle in force (policies.manager.PolicyManager)."""

    def decide(
        self, request: AuthzRequest, model: tuple[str, str] | None = None
    ) -> tuple[Decision, PolicyBundle]: ...


class PolicyAuthorizeStage:
    name = "authorize"

    def __init__(self, decider: Decider, *, model_name: str, model_version: str) -> None:
        self._decider = decider
        self._model = (model_name, model_version)

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        principal = ctx.principal
        if principal is None:
            raise InternalError(log_cause="authorize ran before authenticate")
        resource_type = RESOURCE_OF.get(ctx.action)
        if resource_type is None:
            raise InternalError(log_cause=f"no resource mapped for action {ctx.action!r}")
        model = self._model if resource_type == "Model" else None
        request = AuthzRequest(
            client_id=principal.client_id,
            scopes=principal.scopes,
            tenant=principal.tenant,
            action=ctx.action,
            resource_type=resource_type,
            resource_id=self._model[0] if model else RESOURCE_IDS[resource_type],
        )
        decision, bundle = self._decider.decide(request, model)
        if decision.allowed:
            allowed = ctx.evolve(
                authorization=decision.policy_ids, policy_bundle=bundle.content_hash
            )
            if ctx.action in AUDIT_RECORD_ACTIONS:
                return allowed.evolve(payload=self._audit_reach(request, bundle))
            return allowed
        required = ACTION_SCOPES.get(ctx.action)
        # RFC 6750: a missing scope is insufficient_scope, so clients know what to ask for.
        error = (
            InsufficientScope(required)
            if required is not None and required not in principal.scopes
            else Forbidden("the policy does not permit this request")
        )
        error.log_cause = (
            f"policy {bundle.content_hash} denied {ctx.action}: "
            f"{', '.join(decision.policy_ids) or 'no permit'} {'; '.join(decision.errors)}"
        )
        error.decided_by = decision.policy_ids
        error.policy_bundle = bundle.content_hash
        raise error

    def _audit_reach(self, request: AuthzRequest, bundle: PolicyBundle) -> AuditReach:
        """The caller's own tenant's records, or every tenant's if the bundle says so."""
        every = dataclasses.replace(request, resource_attrs={ALL_TENANTS: True})
        decision, answered_by = self._decider.decide(every)
        # One request, one bundle: if a swap slipped in between, keep the narrower reach.
        all_tenants = decision.allowed and answered_by is bundle
        return AuditReach(request.tenant, all_tenants=all_tenants)
