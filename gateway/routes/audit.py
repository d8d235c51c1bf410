"""The audit log's read API: checkpoints, proofs, records (scope `audit:read`).

Reading the audit log is itself audited (each route runs a pipeline with the
audit stage). Hashes are standard base64, as in the checkpoint format.
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

from audit.export import ExportError, ExportFilter, iter_bundle, parse_time_ms, subject_pseudonym
from audit.log import AuditLog, CheckpointRefused
from audit.store import StoredCheckpoint, StoreError
from gateway.components import components_of
from gateway.errors import AuditUnavailable, InternalError, InvalidRequest, NotFound
from gateway.pipeline import Action, RequestContext, Respond
from gateway.routes._json import json_response

router = APIRouter(prefix="/v1/audit")
T = TypeVar("T")

NOTE_MEDIA_TYPE = "text/plain; charset=utf-8"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


Work = Callable[[AuditLog, frozenset[str]], Awaitable[Response]]


async def _audited(request: Request, action: Action, work: Work) -> Response:
    """Authorize `action`, then do the route's work as the pipeline's respond stage,
    so the audit record of this request carries the status the client really gets."""
    components = components_of(request)

    async def step(ctx: RequestContext) -> Response:
        scopes = ctx.principal.scopes if ctx.principal else frozenset()
        return await work(components.audit_log(), scopes)

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


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidRequest(f"{name}: must be a non-negative integer")
    return int(raw)


@router.get("/checkpoint", summary="Latest signed checkpoint, C2SP signed note (audit:read)")
async def checkpoint(request: Request) -> Response:
    async def work(audit_log: AuditLog, scopes: frozenset[str]) -> Response:
        latest = await _checkpoint_covering(audit_log, 0)
        return Response(latest.note, media_type=NOTE_MEDIA_TYPE)

    return await _audited(request, Action.AUDIT_READ, work)


@router.post("/checkpoint", summary="Publish a checkpoint now (admin)")
async def publish(request: Request) -> Response:
    async def work(audit_log: AuditLog, scopes: frozenset[str]) -> Response:
        size = await _off_loop(audit_log.store.size)
        latest = await _checkpoint_covering(audit_log, size)
        return Response(latest.note, media_type=NOTE_MEDIA_TYPE)

    return await _audited(request, Action.ADMIN, work)


@router.get("/records/{request_id}", summary="A record by request id (audit:read)")
async def record(request: Request, request_id: str) -> Response:
    async def work(audit_log: AuditLog, scopes: frozenset[str]) -> Response:
        index = await _off_loop(audit_log.store.index_of, request_id)
        if index is None:
            raise NotFound("no audit record for this request id")
        leaf = await _off_loop(audit_log.store.leaf, index)
        body: dict[str, object] = {"index": index, "leaf_hash": _b64(leaf.leaf_hash)}
        if leaf.payload is None:
            body["purged"] = True
        else:
            # Sealed personal fields open only for callers who may export personal data.
            unseal = "audit:export" in scopes
            body["record"] = await _off_loop(audit_log.open_record, leaf.payload, unseal=unseal)
        return json_response(body)

    return await _audited(request, Action.AUDIT_READ, work)


@router.get("/proofs/inclusion", summary="Inclusion proof for a record (audit:read)")
async def inclusion(request: Request) -> Response:
    async def work(audit_log: AuditLog, scopes: frozenset[str]) -> Response:
        request_id = request.query_params.get("request_id")
        index = _int_param(request, "index")
        if (request_id is None) == (index is None):
            raise InvalidRequest("give exactly one of request_id or index")
        if request_id is not None:
            index = await _off_loop(audit_log.store.index_of, request_id)
            if index is None:
                raise NotFound("no audit record for this request id")
        assert index is not None  # noqa: S101 - one of the two branches set it
        size = await _off_loop(audit_log.store.size)
        if index >= size:
            raise NotFound(f"no audit record at index {index}")
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
    async def work(audit_log: AuditLog, scopes: frozenset[str]) -> Response:
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
    async def work(audit_log: AuditLog, scopes: frozenset[str]) -> Response:
        params = request.query_params
        try:
            pseudonym = None
            subject = params.get("subject")
            if subject is not None:
                tenant = params.get("tenant")
                pseudonym = await _off_loop(subject_pseudonym, audit_log, tenant, subject)
                if pseudonym is None:
                    raise NotFound("unknown or erased subject")
            flt = ExportFilter(
                _time_param(request, "from"),
                _time_param(request, "to"),
                params.get("client"),
                pseudonym,
            )
            chunks = await run_in_threadpool(iter_bundle, audit_log, flt)
        except ExportError as exc:
            raise InvalidRequest(str(exc)) from exc
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


def _time_param(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        raise InvalidRequest(f"{name} is required")
    return parse_time_ms(raw, name)
