"""HTTP method semantics the router lacks (RFC 9110 sections 9.3.2, 9.3.7, 15.5.6).

Starlette answers a method a path does not serve from the first route that matches the
path, so `Allow` named one method where a path has two, and FastAPI routes serve no
`HEAD`. This layer, inside stage 0 (request id, limits and metrics apply), knows every
method of every path: a `405` lists them all in `Allow`, `HEAD` runs the `GET` and sends
its status and headers without the body, and `OPTIONS` answers `204` with `Allow`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import MethodNotAllowed
from gateway.problems import render

IMPLICIT = ("HEAD", "OPTIONS")


class MethodsMiddleware:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = routes
        self._table: list[tuple[re.Pattern[str], frozenset[str]]] | None = None

    def allowed(self, path: str) -> frozenset[str]:
        """Every method some route serves on `path` (HEAD where GET is; OPTIONS); empty
        when no route matches the path at all (a 404, left to the router)."""
        if self._table is None:
            # Built on first use: every route is included by then.
            # FastAPI includes routers lazily: its contexts name every route's path.
            self._table = [
                (compile_path(context.path)[0], frozenset(context.methods))
                for context in iter_route_contexts(self._routes)
                if context.path and context.methods
            ]
        methods: set[str] = set()
        for pattern, served in self._table:
            if pattern.match(path):
                methods |= served
        if not methods:
            return frozenset()
        if "GET" in methods:
            methods.add("HEAD")
        methods.add("OPTIONS")
        return frozenset(methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in IMPLICIT:
            # The router decides; only its 405 needs every method of the path, so the
            # route table is not searched on the hot path.
            await self.app(scope, receive, self._full_allow(scope, send))
            return
        allowed = self.allowed(scope["path"])
        if not allowed:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted(allowed))
        if method == "OPTIONS":
            await _answer(send, 204, {"Allow": allow}, b"")
        elif method == "HEAD" and "GET" in allowed:
            if self._serves_head(scope["path"]):
                await self.app(scope, receive, send)  # a route of the framework's own
            else:
                await self._head(scope, receive, send)
        else:
            error = MethodNotAllowed(
                "method not allowed on this endpoint", headers={"Allow": allow}
            )
            request_id = scope.get("state", {}).get("request_id")
            status, headers, body = render(error, scope["path"], request_id)
            await _answer(send, status, headers, body)

    def _full_allow(self, scope: Scope, send: Send) -> Send:
        """`send`, but a 405 from the router is replaced by one that lists every method."""
        replaced = False

        async def sending(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 405:
                replaced = True
                allow = ", ".join(sorted(self.allowed(scope["path"])))
                error = MethodNotAllowed(
                    "method not allowed on this endpoint", headers={"Allow": allow}
                )
                request_id = scope.get("state", {}).get("request_id")
                status, headers, body = render(error, scope["path"], request_id)
                await _answer(send, status, headers, body)
                return
            if replaced:
                return  # the router's own 405 body: ours is sent
            await send(message)

        return sending

    def _serves_head(self, path: str) -> bool:
        assert self._table is not None  # noqa: S101 - built by allowed()
        return any("HEAD" in served and p.match(path) for p, served in self._table)

    async def _head(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The GET, answered without its body (its Content-Length stays, as for a GET)."""
        inner: dict[str, Any] = {**scope, "method": "GET"}

        async def bodiless(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(inner, receive, bodiless)
        finally:
            # Stage 0 labels its metrics with the route template the router found.
            if "route" in inner:
                scope["route"] = inner["route"]


async def _answer(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
