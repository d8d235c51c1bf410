"""Data-subject endpoints: consent, access export, erasure; and the GPC support resource.

| route | action (scope) |
|---|---|
| `PUT /v1/subjects/{id}/consent` | consent.write (consent:write) |
| `GET /v1/subjects/{id}/consent` | consent.read (consent:read) |
| `GET /v1/subjects/{id}/export` | subject.read (subject:read) |
| `DELETE /v1/subjects/{id}` | subject.erase (subject:erase) |

Each runs the pipeline (authenticate, authorize with Cedar, audit); the work runs
as the respond stage so the audit record carries the real status. The subject
is `{id}` within the caller's tenant (see privacy.subjects). A consent write and
an erasure change state: each appends its own event record durably before the
change (privacy.subjects), besides the request's record of stage 8.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from gateway.components import components_of
from gateway.decode import parse_json, require_json
from gateway.errors import InvalidRequest
from gateway.pipeline import Action, RequestContext, SubjectQuery
from gateway.routes._json import json_response
from privacy.consent_store import ConsentEntry, ConsentStoreError
from privacy.errors import ConsentUnavailable
from privacy.subjects import SubjectService

router = APIRouter()

MAX_SUBJECT_ID = 128
# GPC spec section 3.1: the site's support resource.
GPC_SUPPORT = {"gpc": True, "lastUpdate": "2026-11-26"}

Purpose = Literal["personalization", "analytics", "sale_share"]
LawfulBasis = Literal["consent", "legitimate_interest", "contract", "legal_obligation"]
Jurisdiction = Literal["eu", "california", "default"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ConsentItem(_Strict):
    purpose: Purpose
    granted: bool
    lawful_basis: LawfulBasis = "consent"


class ConsentUpdate(_Strict):
    jurisdiction: Jurisdiction = "default"
    consents: Annotated[list[ConsentItem], Field(min_length=1, max_length=16)]


class _SubjectRespond:
    """Stage 7 of a subject route: names the subject for the audit record, then works."""

    name = "respond"

    def __init__(
        self, subject: str | None, step: Callable[[RequestContext], Awaitable[Response]]
    ) -> None:
        self._subject = subject
        self._step = step

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        ctx = ctx.evolve(payload=SubjectQuery(self._subject))
        return ctx.evolve(response=await self._step(ctx))


def _checked(subject_id: str) -> str:
    if not 1 <= len(subject_id) <= MAX_SUBJECT_ID:
        raise InvalidRequest(f"subject id: 1 to {MAX_SUBJECT_ID} characters")
    return subject_id


async def _run(
    request: Request,
    action: Action,
    subject: str | None,
    work: Callable[[RequestContext, SubjectService], Awaitable[Response]],
    body: bytes = b"",
) -> Response:
    c = components_of(request)

    async def step(ctx: RequestContext) -> Response:
        return await work(ctx, c.privacy.subjects)

    ctx = await c.pipeline(action).run(
        c.context(request, action, body), then=_SubjectRespond(subject, step)
    )
    response: Response = ctx.response
    return response


def _tenant(ctx: RequestContext) -> str | None:
    return ctx.principal.tenant if ctx.principal else None


@router.put("/v1/subjects/{subject_id}/consent", summary="Record consent (consent:write)")
async def put_consent(request: Request, subject_id: str) -> Response:
    subject = _checked(subject_id)
    c = components_of(request)

    async def work(ctx: RequestContext, service: SubjectService) -> Response:
        require_json(ctx.headers)
        update = parse_json(ConsentUpdate, ctx.body)
        purposes = [i.purpose for i in update.consents]
        if len(set(purposes)) != len(purposes):
            raise InvalidRequest("consents: each purpose may appear once")
        client = ctx.principal.client_id if ctx.principal else "unknown"
        now_ms = int(c.clock() * 1000)
        entries = [
            ConsentEntry(
                purpose=i.purpose,
                granted=i.granted,
                lawful_basis=i.lawful_basis,
                jurisdiction=update.jurisdiction,
                source=f"api:{client}",
                ts_ms=now_ms,
                policy_version=ctx.policy_bundle or "none",
            )
            for i in update.consents
        ]
        # Record before effect: the consent event is durable in the audit log before the
        # store changes (503 audit-unavailable and nothing stored otherwise).
        current = await service.record_consent(_tenant(ctx), subject, entries)
        return json_response(_consent_body(subject, current))

    return await _run(request, Action.CONSENT_WRITE, subject, work, await request.body())


@router.get("/v1/subjects/{subject_id}/consent", summary="Current consent (consent:read)")
async def get_consent(request: Request, subject_id: str) -> Response:
    subject = _checked(subject_id)

    async def work(ctx: RequestContext, service: SubjectService) -> Response:
        try:
            current = await _thread(service.consent.current, _tenant(ctx), subject)
            history = await _thread(service.consent.history, _tenant(ctx), subject)
        except ConsentStoreError as exc:
            raise ConsentUnavailable(log_cause=f"consent store: {exc}") from exc
        body = _consent_body(subject, current)
        body["history"] = [e.as_json() for e in history]
        return json_response(body)

    return await _run(request, Action.CONSENT_READ, subject, work)


@router.get("/v1/subjects/{subject_id}/export", summary="Data-subject access (subject:read)")
async def export(request: Request, subject_id: str) -> Response:
    subject = _checked(subject_id)

    async def work(ctx: RequestContext, service: SubjectService) -> Response:
        return json_response(await service.export(_tenant(ctx), subject))

    return await _run(request, Action.SUBJECT_READ, subject, work)


@router.delete("/v1/subjects/{subject_id}", summary="Erase a data subject (subject:erase)")
async def erase(request: Request, subject_id: str) -> Response:
    subject = _checked(subject_id)

    async def work(ctx: RequestContext, service: SubjectService) -> Response:
        return json_response(await service.erase(_tenant(ctx), subject))

    # The erasure request's own record names no subject: keying it would mint a new
    # subject key right after the old one was destroyed. The log's erasure event
    # carries the old pseudonym.
    return await _run(request, Action.SUBJECT_ERASE, None, work)


@router.get("/.well-known/gpc.json", summary="Global Privacy Control support resource")
async def gpc_support() -> Response:
    return json_response(GPC_SUPPORT)


def _consent_body(subject: str, current: dict[str, ConsentEntry]) -> dict[str, Any]:
    return {"subject": subject, "consent": {p: e.as_json() for p, e in current.items()}}


async def _thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)
