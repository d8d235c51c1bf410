"""Stage 2 (spine version): authorize by OAuth scope. Cedar policies replace it in a later issue."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import InsufficientScope, InternalError
from gateway.pipeline import RequestContext

# The scope each action needs; later issues add audit:read, audit:export, consent:write, ...
ACTION_SCOPES: Mapping[str, str] = {
    "rank": "rank",
    "infer": "infer",
    "model.read": "infer",
    "admin": "admin",
    "audit.read": "audit:read",
    "audit.export": "audit:export",
    "consent.write": "consent:write",
    "consent.read": "consent:read",
    "subject.read": "subject:read",
    "subject.erase": "subject:erase",
}


class ScopeAuthorizeStage:
    name = "authorize"

    def __init__(self, action_scopes: Mapping[str, str] = ACTION_SCOPES) -> None:
        self._required = dict(action_scopes)

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        if ctx.principal is None:
            raise InternalError(log_cause="authorize ran before authenticate")
        required = self._required.get(ctx.action)
        if required is None:
            # Default deny: an action nobody mapped is an action nobody may take.
            raise InternalError(log_cause=f"no scope mapped for action {ctx.action!r}")
        if required not in ctx.principal.scopes:
            raise InsufficientScope(required)
        return ctx.evolve(authorization=(f"scope:{required}",))
