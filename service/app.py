"""The FastAPI application: routers, the model repository's lifecycle, errors mapped once, request context."""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.dependencies import SECURITY_SCHEMES
from service.config import Settings, get_settings
from service.errors import PayloadTooLarge, ServiceError
from service.http.guards import ConnectionLimits
from service.memory import LARGE_BODY_BYTES, WorkerMemory
from service.http.hot_paths import HotPaths, hot_routes
from service.observability import Metrics, configure_logging, request_id_var
from service.inference.registry import ModelRepository
from service.workers import rescan_on_request

logger = logging.getLogger("service.requests")

# Routers owned by this package; the optional ones are included when their module is present.
REQUIRED_ROUTERS = ("service.api.v1", "service.api.health", "service.api.metrics")
OPTIONAL_ROUTERS = ("service.api.v2", "service.api.web")

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
DOCS_ASSETS = "/static-offline-docs"  # the Swagger UI and ReDoc files, shipped by fastapi-offline
# Request ids made here: a random prefix per process and a counter (cheaper than a uuid4 per request).
_ID_PREFIX = os.urandom(6).hex()  # 12 hex digits; with the 20-digit counter, 32 like a uuid4 in hex
_id_counter = itertools.count(1)
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}

DESCRIPTION = """
Serves the softmax class probabilities of ONNX image classifiers (MNIST digits, Fashion-MNIST)
from the model repository, on ONNX Runtime.

* **v1**: friendly JSON and picture-upload endpoints under `/v1`.
* **v2**: the Open Inference Protocol (KServe / Triton REST) under `/v2`.
* Errors answer `{"error": {"code": ..., "message": ...}}` (the v2 surface: `{"error": "..."}`).
* When the server has an API key, predict, infer and reload endpoints need it in `X-API-Key`
  or `Authorization: Bearer`.
"""


def error_response(path: str, status_code: int, code: str, message: str, headers: dict | None = None) -> Response:
    """The JSON error body of the surface the path belongs to."""
    body = {"error": message} if path.startswith("/v2") else {"error": {"code": code, "message": message}}
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers)


def prefers_html(accept: str) -> bool:
    """Whether text/html is the first media type of the highest quality in an Accept header."""
    best, best_quality = "", -1.0
    for entry in accept.split(","):
        media_type, *parameters = (part.strip() for part in entry.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, number = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(number)
                except ValueError:
                    quality = 0.0
        if quality > best_quality:
            best, best_quality = media_type.lower(), quality
    return best == "text/html"


def wants_page(scope: Scope) -> bool:
    """A request from the web page's no-JavaScript form (it posts to /), or from a browser asking for HTML first."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    if scope["method"] == "POST" and path == "/":
        return True
    return any(key == b"accept" and prefers_html(value.decode("latin-1")) for key, value in scope["headers"])


def too_large_page(scope: Scope, message: str) -> Response | None:
    """The web page with its error block for a body over the limit, when the page is served and wanted."""
    render_page = scope["app"].state.render_web_page
    if render_page is None or not wants_page(scope):
        return None
    return render_page(Request(scope), error=PayloadTooLarge(message), status_code=413)


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> Response:
        return error_response(request.url.path, error.status_code, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', 'invalid')}" for problem in error.errors()
        )
        return error_response(request.url.path, 422, "invalid_input", f"invalid request: {problems}; see /docs for what is accepted")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404:
            message = f"no endpoint at {request.method} {request.url.path}; see /docs for the API"
        elif error.status_code == 413:
            message = f"the request body is larger than the {request.scope.get('body_limit', settings.max_body_bytes)} bytes accepted"
            page = too_large_page(request.scope, message)
            if page is not None:
                return page
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (allowed: {(error.headers or {}).get('Allow', 'see /docs')})"
        else:
            message = str(error.detail)
        return error_response(request.url.path, error.status_code, HTTP_CODES.get(error.status_code, f"http_{error.status_code}"), message, error.headers)


class RequestContextMiddleware:
    """Per request: a request id (echoed from X-Request-ID or generated) in logs and the response header;
    the body limit, checked on Content-Length before anything is read and on the bytes as they stream
    in (a chunked body has no Content-Length); the worker's body budget for a large body (service.memory);
    metrics and a log line (499 for a client that left); a JSON 500 for a bug."""

    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int, memory: WorkerMemory,
        body_limit: Callable[[Scope], int] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.memory = memory
        # A model's predict and infer routes may take more (larger pictures); asked only past the floor.
        self.body_limit = body_limit or (lambda scope: max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, content_length, chunked = None, None, False
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
            elif key == b"content-length":
                content_length = value
            elif key == b"transfer-encoding":
                chunked = True
        if request_id is None or not _CLIENT_REQUEST_ID.fullmatch(request_id):
            request_id = f"{_ID_PREFIX}{next(_id_counter):020x}"
        token = request_id_var.set(request_id)
        id_header = (b"x-request-id", request_id.encode())
        status = 500
        response_started = False

        received, limit = 0, self.max_body_bytes

        async def receive_within_limit() -> Message:
            # An HTTPException passes through FastAPI's body and form parsing unchanged, to the 413 handler.
            nonlocal received, limit
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and limit == self.max_body_bytes:
                    limit = scope["body_limit"] = self.body_limit(scope)
                if received > limit:
                    raise StarletteHTTPException(413)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        body_held = 0
        try:
            declared = int(content_length) if content_length is not None and content_length.isdigit() else None
            if declared is not None and declared > limit:
                limit = self.body_limit(scope)
            if declared is not None and declared > limit:
                message = f"the request body ({declared} bytes) is larger than the {limit} bytes accepted"
                response = too_large_page(scope, message) or error_response(scope["path"], 413, "payload_too_large", message)
                await response(scope, receive, send_with_id)
            else:
                # The server never passes on more than a declared Content-Length; only a chunked body needs counting.
                body_receive = app_receive = receive if declared is not None else receive_within_limit
                if chunked or (declared is not None and declared > LARGE_BODY_BYTES and "pixelserve.gathered" not in scope):
                    cost = self.memory.body_cost(None if chunked else declared)

                    async def receive_within_budget() -> Message:
                        # Once the app starts reading a large body (after its API key check), it waits its turn for
                        # the worker's body budget; the socket is not read meanwhile.
                        nonlocal body_held
                        if not body_held:
                            await self.memory.body.acquire(cost)
                            body_held = cost
                        return await body_receive()

                    app_receive = receive_within_budget
                await self.app(scope, app_receive, send_with_id)
        except ServiceError as error:  # the body budget's 413 or 503, where no handler of the app answered it
            if response_started:
                raise
            response = too_large_page(scope, error.message) if error.status_code == 413 else None
            response = response or error_response(scope["path"], error.status_code, error.code, error.message, error.headers)
            await response(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if not response_started:
                status = 499  # no answer yet: the client closed the connection (nginx's code for it), or a shutdown ran out of time
            raise
        except ClientDisconnect:
            # The client left while sending its body: nobody to answer, and nothing wrong here (logged at info below).
            status = 499
        except Exception:
            logger.exception("unhandled error answering %s %s", scope["method"], scope["path"])
            if response_started:
                raise
            response = error_response(scope["path"], 500, "internal_error", f"internal error; quote request id {request_id}")
            await response(scope, receive, send_with_id)
        finally:
            if body_held:
                self.memory.body.release(body_held)
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            state = scope.get("state") or {}
            self.metrics.observe_request(endpoint, state.get("model", ""), state.get("version", ""), status, elapsed)
            # Successful requests are logged at debug level: at thousands per second, info lines cost real time.
            level = logging.DEBUG if status < 400 else logging.WARNING if status >= 500 else logging.INFO
            if logger.isEnabledFor(level):
                logger.log(
                    level, "%s %s -> %d", scope["method"], scope["path"], status,
                    extra={"method": scope["method"], "path": scope["path"], "status": status, "duration_ms": round(elapsed * 1000, 3)},
                )
            request_id_var.reset(token)


MODEL_ROUTE = re.compile(
    r"/v1/models/(?P<v1>[^/]+)/predict(?:/image)?|/v2/models/(?P<v2>[^/]+)(?:/versions/(?P<version>[0-9]{1,9}))?/infer"
)


def model_body_limit(repository: ModelRepository, floor: int) -> Callable[[Scope], int]:
    """The body limit of a request: its model's (which grows with its pictures' size) on the predict and infer
    routes, else `floor`."""

    def limit(scope: Scope) -> int:
        match = MODEL_ROUTE.fullmatch(scope["path"])
        if match is None:
            return floor
        version = int(match["version"]) if match["version"] else None
        try:
            return repository.get(match["v1"] or match["v2"], version).max_body_bytes
        except ServiceError:  # the route answers why the model cannot serve
            return floor

    return limit


def _document_api_key(app: FastAPI) -> None:
    """Guarded endpoints check the key with a plain call (see service.api.dependencies), so FastAPI does not
    add its security schemes to the OpenAPI document by itself; add them."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            generate().setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
        return app.openapi_schema

    app.openapi = openapi


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, their scripts and styles served by this app (the files
    fastapi-offline ships), not a CDN: they work offline. ReDoc always shows its maker's logo from a CDN:
    its page's Content-Security-Policy keeps it to this server, so it makes no outside request (the logo
    just hides)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"), name="static-offline-docs")
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = "default-src 'self' 'unsafe-inline' data: blob:"
        return page


class ServiceApp(FastAPI):
    """The FastAPI app, except that v1 predict and v2 infer skip Starlette's middleware stack and
    FastAPI's router: `hot_entry` answers them (see service.http.hot_paths), called from here or directly
    by the service's HTTP protocol (service.http.protocol)."""

    hot_paths: HotPaths | None = None
    hot_entry: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot_entry is not None and scope["type"] == "http" and self.hot_paths.match(scope):
            scope["app"] = self
            await self.hot_entry(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics()
    repository = ModelRepository(settings, metrics)
    memory = WorkerMemory(
        memory_limit=settings.memory_limit_bytes, workers=settings.workers, max_body_bytes=settings.max_body_bytes,
        decode_budget=settings.decode_budget_bytes, body_budget=settings.body_budget_bytes, wait_s=settings.budget_wait_s,
        return_memory=settings.return_memory,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await repository.start()
        rescan_on_request(repository.refresh_soon)  # a reload asked of another worker process
        # Everything loaded so far (libraries, the app, the models) lives as long as the process: exclude it
        # from garbage collection, whose full passes over it otherwise stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
        budgets = memory.resize()  # from this worker's memory with its models loaded
        logger.info(
            "memory: %d MiB for the service (%s), %d MiB for this worker of which %d MiB in use; budgets: %d MiB for "
            "decoding pictures, %d MiB for large request bodies", budgets.limit >> 20, budgets.limit_source,
            budgets.worker_share >> 20, budgets.baseline >> 20, budgets.decode >> 20, budgets.body >> 20,
        )
        try:
            yield
        finally:
            # Runs after the server stopped taking requests and finished those in flight.
            await repository.stop()

    app = ServiceApp(
        title="pixelserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # added by _add_docs, with local files
        redoc_url=None,
    )
    _add_docs(app)
    app.state.settings = settings
    app.state.repository = repository
    app.state.metrics = metrics
    app.state.memory = memory
    install_error_handlers(app, settings)
    _document_api_key(app)

    app.state.render_web_page = None
    hot = []
    for module_name in REQUIRED_ROUTERS + OPTIONAL_ROUTERS:
        # The v2 and web modules are optional parts of the package: the app serves without them.
        if module_name in OPTIONAL_ROUTERS and importlib.util.find_spec(module_name) is None:
            logger.warning("%s is not installed; its endpoints are not served", module_name)
            continue
        module = importlib.import_module(module_name)
        app.include_router(module.router)
        hot += hot_routes(module.router.routes)
        if module_name == "service.api.web":
            # A body over the limit from the page's form gets the page back, with its error block.
            app.state.render_web_page = module.render_page

    cors = dict(allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"],
                expose_headers=[REQUEST_ID_HEADER])
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, **cors)
    body_limit = model_body_limit(repository, settings.max_body_bytes)
    # Added last, so it wraps everything else, CORS answers included.
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes, memory=memory, body_limit=body_limit
    )

    # v1 predict and v2 infer: the same request context and CORS, around a direct call of the endpoint.
    app.hot_paths = HotPaths(routes=hot, exception_handlers=app.exception_handlers)
    hot_entry: ASGIApp = app.hot_paths
    if settings.cors_origins:
        hot_entry = CORSMiddleware(hot_entry, **cors)
    app.hot_entry = RequestContextMiddleware(
        hot_entry, metrics=metrics, max_body_bytes=settings.max_body_bytes, memory=memory, body_limit=body_limit
    )
    app.connection_limits = ConnectionLimits.from_settings(settings)  # read by service.http.protocol, per connection
    return app
