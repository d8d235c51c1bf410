"""Stage 2 without a policy bundle (dev mode only): each action needs its one scope."""

from __future__ import annotations

from gateway.errors import InsufficientScope, InternalError
from gateway.pipeline import ACTION_SCOPES, RequestContext


class ScopeAuthorizeStage:
    name = "authorize"

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        if ctx.principal is None:
            raise InternalError(log_cause="authorize ran before authenticate")
        required = ACTION_SCOPES.get(ctx.action)
        if required is None:
            # Default deny: an action nobody mapped is an action nobody may take.
            raise InternalError(log_cause=f"no scope mapped for action {ctx.action!r}")
        if required not in ctx.principal.scopes:
            raise InsufficientScope(required)
        return ctx.evolve(authorization=(f"scope:{required}",))
