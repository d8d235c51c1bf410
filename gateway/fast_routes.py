"""The hot routes (`/v1/rank`, OIP infer), dispatched straight to their endpoints.

Between stage 0 and a route's own code Starlette and FastAPI run five more layers
(the method table, exception middleware, an exit stack, the router's linear match over
every route, the route's request/response wrapper with dependency solving): about a
fifth of the event loop's time on `/v1/rank` (py-spy, bench/serve c8). The hot
endpoints take only the request and their path parameters and need none of it, so this
layer, right inside stage 0, matches them first and calls them itself. Everything else
(and any other method on these paths) goes down the ordinary stack unchanged.

An endpoint's exception is answered by the handler the app registered for its type,
as Starlette's own layers would, so a refusal is the same problem+json either way.

`GatewayApp` puts stage 0 and this layer in front of FastAPI's own outer layers too
(server errors, FastAPI's exception telemetry, which asks the OpenTelemetry providers
whether they are configured on every request, and its body limiter): another twentieth
of the loop. Every other request then goes through all of FastAPI's layers, inside
stage 0, so a 500 from Starlette's error layer carries the request id as well.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.convertors import Convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[..., Awaitable[Response]]
Handler = Callable[[Request, Any], Response | Awaitable[Response]]


class _Hot(NamedTuple):
    regex: re.Pattern[str]
    convertors: dict[str, Convertor[Any]]
    route: APIRoute


class FastRoutes:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        endpoints: Sequence[Endpoint],
        handlers: Mapping[Any, Handler],
    ) -> None:
        self.app = app
        self._all_routes = routes
        self._endpoints = tuple(endpoints)
        self._handlers = handlers
        self._routes: tuple[_Hot, ...] | None = None

    def _hot(self) -> tuple[_Hot, ...]:
        if self._routes is None:
            # Built on first use: every router is included by then. FastAPI includes
            # routers lazily; their contexts carry each route's full path.
            found = []
            for context in iter_route_contexts(self._all_routes):
                route = context.original_route
                if (
                    isinstance(route, APIRoute)
                    and route.endpoint in self._endpoints
                    and context.methods == {"POST"}
                    and context.path is not None
                ):
                    regex, _, convertors = compile_path(context.path)
                    found.append(_Hot(regex, convertors, route))
            if len(found) != len(self._endpoints):
                raise RuntimeError("fast routes: an endpoint is not a POST route of the app")
            self._routes = tuple(found)
        return self._routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for hot in self._hot():
                match = hot.regex.match(path)
                if match is None:
                    continue
                params = {
                    key: hot.convertors[key].convert(value)
                    for key, value in match.groupdict().items()
                }
                route = hot.route
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = params
                request = Request(scope, receive, send)
                try:
                    response = await route.endpoint(request, **params)
                except Exception as exc:  # answered by the handler the app registered for it
                    answer = self._handler(exc)(request, exc)
                    response = await answer if inspect.isawaitable(answer) else answer
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler:
        for kind in type(exc).__mro__:
            handler = self._handlers.get(kind)
            if handler is not None:
                return handler
        raise exc  # no handler at all: the outer layers answer 500, as before


class GatewayApp(FastAPI):
    """FastAPI whose HTTP requests enter through `front` (stage 0 and `FastRoutes`, set
    once the app is built), which hands the rest to `stack`: FastAPI's own layers."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        if front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # as Starlette sets it: `request.app` finds the components
        await front(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
