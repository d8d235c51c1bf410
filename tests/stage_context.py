"""Build a request context for testing one stage on its own, without the app."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.pipeline import Action, Principal, RequestContext


def principal(
    client_id: str = "demo",
    *,
    scopes: tuple[str, ...] = ("rank", "infer"),
    tenant: str | None = None,
    subject: str | None = None,
) -> Principal:
    return Principal(
        issuer="https://issuer.test",
        client_id=client_id,
        subject=subject if subject is not None else client_id,
        scopes=frozenset(scopes),
        tenant=tenant,
    )


def stage_context(
    action: Action = Action.RANK,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    caller: Principal | None = None,
    authenticated: bool = True,
    **fields: Any,
) -> RequestContext:
    """A context as stage 1 leaves it (a caller, unless `authenticated=False`), plus `fields`
    (payload, consent, redaction, ...) as earlier stages would have set them."""
    ctx = RequestContext(
        request_id="req-test",
        action=action,
        route=f"/test/{action}",
        headers=dict(headers or {}),
        body=body,
        received_at=0.0,
        principal=(caller or principal()) if authenticated else None,
    )
    return ctx.evolve(**fields) if fields else ctx
