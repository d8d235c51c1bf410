"""The HTTP server `gateway serve` runs: uvicorn, bounded.

- Request line and headers together are bounded (`limits.max_header_bytes`), however
  they arrive, and so is the number of header fields (`limits.max_header_count`): both
  answer 431 and close.
- Open connections are bounded (`limits.max_connections`: 503 past it), and an idle
  keep-alive connection is closed after `limits.keep_alive_s`.
- Forwarded headers are believed only from `limits.trusted_proxies` (none by default):
  uvicorn's own default believes 127.0.0.1, which let a local client rotate
  X-Forwarded-For to get a fresh token-endpoint rate limit per request.
"""

from __future__ import annotations

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.settings import Settings

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
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        for event in (
            h11.Response(
                status_code=431, headers=headers, reason=b"Request Header Fields Too Large"
            ),
            h11.Data(data=_TOO_LARGE),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


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
    limits = settings.limits
    proxies = limits.trusted_proxies
    return uvicorn.Config(
        HeaderLimits(app, max_count=limits.max_header_count, max_bytes=limits.max_header_bytes),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # gateway.logs routes uvicorn's loggers through the gateway's one handler.
        log_config=None,
        access_log=False,
        server_header=False,
        http=BoundedH11Protocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.keep_alive_s,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=list(proxies) if proxies else None,
    )
