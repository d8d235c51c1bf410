"""Which arm served a ranking: read from the ranking's own audit record.

Why the audit log and not an index of our own: every ranking already has exactly one
record there, durable before its response left (so before any client can hold its
request id), with the tenant, the subject's pseudonym, the status and the model
name, version, digest and A/B arm; the store keeps an index on request ids, so the
lookup is one indexed read (and replicas sharing a PostgreSQL audit log share it).
A second index written at rank time would be a second write on the hot path and a
second copy to keep consistent and to erase. What the audit log makes impossible is
also what should be impossible: a ranking whose record was purged past retention,
or whose subject was erased, has no events any more.

Every way a request id can fail to name one of the caller's own successful rankings
of this subject (unknown, another tenant's, not a ranking, another user's) answers
the same `UnknownRanking`, so the answer is no oracle for other tenants' ids; a
ranking of the caller's own that was refused is `RankingRefused`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from audit import AuditLog, RecordError, StoreError, parse, subject_pseudonym
from gateway.errors import AuditUnavailable, GatewayError

# The gateway's own request ids (gateway.transport.new_request_id): 32 lowercase hex.
REQUEST_ID = re.compile(r"[0-9a-f]{32}")


class UnknownRanking(GatewayError):  # noqa: N818 - named for its problem type
    status = 404
    slug = "unknown-ranking"
    title = "No ranking of this subject has this request id"


class RankingRefused(GatewayError):  # noqa: N818 - named for its problem type
    status = 409
    slug = "ranking-refused"
    title = "The ranking was refused: it showed nothing to count"


class EventsUnavailable(GatewayError):  # noqa: N818 - named for its problem type
    """The event store cannot be read or written: nothing is counted (fail closed)."""

    status = 503
    slug = "events-unavailable"
    title = "Outcome events are unavailable"


@dataclass(frozen=True, slots=True)
class ServedArm:
    model: str
    version: str
    variant: str  # "-" without an A/B split
    digest: str
    package_digest: str | None
    subject: str  # the ranking's subject pseudonym


def served_arm(audit_log: AuditLog, tenant: str | None, user_id: str, request_id: str) -> ServedArm:
    """The arm that served `request_id` for `user_id` of `tenant`. Blocking."""
    if REQUEST_ID.fullmatch(request_id) is None:
        raise UnknownRanking()
    try:
        index = audit_log.store.index_of(request_id)
        if index is None:
            raise UnknownRanking()
        payload = audit_log.store.leaf(index).payload
        pseudonym = subject_pseudonym(audit_log, tenant, user_id)
    except StoreError as exc:
        raise AuditUnavailable(log_cause=f"ranking lookup: {exc}") from exc
    if payload is None:
        raise UnknownRanking()  # purged past retention
    try:
        record: dict[str, Any] = parse(payload)
    except RecordError as exc:
        raise AuditUnavailable(log_cause=f"ranking record unreadable: {exc}") from exc
    model = record.get("model")
    if (
        record.get("kind") != "request"
        or record.get("action") != "rank"
        or record.get("tenant") != tenant
        or pseudonym is None
        or record.get("subject") != pseudonym
    ):
        raise UnknownRanking()
    if record.get("status") != 200 or not isinstance(model, dict):
        raise RankingRefused()
    return ServedArm(
        model=str(model["name"]),
        version=str(model["version"]),
        variant=str(model.get("variant") or "-"),
        digest=str(model.get("digest") or ""),
        package_digest=model.get("package_digest"),
        subject=pseudonym,
    )
