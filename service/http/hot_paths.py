"""Direct dispatch of the busiest endpoints: v1 predict, v1 image uploads and v2 infer.

On these routes Starlette's middleware stack, FastAPI's router (which tries every registered route
in turn) and its per-request endpoint machinery cost more than the model itself. `HotPaths` matches
the two paths itself, before the app's middleware stack, and calls their endpoint functions
directly; the app wraps that in the same request-context middleware (ids, limits, metrics, JSON
500) and CORS as every other request. Errors go through the app's own exception handlers, so answers
are the same as through FastAPI. The routes stay registered: the OpenAPI document, other methods
and every other path go through FastAPI.

Under `python -m service`, most hot requests do not even reach the app's ASGI entry: the service's
HTTP protocol matches them with `HotPaths.match` and calls the same wrapped entry itself
(service.http.protocol).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope, Send

# Path template -> how to call its endpoint from the request and the {name} path segment.
HOT_ENDPOINTS: dict[str, Callable[[Callable, Request, str], Awaitable[Response]]] = {
    "/v1/models/{name}/predict": lambda endpoint, request, name: endpoint(request, name),
    "/v2/models/{name}/infer": lambda endpoint, request, name: endpoint(
        request, name, request.headers.get("inference-header-content-length")
    ),
    # Its query options (top_k, version, explain) are read by the endpoint's own reader (`from_query`, set beside it
    # in service.api.v1), not by FastAPI.
    # As measured (a model that costs nothing, 640x480 JPEG uploads): FastAPI's route machinery was a third
    # of the event loop's time per upload.
    "/v1/models/{name}/predict/image": lambda endpoint, request, name: endpoint.from_query(request, name),
}


def hot_routes(routes: list) -> list[APIRoute]:
    """The POST routes among `routes` that HotPaths serves."""
    return [r for r in routes if isinstance(r, APIRoute) and r.path in HOT_ENDPOINTS and "POST" in r.methods]


class _Request(Request):
    """A request whose body() reads the ASGI messages directly: Starlette's goes through an async
    generator, which costs more than the read itself for the usual one-message body."""

    _read: bytes | None = None

    async def body(self) -> bytes:
        if self._read is None:
            chunks, more = [], True
            while more:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            self._read = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._read


class HotPaths:
    def __init__(self, *, routes: list[APIRoute], exception_handlers: dict) -> None:
        self.exception_handlers = exception_handlers  # the app's own, filled in before the first request
        # "{name}" matches one path segment, as FastAPI's path parameter does.
        self.routes = [(re.compile(re.escape(r.path).replace(r"\{name\}", "(?P<name>[^/]+)")), r) for r in routes]

    def match(self, scope: Scope) -> bool:
        """Whether this request is for a hot endpoint; if so, note the route and model name in the scope."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return False
        for pattern, route in self.routes:
            match = pattern.fullmatch(scope["path"])
            if match:
                scope["route"] = route  # read by the request-context middleware for the metrics' endpoint label
                scope["path_params"] = {"name": match["name"]}
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request that `match` accepted."""
        route: APIRoute = scope["route"]
        request = _Request(scope, receive)
        try:
            response = await HOT_ENDPOINTS[route.path](route.endpoint, request, scope["path_params"]["name"])
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
