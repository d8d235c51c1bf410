"""A `GatewayError` as a gRPC status: the code its HTTP status maps to, and its safe detail.

The message is the problem's `detail` (else its title), which never carries what the
client sent; the headers a REST client would get (`WWW-Authenticate`, `Retry-After`)
travel as trailing metadata.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from gateway.errors import GatewayError, RequestTimeout

CODES: Mapping[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def code_of(error: GatewayError) -> grpc.StatusCode:
    if isinstance(error, RequestTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return CODES.get(error.status, grpc.StatusCode.INTERNAL)


def message_of(error: GatewayError) -> str:
    return error.detail or error.title


def trailers_of(error: GatewayError, request_id: str) -> tuple[tuple[str, str], ...]:
    headers = tuple((name.lower(), value) for name, value in error.headers.items())
    return (("x-request-id", request_id), *headers)
