"""Stage 8: one audit record per request, allowed or refused, durable before the response.

Refusals of callers no one authenticated go through the refusal budget
(audit.refusals) first: past a source's budget they are counted and appended as one
aggregate record per source and window, instead of one record each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from audit.appender import AppendFailed
from audit.log import AuditLog
from audit.record import request_record
from audit.refusals import RefusalBudget
from audit.store import StoreError
from audit.subjects import SubjectKeyError, SubjectKeys
from gateway.errors import AuditUnavailable, GatewayError
from gateway.pipeline import InferQuery, RankQuery, RequestContext, SubjectQuery
from gateway.telemetry import current_trace_id, span

log = logging.getLogger("gateway.audit")


async def append_durably(audit_log: AuditLog, record: dict[str, Any]) -> None:
    """Append, or refuse the request: a record that is not durable fails it (fail closed)."""
    try:
        await audit_log.append(record)
    except AppendFailed as exc:
        raise AuditUnavailable(log_cause=f"audit append: {exc}") from exc


class AuditStage:
    name = "audit"

    def __init__(
        self,
        audit_log: AuditLog,
        clock: Callable[[], float],
        refusals: RefusalBudget | None = None,
    ) -> None:
        self._log = audit_log
        self._clock = clock
        self._refusals = refusals

    async def __call__(self, ctx: RequestContext, error: GatewayError | None) -> None:
        principal = ctx.principal
        refusals = self._refusals
        if refusals is not None:
            if principal is not None:
                # Before anything can return: a timeout that stage 0 records for this
                # request must be recorded individually, its caller being known.
                refusals.caller_known(ctx.request_id)
            elif error is not None and not refusals.admit(
                ctx.request_id, action=ctx.action, status=error.status, outcome=error.slug
            ):
                return  # an anonymous refusal past its source's budget: counted
        if error is None and _being_cancelled():
            # Stage 0's time limit cancelled the pipeline: stage 0 records the refusal under
            # this request id. A record here would be a second one, claiming success.
            return
        now = self._clock()
        subject = sealed = None
        query = ctx.payload
        subject_id = _data_subject(query)
        if subject_id is not None:
            tenant = principal.tenant if principal else None
            try:
                key = await self._log.subject_key(tenant, subject_id)
            except (StoreError, SubjectKeyError) as exc:
                # Fail closed: a request whose subject cannot be recorded is refused.
                raise AuditUnavailable(log_cause=f"subject key: {exc}") from exc
            subject = key.pseudonym
            personal: dict[str, Any] = {"user_id": subject_id}
            # Only text that stage 4 redacted is kept; a request refused before (or by)
            # redaction keeps no text at all.
            if isinstance(query, RankQuery) and ctx.redaction is not None and query.context:
                personal["context"] = dict(query.context)
            sealed = SubjectKeys.seal(key, ctx.request_id, personal)
        model = ctx.model
        record = request_record(
            ts_ms=int(now * 1000),
            request_id=ctx.request_id,
            client_request_id=ctx.client_request_id,
            trace_id=current_trace_id(),
            # The audit API shows a record only to its own tenant (gateway.routes.audit).
            tenant=principal.tenant if principal else None,
            route=ctx.route,
            action=ctx.action,
            client_id=principal.client_id if principal else None,
            issuer=principal.issuer if principal else None,
            subject=subject,
            status=error.status if error else ctx.status,
            outcome=error.slug if error else "ok",
            policy_ids=list(ctx.authorization or (error.decided_by if error else ())),
            policy_bundle=ctx.policy_bundle or (error.policy_bundle if error else None),
            model=(
                {
                    "name": model.name,
                    "version": model.version,
                    "digest": model.digest,
                    "package_digest": model.package_digest,
                    "variant": model.variant,
                }
                if model
                else None
            ),
            inspection=_inspection(ctx, error),
            latency_us=max(0, int((now - ctx.received_at) * 1_000_000)),
            sealed=sealed,
            consent=_summary(ctx.consent),
            pii=_summary(ctx.redaction),
        )
        if ctx.deadline is not None:
            # From here the write decides the outcome: a deadline firing mid-write would
            # answer 503 while the record, once durable, says 200 (two records, one id).
            ctx.deadline.hand_over(self._log.write_bound_s)
        with span("audit.append"):
            await append_durably(self._log, record)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _data_subject(payload: Any) -> str | None:
    """The request's data subject: a rank query's user (or an OIP id-path query's), or a
    subject route's `data_subject`."""
    if isinstance(payload, RankQuery | InferQuery):
        return payload.user_id
    if isinstance(payload, SubjectQuery):
        return payload.data_subject
    return None


def _summary(stage_result: Any) -> dict[str, Any] | None:
    """A later stage's own audit view (`as_audit()`): counts and decisions, nothing raw."""
    if stage_result is None:
        return None
    view: dict[str, Any] = stage_result.as_audit()
    return view


def _inspection(ctx: RequestContext, error: GatewayError | None) -> dict[str, Any] | None:
    """Stage 5's verdict: from the context, or from the refusal when stage 5 refused."""
    if ctx.inspection is not None:
        found: dict[str, Any] = ctx.inspection.record()
        return found
    return error.inspection if error is not None else None


async def append_plain(
    audit_log: AuditLog,
    clock: Callable[[], float],
    *,
    request_id: str,
    route: str,
    action: str,
    client_id: str | None,
    status: int,
    outcome: str,
    client_request_id: str | None = None,
    tenant: str | None = None,
    refusals: RefusalBudget | None = None,
) -> None:
    """A record for a request that ran no pipeline (token issuance, transport refusals).

    No caller is authenticated there, so `tenant` is None unless the caller knows better:
    such records are the gateway operator's. A refusal with no `client_id` is anonymous:
    with a budget, it may be counted instead (audit.refusals). Raises AuditUnavailable
    when the record cannot be made durable (fail closed).
    """
    if (
        refusals is not None
        and client_id is None
        and status >= 400
        and not refusals.admit(request_id, action=action, status=status, outcome=outcome)
    ):
        return
    await append_durably(
        audit_log,
        request_record(
            ts_ms=int(clock() * 1000),
            request_id=request_id,
            client_request_id=client_request_id,
            trace_id=current_trace_id(),
            tenant=tenant,
            route=route,
            action=action,
            client_id=client_id,
            issuer=None,
            subject=None,
            status=status,
            outcome=outcome,
            policy_ids=[],
            model=None,
            latency_us=0,
            sealed=None,
        ),
    )


def transport_refusal_recorder(
    audit_log: AuditLog, clock: Callable[[], float], refusals: RefusalBudget | None = None
) -> Callable[[str, str | None, str, GatewayError], Awaitable[None]]:
    """Audit refusals answered by the transport layer (oversized body, timeout).

    Stage 0 does not know the caller, so with a budget these are anonymous refusals,
    unless the audit stage has told the budget that stage 1 authenticated the caller.
    """

    async def record(
        request_id: str, client_request_id: str | None, path: str, error: GatewayError
    ) -> None:
        try:
            await append_plain(
                audit_log,
                clock,
                request_id=request_id,
                client_request_id=client_request_id,
                route=path,
                action="transport",
                client_id=None,
                status=error.status,
                outcome=error.slug,
                refusals=refusals,
            )
        except AuditUnavailable as exc:
            # The client is refused either way; the failure to audit must reach operators.
            log.error("transport refusal %s not audited: %s", request_id, exc.log_cause)

    return record
