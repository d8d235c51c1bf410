"""The embedded issuer's endpoints: token (RFC 6749), JWKS, RFC 8414 metadata."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from audit.refusals import source_key
from gateway.components import components_of
from gateway.errors import InspectionUnavailable, OAuthError, TooManyRequests
from gateway.routes._json import json_response
from gateway.tls_scope import client_cert_thumbprint
from security.trust import TokenIssuer

router = APIRouter()


def _issuer(request: Request) -> TokenIssuer:
    issuer = components_of(request).issuer
    issuer.check_enabled()  # 404 while the embedded issuer is disabled
    return issuer


@router.post("/oauth/token", summary="OAuth2 token endpoint (client_credentials)")
async def token(request: Request) -> Response:
    issuer = _issuer(request)
    limiter = components_of(request).inspection
    try:
        # Before the body is read or a secret hashed (scrypt is slow on purpose).
        await limiter.limit_token_endpoint(
            source_key(request.client.host if request.client else "-")
        )
    except TooManyRequests as exc:
        await _audit_token(request, None, exc.status, exc.slug)
        return json_response(
            {"error": "slow_down", "error_description": "too many token requests"},
            status=exc.status,
            headers={**exc.headers, "Cache-Control": "no-store"},
        )
    except InspectionUnavailable as exc:
        # The limiter's shared state is down: refuse (fail closed), and on record.
        await _audit_token(request, None, exc.status, exc.slug)
        raise
    try:
        client_id, body = await issuer.token_endpoint(
            await request.body(),
            request.headers,
            client_cert_thumbprint=client_cert_thumbprint(request.scope),
        )
    except OAuthError as exc:
        # Failed client authentication is security-relevant: it is recorded too.
        await _audit_token(request, None, exc.status, exc.error)
        raise
    # Fail closed: no token leaves the gateway unless its issuance is on record.
    await _audit_token(request, client_id, 200, "ok")
    return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def _audit_token(request: Request, client_id: str | None, status: int, outcome: str) -> None:
    await components_of(request).record_plain(
        request_id=request.scope["state"]["request_id"],
        client_request_id=request.scope["state"].get("client_request_id"),
        route="/oauth/token",
        action="token.issue",
        client_id=client_id,
        status=status,
        outcome=outcome,
    )


@router.get("/.well-known/jwks.json", summary="The embedded issuer's public keys")
async def jwks(request: Request) -> Response:
    return json_response(_issuer(request).jwks(), headers={"Cache-Control": "max-age=300"})


@router.get("/.well-known/oauth-authorization-server", summary="RFC 8414 metadata")
async def metadata(request: Request) -> Response:
    return json_response(_issuer(request).metadata())
