"""Direct dispatch of the busiest endpoints: v1 predict and v2 infer.

On these routes FastAPI's router (which tries every registered route in turn) and its per-request
endpoint machinery cost about as much as the model itself. This middleware, innermost of the app's
own middleware (below CORS and the request-context middleware, so ids, limits and metrics still
apply), matches the two paths itself and calls their endpoint functions directly. Errors go
through the app's own exception handlers, so answers are the same as through FastAPI. The routes
stay registered: the OpenAPI document, other methods and every other path go through FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import Response
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

# Path template -> how to call its endpoint from the request and the {name} path segment.
HOT_ENDPOINTS: dict[str, Callable[[Callable, Request, str], Awaitable[Response]]] = {
    "/v1/models/{name}/predict": lambda endpoint, request, name: endpoint(request, name),
    "/v2/models/{name}/infer": lambda endpoint, request, name: endpoint(
        request, name, request.headers.get("inference-header-content-length")
    ),
}


def hot_routes(routes: list) -> list[APIRoute]:
    """The POST routes among `routes` that HotPathMiddleware serves."""
    return [r for r in routes if isinstance(r, APIRoute) and r.path in HOT_ENDPOINTS and "POST" in r.methods]


class HotPathMiddleware:
    def __init__(self, app: ASGIApp, *, routes: list[APIRoute], exception_handlers: dict) -> None:
        self.app = app
        self.exception_handlers = exception_handlers  # the app's own, filled in before the first request
        # "{name}" matches one path segment, as FastAPI's path parameter does.
        self.routes = [(re.compile(re.escape(r.path).replace(r"\{name\}", "(?P<name>[^/]+)")), r) for r in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            for pattern, route in self.routes:
                match = pattern.fullmatch(scope["path"])
                if match:
                    await self._serve(route, match["name"], scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: APIRoute, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = route  # read by the request-context middleware for the metrics' endpoint label
        request = Request(scope, receive)
        try:
            response = await HOT_ENDPOINTS[route.path](route.endpoint, request, name)
        except Exception as error:
            handler = self._handler_for(error)
            if handler is None:  # a bug: the request-context middleware answers 500
                raise
            response = await handler(request, error)
        await response(scope, receive, send)

    def _handler_for(self, error: Exception):
        for cls in type(error).__mro__:
            if cls is Exception:  # the 500 handler is not ours to call
                return None
            if cls in self.exception_handlers:
                return self.exception_handlers[cls]
        return None
