"""The privacy stages' refusals (rendered as RFC 9457 problems by the one handler)."""

from __future__ import annotations

from gateway.errors import GatewayError


class RedactionUnavailable(GatewayError):  # noqa: N818 - named for its problem type
    """The PII analyzer failed or timed out: the request is refused, never passed raw."""

    status = 503
    slug = "redaction-unavailable"
    title = "Personal data could not be redacted"


class ConsentRequired(GatewayError):  # noqa: N818 - named for its problem type
    """A model that makes significant automated decisions (GDPR Art. 22) without consent."""

    status = 403
    slug = "consent-required"
    title = "Explicit consent is required"


class ConsentUnavailable(GatewayError):  # noqa: N818 - named for its problem type
    """The consent store cannot be read: no personalisation decision is made without it."""

    status = 503
    slug = "consent-unavailable"
    title = "Consent could not be checked"
