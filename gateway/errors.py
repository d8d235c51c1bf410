"""The one error tree of the gateway.

Every refusal below the routes is a `GatewayError`. One handler turns it into an
RFC 9457 problem+json response (or the Open Inference Protocol's `{"error": ...}`
shape on `/v2`). `detail` is shown to the client, so it never carries internals
or request values that may be personal; `log_cause` is for the log only.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

PROBLEM_BASE = "urn:gateway:problem:"


class GatewayError(Exception):
    """Base of every typed refusal. Subclasses fix `status`, `slug` and `title`."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        log_cause: str | None = None,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.log_cause = log_cause
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})
        # Set by the authorize stage on a denial, so the audit record names the decision.
        self.decided_by: tuple[str, ...] = ()
        self.policy_bundle: str | None = None
        # Set by stage 5 on a refusal: its verdict, for the audit record only.
        self.inspection: dict[str, Any] | None = None

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type_uri, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class InternalError(GatewayError):
    """Something failed that the client cannot fix; the cause goes to the log only."""


class MalformedRequest(GatewayError):
    status = 400
    slug = "malformed-request"
    title = "Malformed request"


class InvalidRequest(GatewayError):
    status = 422
    slug = "invalid-request"
    title = "Request failed validation"


class UnknownItems(InvalidRequest):
    slug = "unknown-items"
    title = "Unknown candidate items"

    def __init__(self, positions: list[int], *, shown: int = 20) -> None:
        # Positions in the request's `item_ids`, not the ids: an answer never repeats a
        # value the client sent (it may be anything, personal data included).
        listed = positions[:shown]
        more = len(positions) - len(listed)
        suffix = f" (and {more} more)" if more else ""
        super().__init__(
            f"{len(positions)} candidate item id(s) are not in the catalogue: see "
            f"unknown_item_positions{suffix}",
            extensions={"unknown_item_positions": listed},
            log_cause=f"{len(positions)} unknown item id(s)",
        )
        self.positions = positions


class PayloadTooLarge(GatewayError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class UnsupportedMediaType(GatewayError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class NotFound(GatewayError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(GatewayError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class InvalidToken(GatewayError):
    """RFC 6750 §3.1 invalid_token. The body is the same for every cause."""

    status = 401
    slug = "invalid-token"
    title = "Missing or invalid bearer token"

    def __init__(self, *, log_cause: str, token_presented: bool = True, realm: str = "gateway"):
        if token_presented:
            challenge = f'Bearer realm="{realm}", error="invalid_token"'
        else:
            # RFC 6750 §3.1: no error code when the request carried no credentials.
            challenge = f'Bearer realm="{realm}"'
        super().__init__(None, log_cause=log_cause, headers={"WWW-Authenticate": challenge})


class InsufficientScope(GatewayError):
    """RFC 6750 §3.1 insufficient_scope."""

    status = 403
    slug = "insufficient-scope"
    title = "Token lacks the required scope"

    def __init__(self, required: str, *, realm: str = "gateway") -> None:
        super().__init__(
            f"this operation requires scope '{required}'",
            log_cause=f"missing scope {required}",
            headers={
                "WWW-Authenticate": (
                    f'Bearer realm="{realm}", error="insufficient_scope", scope="{required}"'
                )
            },
        )


class Forbidden(GatewayError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class RequestRefused(GatewayError):
    """The input inspector blocked the request. One type whatever fired: the client is
    not told which detector it tripped (that would be an oracle for evading it)."""

    status = 403
    slug = "request-refused"
    title = "Request refused"

    def __init__(self, *, log_cause: str, inspection: dict[str, Any] | None = None) -> None:
        super().__init__(None, log_cause=log_cause)
        self.inspection = inspection


class TooManyRequests(GatewayError):
    """Rate limit or detector throttle: the same type for both, with Retry-After."""

    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(
        self, retry_after_s: float, *, log_cause: str, inspection: dict[str, Any] | None = None
    ) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(
            f"retry after {seconds} s", log_cause=log_cause, headers={"Retry-After": str(seconds)}
        )
        self.retry_after_s = seconds
        self.inspection = inspection


class QueryBudgetExhausted(TooManyRequests):
    slug = "query-budget-exhausted"
    title = "Query budget exhausted"


class InspectionUnavailable(GatewayError):
    """Shared rate-limit / detector state unreachable: refused, not waved through (fail closed)."""

    status = 503
    slug = "inspection-unavailable"
    title = "The request could not be inspected"


class RequestTimeout(GatewayError):
    status = 503
    slug = "timeout"
    title = "The request did not complete in time"


class AuditDamaged(GatewayError):
    """The audit log is damaged where a request reads it (an export): nothing is sent,
    and the detail names the first damaged record so an operator can run `audit verify`."""

    status = 500
    slug = "audit-damaged"
    title = "The audit log is damaged"


class AuditUnavailable(GatewayError):
    """The audit record could not be made durable, so the request is refused (fail closed)."""

    status = 503
    slug = "audit-unavailable"
    title = "The request could not be audited"


class ModelNotReady(GatewayError):
    status = 503
    slug = "model-not-ready"
    title = "Model not ready"


class ConfigurationError(Exception):
    """Raised at start-up or by the CLI for a configuration the gateway refuses to run with."""


class OAuthError(Exception):
    """RFC 6749 §5.2 token-endpoint error; rendered as OAuth JSON, not problem+json."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def bug_report(exc: BaseException) -> str:
    """An unexpected exception as the log may hold it: its type and where it was raised
    (file, line, function; innermost first), never its message or arguments, which may
    quote what a client sent."""
    frames = traceback.extract_tb(exc.__traceback__)[-8:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__} at {where}" if where else type(exc).__name__
