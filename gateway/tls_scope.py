"""What the app learns of a TLS connection: the ASGI TLS extension, which uvicorn does not
fill in; and the `Strict-Transport-Security` value sent on every response over TLS.

The extension follows asgiref's TLS spec (`scope["extensions"]["tls"]`): the verified
client certificate is `client_cert_chain[0]` (PEM). The server's context fails every
handshake whose presented certificate does not verify, so `client_cert_error` is always
None here. RFC 8705's `x5t#S256` is `cert_thumbprint` of that certificate.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import ssl
from typing import Any

from cryptography import x509
from starlette.types import ASGIApp, Receive, Scope, Send

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def cert_thumbprint(der: bytes) -> str:
    """RFC 8705 §3.1 `x5t#S256`: base64url (unpadded) SHA-256 of the DER certificate."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def client_cert_thumbprint(scope: Scope) -> str | None:
    """The `x5t#S256` of the verified client certificate on this request's connection."""
    tls = (scope.get("extensions") or {}).get("tls")
    chain = tls.get("client_cert_chain") if tls else None
    if not chain:
        return None
    return cert_thumbprint(ssl.PEM_cert_to_DER_cert(chain[0]))


@functools.lru_cache(maxsize=8)
def _suite_ids(context: ssl.SSLContext) -> dict[str, int]:
    # OpenSSL's cipher id is 0x0300XXXX; XXXX is the IANA (RFC 8446 / 5246) suite number.
    return {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return {
        "server_cert": None,  # the spec allows None; the app has no use for it
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": (
            x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else None
        ),
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version) if version else None,
        "cipher_suite": _suite_ids(ssl_object.context).get(cipher[0]) if cipher else None,
    }


class _ConnectionTls:
    """One connection's app: every request on it carries that connection's TLS facts."""

    __slots__ = ("_app", "_tls")

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self._app = app
        self._tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in {"http", "websocket"}:
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": dict(self._tls)}
        await self._app(scope, receive, send)


def connection_app(app: Any, transport: asyncio.BaseTransport) -> Any:
    """`app` for a connection just made: with the TLS extension when it is a TLS one.
    (For uvicorn protocols' `connection_made`; uvicorn types its app apart from
    Starlette's, hence `Any`.)"""
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return app
    return _ConnectionTls(app, tls_extension(ssl_object))


def hsts(max_age_s: int) -> str:
    """RFC 6797 `Strict-Transport-Security`: HSTS clients use only https from now on."""
    return f"max-age={max_age_s}"
