"""Rendering of errors: RFC 9457 problem+json, the OIP `{"error": ...}` shape, OAuth JSON."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    OAuthError,
    bug_report,
)

log = logging.getLogger("gateway.errors")

OIP_PREFIX = "/v2"


def render(
    error: GatewayError, path: str, request_id: str | None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body for `error`, in the shape the route's protocol expects."""
    headers = dict(error.headers)
    headers["Cache-Control"] = "no-store"
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        # Open Inference Protocol: {"error": "..."}; OIP clients expect 400 for bad tensors.
        status = 400 if error.status == 422 else error.status
        headers["Content-Type"] = "application/json"
        return status, headers, orjson.dumps({"error": error.detail or error.title})
    headers["Content-Type"] = "application/problem+json"
    body = error.problem(instance=f"urn:request:{request_id}" if request_id else None)
    return error.status, headers, orjson.dumps(body)


def log_refusal(error: GatewayError, request_id: str | None) -> None:
    """One line per refusal, REST or gRPC."""
    # The cause the server wrote, else the title; never `detail`, which a future error
    # might word from what the client sent (and so from personal data).
    level = logging.ERROR if error.status >= 500 else logging.INFO
    log.log(
        level,
        "request %s refused: %s %s (%s)",
        request_id,
        error.status,
        error.slug,
        error.log_cause or error.title,
    )


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def error_response(error: GatewayError, request: Request) -> Response:
    request_id = _request_id(request)
    log_refusal(error, request_id)
    status, headers, body = render(error, request.url.path, request_id)
    media_type = headers.pop("Content-Type")
    return Response(body, status_code=status, headers=headers, media_type=media_type)


def install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)  # noqa: S101 - registered for this type only
        return error_response(exc, request)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101
        if exc.status_code == 404:
            error: GatewayError = NotFound("no such endpoint")
        elif exc.status_code == 405:
            error = MethodNotAllowed("method not allowed on this endpoint")
            error.headers.update(exc.headers or {})
        else:
            error = InternalError(log_cause=f"HTTPException {exc.status_code}")
        return error_response(error, request)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        return error_response(InvalidRequest("request parameters failed validation"), request)

    async def on_oauth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OAuthError)  # noqa: S101
        log.info("token request refused: %s (%s)", exc.error, exc.description)
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="gateway"'
        body = {"error": exc.error, "error_description": exc.description}
        return Response(
            orjson.dumps(body),
            status_code=exc.status,
            headers=headers,
            media_type="application/json",
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Clients never see internals; the server log gets where it broke, not the message.
        log.error("unhandled error: %s", bug_report(exc))
        return error_response(InternalError(), request)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(OAuthError, on_oauth_error)
    app.add_exception_handler(Exception, on_unexpected)
