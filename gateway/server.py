"""The HTTP server `gateway serve` runs: uvicorn, bounded.

- Request line and headers together are bounded (`limits.max_header_bytes`), however
  they arrive, and so is the number of header fields (`limits.max_header_count`): both
  answer 431 and close.
- Open connections are bounded (`limits.max_connections`: 503 past it), and an idle
  keep-alive connection is closed after `limits.keep_alive_s`.
- Forwarded headers are believed only from `limits.trusted_proxies` (none by default):
  uvicorn's own default believes 127.0.0.1, which let a local client rotate
  X-Forwarded-For to get a fresh token-endpoint rate limit per request.
- With `--workers N` (N > 1) a supervisor binds the socket once and N worker processes
  serve it (gateway.workers); each worker builds exactly the server below.
- With `tls.cert_file` it serves only TLS (gateway.tls: 1.2+, AEAD, optional mutual TLS),
  sends `Strict-Transport-Security`, and hands the app the verified client certificate
  in the ASGI TLS extension (gateway.tls_scope), which uvicorn itself does not.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.http_protocol import BoundedHttpToolsProtocol, TlsBoundedHttpToolsProtocol
from gateway.settings import Settings
from gateway.tls import server_context
from gateway.tls_scope import connection_app, hsts
from gateway.workers.spec import ServeInputs

_TOO_LARGE = b"request header fields too large"
_H11_DEFAULT_LIMIT = 16 * 1024  # h11's own default max_incomplete_event_size


class BoundedH11Protocol(H11Protocol):
    """h11 with a 431 (not 400) when the request line and headers outgrow the bound."""

    def send_400_response(self, msg: str) -> None:
        buffered, _closed = self.conn.trailing_data
        limit = self.config.h11_max_incomplete_event_size or _H11_DEFAULT_LIMIT
        if len(buffered) <= limit:
            super().send_400_response(msg)
            return
        headers = [
            *self.server_state.default_headers,  # Date, and HSTS over TLS
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(
                status_code=431, headers=headers, reason=b"Request Header Fields Too Large"
            ),
            h11.Data(data=_TOO_LARGE),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


class TlsH11Protocol(BoundedH11Protocol):
    """The bounded h11 protocol over TLS: each request carries its connection's TLS facts."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = connection_app(self.app, transport)


class TlsHttpToolsProtocol(HttpToolsProtocol):
    """The same for uvicorn's httptools protocol (`http="httptools"`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = connection_app(self.app, transport)


class HeaderLimits:
    """Refuses a request with too many header fields, or too many header bytes, with 431
    before the app. h11 bounds only a request that arrives in pieces (its incomplete-event
    limit, above); one that arrives in a single read is measured here."""

    def __init__(self, app: ASGIApp, *, max_count: int, max_bytes: int) -> None:
        self._app = app
        self._max_count = max_count
        self._max_bytes = max_bytes

    def _too_large(self, scope: Scope) -> bool:
        headers = scope["headers"]
        if len(headers) > self._max_count:
            return True
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        return size + sum(len(name) + len(value) + 4 for name, value in headers) > self._max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._too_large(scope):
            await send(
                {
                    "type": "http.response.start",
                    "status": 431,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _TOO_LARGE})
            return
        await self._app(scope, receive, send)


def server_config(settings: Settings, app: ASGIApp) -> uvicorn.Config:
    """Raises `ConfigurationError` for TLS files it cannot use (gateway.tls)."""
    limits = settings.limits
    proxies = limits.trusted_proxies
    context: ssl.SSLContext | None = None
    # httptools (gateway.http_protocol): h11 cost a sixth of the event loop under load.
    protocol: type[HttpToolsProtocol] = BoundedHttpToolsProtocol
    every_response: list[tuple[str, str]] = []
    if settings.tls.enabled:
        context = server_context(settings.tls, settings.resolve)
        protocol = TlsBoundedHttpToolsProtocol
        if settings.tls.hsts_max_age_s:
            # uvicorn adds these to every response, its own 503s included.
            every_response = [("strict-transport-security", hsts(settings.tls.hsts_max_age_s))]
    return uvicorn.Config(
        HeaderLimits(app, max_count=limits.max_header_count, max_bytes=limits.max_header_bytes),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # gateway.logs routes uvicorn's loggers through the gateway's one handler.
        log_config=None,
        access_log=False,
        server_header=False,
        headers=every_response,
        http=protocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.keep_alive_s,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=list(proxies) if proxies else None,
        # uvicorn's own context has no minimum-version or option knobs: ours replaces it.
        ssl_context_factory=None if context is None else (lambda _config, _default: context),
    )


def serve_inputs(
    data_dir: Path | None,
    config: Path | None,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
) -> ServeInputs:
    """`gateway serve`'s options, as the workers rebuild their settings from them."""

    def text(path: Path | None) -> str | None:
        return None if path is None else str(path.absolute())

    return ServeInputs(
        data_dir=None if data_dir is None else str(data_dir),
        config=text(config),
        host=host,
        port=port,
        grpc_port=grpc_port,
        tls_cert=text(tls_cert),
        tls_key=text(tls_key),
        tls_client_ca=text(tls_client_ca),
    )


def serve_workers(inputs: ServeInputs, settings: Settings, workers: int) -> int:
    """Run the supervisor and `workers` workers until SIGTERM/SIGINT; the exit status.

    What one process checks before it binds is checked here first, in this process, so
    that a mistake is the command's one error line (secrets, TLS files); the rest is
    reported by worker 0, which starts alone. The supervisor relays the workers'
    control-plane changes and, without Redis, hosts the rate limits, budgets and
    detector state every worker shares (gateway.workers.state_server).
    """
    from gateway.workers.state_server import state_host
    from gateway.workers.supervisor import Supervisor, WorkerFailed

    settings.check_secrets()
    if settings.tls.enabled:
        server_context(settings.tls, settings.resolve)
    try:
        return Supervisor(inputs, settings, workers, state_host=state_host(settings)).run()
    except WorkerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)  # the process boundary: one line
        return exc.code
