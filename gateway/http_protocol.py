"""The HTTP/1.1 protocol `gateway serve` runs: uvicorn's httptools (llhttp, in C), bounded.

h11, uvicorn's pure-Python parser, cost about a sixth of the event loop's time under
load (py-spy, bench/serve c8); llhttp parses the same requests for a fraction of that.
What h11 bounded by itself, this bounds here:

- A request head (request line and headers) still incomplete after `max_header_bytes`
  is answered 431 and the connection closed: httptools buffers a header that has not
  ended without limit. A complete head is measured again by `server.HeaderLimits`
  (field count and bytes), which answers 431 for one that arrived in a single read.

It also writes each response in one piece. uvicorn writes the status line and headers
as soon as the app starts the response, and the body a moment later: two send calls and
two TCP segments for every response, each waking the client. `_CoalescingTransport`
holds the first write of a response until the next one (the body, normally in the same
step of the same task) or until the loop's next turn, whichever comes first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.tls_scope import connection_app

_TOO_LARGE = b"request header fields too large"


class _CoalescingTransport:
    """A transport that joins a held write with the one after it (see the module doc)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
            return
        self._held = None
        self._transport.write(held + data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Everything else (extra info, flow control, is_closing) is the real transport's.
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a bound on an incomplete request head, and one write per response."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = False
        self._head_limit = self.config.h11_max_incomplete_event_size or 16 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = _CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self._head_limit and self.parser is not None:
            self._send_431()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def _send_431(self) -> None:
        self._in_head = False
        content = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:  # Date, and HSTS over TLS
            content.extend([name, b": ", value, b"\r\n"])
        content.append(
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_TOO_LARGE)
        )
        content.append(_TOO_LARGE)
        self.transport.write(b"".join(content))
        self.transport.close()


class TlsBoundedHttpToolsProtocol(BoundedHttpToolsProtocol):
    """The same over TLS: each request carries its connection's TLS facts (tls_scope)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = connection_app(self.app, transport)
