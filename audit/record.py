"""The audit record: versioned, canonical bytes (sorted keys, no whitespace, UTF-8, no floats).

Leaves commit to these bytes. Nothing personal appears in clear: the data
subject is a keyed pseudonym that dies with the subject's key, and anything
personal that must be kept is sealed under that key (see audit.subjects).
Fields that later stages fill (policy bundle, consent, PII counts, inspection,
model variant) are present as null when that stage did not run for the request
(it was refused first, or its route has no such stage); nothing is invented.
"""

from __future__ import annotations

from typing import Any

import orjson

RECORD_VERSION = 1

KIND_REQUEST = "request"
KIND_ERASURE = "erasure"
KIND_RETENTION = "retention"
KIND_POLICY_RELOAD = "policy-reload"
# Changes of state recorded before they take effect (record before effect).
KIND_CONSENT = "consent"
KIND_KEY_ROTATION = "key-rotation"
KIND_KEY_DELETION = "key-deletion"


class RecordError(Exception):
    """A stored payload is not a valid audit record."""


def canonical(record: dict[str, Any]) -> bytes:
    """Deterministic bytes: the same record always hashes the same."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def parse(payload: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"record is not JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("v") != RECORD_VERSION:
        raise RecordError("record has no supported version")
    if canonical(record) != payload:
        raise RecordError("record bytes are not canonical")
    return record


def decision_for(status: int) -> str:
    if status < 400:
        return "allow"
    if status in (401, 403):
        return "deny"
    if status < 500:
        return "refuse"
    return "error"


def request_record(
    *,
    ts_ms: int,
    request_id: str,
    route: str,
    action: str,
    client_id: str | None,
    issuer: str | None,
    subject: str | None,
    status: int,
    outcome: str,
    policy_ids: list[str],
    model: dict[str, Any] | None,
    policy_bundle: str | None = None,
    inspection: dict[str, Any] | None = None,
    latency_us: int,
    sealed: dict[str, str] | None,
    consent: dict[str, Any] | None = None,
    pii: dict[str, Any] | None = None,
    tenant: str | None = None,
    client_request_id: str | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """A request's record. `request_id` is the gateway's own, unique id (the lookup key);
    `client_request_id` the client's own X-Request-Id when safe to log (never a key);
    `tenant` the caller's tenant (None: no tenant, the gateway operator's), which scopes
    who may read the record through the audit API."""
    return {
        "v": RECORD_VERSION,
        "kind": KIND_REQUEST,
        "ts_ms": ts_ms,
        "request_id": request_id,
        "client_request_id": client_request_id,
        # The request's W3C trace id: its log lines and spans carry the same one.
        "trace_id": trace_id,
        "tenant": tenant,
        "route": route,
        "action": action,
        "client_id": client_id,
        "issuer": issuer,
        "subject": subject,
        "decision": decision_for(status),
        "policy_ids": policy_ids,
        "policy_bundle": policy_bundle,
        "consent": consent,
        "pii": pii,
        "inspection": inspection,
        "model": model,
        "status": status,
        "outcome": outcome,
        "latency_us": latency_us,
        "sealed": sealed,
    }


def event_record(kind: str, ts_ms: int, **fields: Any) -> dict[str, Any]:
    return {"v": RECORD_VERSION, "kind": kind, "ts_ms": ts_ms, "request_id": None, **fields}
