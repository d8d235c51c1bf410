"""The audit log's read API: checkpoints, proofs, records (scope `audit:read`).

Reading the audit log is itself audited (each route runs a pipeline with the
audit stage). Hashes are standard base64, as in the checkpoint format.

Records are tenant-scoped: a caller reads, proves and exports only the records
within its `AuditReach` (policies.vocabulary), which stage 2 decides with the
bundle: its own tenant's (no tenant: the records of no tenant), or every tenant's
for the scope the bundle names. Another tenant's record is answered exactly as a
missing one (404, same detail), so request ids and indices leak nothing. A purged
record's tenant is gone with its payload: only a caller of every tenant sees it.
Checkpoints and consistency proofs carry no record and are readable by any reader.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from audit.export import AuditDamaged as ExportDamage
from audit.export import (
    ExportError,
    ExportFilter,
    iter_bundle,
    parse_time_ms,
    subject_pseudonym,
)
from audit.log import AuditLog, CheckpointRefused
from audit.record import RecordError, parse
from audit.sql_store import DuplicateRequestIdError
from audit.store import StoredCheckpoint, StoredLeaf, StoreError
from gateway.components import components_of
from gateway.errors import (
    AuditDamaged,
    AuditUnavailable,
    Forbidden,
    InternalError,
    InvalidRequest,
    NotFound,
)
from gateway.pipeline import Action, RequestContext, Respond
from gateway.routes._json import json_response
from policies.vocabulary import AuditReach

router = APIRouter(prefix="/v1/audit")
T = TypeVar("T")

NOTE_MEDIA_TYPE = "text/plain; charset=utf-8"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


Work = Callable[[AuditLog, RequestContext], Awaitable[Response]]


async def _audited(request: Request, action: Action, work: Work) -> Response:
    """Authorize `action`, then do the route's work as the pipeline's respond stage,
    so the audit record of this request carries the status the client really gets."""
    components = components_of(request)

    async def step(ctx: RequestContext) -> Response:
        return await work(components.audit_log(), ctx)

    ctx = await components.pipeline(action).run(
        components.context(request, action), then=Respond(step)
    )
    response: Response = ctx.response
    return response


async def _checkpoint_covering(audit_log: AuditLog, size: int) -> StoredCheckpoint:
    """The latest checkpoint, or a fresh one when a record is newer than it."""
    try:
        latest = await _off_loop(audit_log.store.latest_checkpoint)
        if latest is None or latest.size < size:
            latest = await _off_loop(audit_log.publish_checkpoint)
    except CheckpointRefused as exc:
        # The log refuses to sign a fork: an operator must look, the client cannot fix it.
        raise InternalError(log_cause=f"checkpoint refused: {exc}") from exc
    return latest


async def _off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking store call in a thread; a store failure is a 503, never a 500."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except StoreError as exc:
        raise AuditUnavailable(log_cause=f"audit store: {exc}") from exc


def _scopes(ctx: RequestContext) -> frozenset[str]:
    return ctx.principal.scopes if ctx.principal else frozenset()


def _reach(ctx: RequestContext) -> AuditReach:
    """Stage 2's decision; without one (dev mode's scope table) the caller's own records."""
    if isinstance(ctx.payload, AuditReach):
        return ctx.payload
    return AuditReach(ctx.principal.tenant if ctx.principal else None)


async def _index_of(audit_log: AuditLog, request_id: str) -> int | None:
    try:
        return await asyncio.to_thread(audit_log.store.index_of, request_id)
    except DuplicateRequestIdError as exc:
        # Never pick one of several: that is how a client shadowed the record looked for.
        raise InternalError(
            "this request id names more than one record (a log written before request "
            "ids were unique, or damage); look the records up by index",
            log_cause=f"ambiguous request id: {exc}",  # the id is the client's: not logged
        ) from exc
    except StoreError as exc:
        raise AuditUnavailable(log_cause=f"audit store: {exc}") from exc


def _within_reach(leaf: StoredLeaf, reach: AuditReach) -> bool:
    """Whether the caller may see this leaf at all (see the module docstring)."""
    if leaf.payload is None:
        return reach.all_tenants  # purged: whose it was is no longer known
    try:
        tenant = parse(leaf.payload).get("tenant")
    except RecordError:
        return reach.all_tenants  # unreadable: whose it is cannot be known either
    if tenant is not None and not isinstance(tenant, str):
        return reach.all_tenants  # not a tenant the gateway writes: nobody's own
    return reach.sees(tenant)


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidRequest(f"{name}: must be a non-negative integer")
    return int(raw)


@router.get("/checkpoint", summary="Latest signed checkpoint, C2SP signed note (audit:read)")
async def checkpoint(request: Request) -> Response:
    async def work(audit_log: AuditLog, ctx: RequestContext) -> Response:
        latest = await _checkpoint_covering(audit_log, 0)
        return Response(latest.note, media_type=NOTE_MEDIA_TYPE)

    return await _audited(request, Action.AUDIT_READ, work)


@router.post("/checkpoint", summary="Publish a checkpoint now (admin)")
async def publish(request: Request) -> Response:
    async def work(audit_log: AuditLog, ctx: RequestContext) -> Response:
        size = await _off_loop(audit_log.store.size)
        latest = await _checkpoint_covering(audit_log, size)
        return Response(latest.note, media_type=NOTE_MEDIA_TYPE)

    return await _audited(request, Action.ADMIN, work)


@router.get("/records/{request_id}", summary="A record by request id (audit:read)")
async def record(request: Request, request_id: str) -> Response:
    async def work(audit_log: AuditLog, ctx: RequestContext) -> Response:
        missing = NotFound("no audit record for this request id")
        index = await _index_of(audit_log, request_id)
        if index is None:
            raise missing
        leaf = await _off_loop(audit_log.store.leaf, index)
        if not _within_reach(leaf, _reach(ctx)):
            # Exactly the answer for an id that does not exist: ids must not leak.
            raise missing
        body: dict[str, object] = {"index": index, "leaf_hash": _b64(leaf.leaf_hash)}
        if leaf.payload is None:
            body["purged"] = True
        else:
            # Sealed personal fields open only for callers who may export personal data.
            unseal = "audit:export" in _scopes(ctx)
            body["record"] = await _off_loop(audit_log.open_record, leaf.payload, unseal=unseal)
        return json_response(body)

    return await _audited(request, Action.AUDIT_READ, work)


@router.get("/proofs/inclusion", summary="Inclusion proof for a record (audit:read)")
async def inclusion(request: Request) -> Response:
    async def work(audit_log: AuditLog, ctx: RequestContext) -> Response:
        request_id = request.query_params.get("request_id")
        index = _int_param(request, "index")
        if (request_id is None) == (index is None):
            raise InvalidRequest("give exactly one of request_id or index")
        if request_id is not None:
            missing = NotFound("no audit record for this request id")
            index = await _index_of(audit_log, request_id)
            if index is None:
                raise missing
        else:
            missing = NotFound(f"no audit record at index {index}")
        assert index is not None  # noqa: S101 - one of the two branches set it
        size = await _off_loop(audit_log.store.size)
        if index >= size:
            raise missing
        leaf = await _off_loop(audit_log.store.leaf, index)
        if not _within_reach(leaf, _reach(ctx)):
            raise missing  # another tenant's record is answered as a missing one
        cp = await _checkpoint_covering(audit_log, index + 1)
        proof = await _off_loop(audit_log.inclusion, index, cp)
        return json_response(
            {
                "index": proof.index,
                "tree_size": proof.size,
                "leaf_hash": _b64(proof.leaf_hash),
                "proof": [_b64(h) for h in proof.proof],
                "checkpoint": cp.note.decode(),
            }
        )

    return await _audited(request, Action.AUDIT_READ, work)


@router.get("/proofs/consistency", summary="Consistency proof between two sizes (audit:read)")
async def consistency(request: Request) -> Response:
    async def work(audit_log: AuditLog, ctx: RequestContext) -> Response:
        first, second = _int_param(request, "first"), _int_param(request, "second")
        if first is None or second is None:
            raise InvalidRequest("first and second are required")
        size = await _off_loop(audit_log.store.size)
        if not 0 < first <= second <= size:
            raise InvalidRequest(f"need 0 < first <= second <= {size}")
        proof = await _off_loop(audit_log.consistency, first, second)
        return json_response({"first": first, "second": second, "proof": [_b64(h) for h in proof]})

    return await _audited(request, Action.AUDIT_READ, work)


@router.get("/export", summary="Compliance bundle, streamed zip (audit:export)")
async def export(request: Request) -> Response:
    async def work(audit_log: AuditLog, ctx: RequestContext) -> Response:
        params = request.query_params
        tenant, scoped = _export_tenant(params.get("tenant"), _reach(ctx))
        try:
            pseudonym = None
            subject = params.get("subject")
            if subject is not None:
                # The subject is looked up in the tenant exported, so another tenant's
                # person of the same id is never found.
                pseudonym = await _off_loop(subject_pseudonym, audit_log, tenant, subject)
                if pseudonym is None:
                    raise NotFound("unknown or erased subject")
            flt = ExportFilter(
                _time_param(request, "from"),
                _time_param(request, "to"),
                params.get("client"),
                pseudonym,
                tenant=tenant,
                tenant_scoped=scoped,
            )
            chunks = await run_in_threadpool(iter_bundle, audit_log, flt)
        except ExportError as exc:
            raise InvalidRequest(str(exc)) from exc
        except ExportDamage as exc:
            where = f"record {exc.index}" if exc.index is not None else "the log"
            raise AuditDamaged(
                f"the audit log is damaged at {where} ({exc.kind}); nothing was exported",
                log_cause=str(exc),
            ) from exc
        except CheckpointRefused as exc:
            raise InternalError(log_cause=f"checkpoint refused: {exc}") from exc
        except StoreError as exc:
            raise AuditUnavailable(log_cause=f"export: {exc}") from exc
        return StreamingResponse(
            iterate_in_threadpool(chunks),
            media_type="application/zip",
            headers={
                "Content-Disposition": 'attachment; filename="audit-export.zip"',
                "Cache-Control": "no-store",
            },
        )

    return await _audited(request, Action.AUDIT_EXPORT, work)


def _export_tenant(asked: str | None, reach: AuditReach) -> tuple[str | None, bool]:
    """Whose records an export opens: (tenant, scoped). Not scoped: every tenant's.

    `tenant=` names one tenant: the caller's own, or any for a caller of every tenant.
    Without it, a caller of every tenant exports every tenant's records, any other
    caller its own (the records of no tenant, for a caller without one).
    """
    if asked == "":
        raise InvalidRequest("tenant: omit it for your own tenant; it cannot be empty")
    if reach.all_tenants:
        return asked, asked is not None
    if asked is not None and asked != reach.tenant:
        raise Forbidden("this client may export only its own tenant's audit records")
    return reach.tenant, True


def _time_param(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        raise InvalidRequest(f"{name} is required")
    try:
        return parse_time_ms(raw, name)
    except ExportError:
        # Its message quotes the value; an error detail never echoes what the client sent.
        raise InvalidRequest(f"{name}: epoch milliseconds or ISO 8601") from None
