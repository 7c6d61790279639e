"""uvicorn's HTTP protocol (httptools), with a lean path for the two busiest endpoints.

`HttpProtocol` is uvicorn's `HttpToolsProtocol` with two changes:

- Hot requests (`HotRequest`): a POST for v1 predict or v2 infer whose body has a declared length of
  at most 1 MiB skips uvicorn's per-request cycle (its proxy-headers middleware, an `asyncio.Event`
  and a flow-controlled reader for the body, two regular expressions run on every response header).
  The body is gathered as it arrives; once it is whole, the app's hot entry (the same middleware and
  endpoints as on the ASGI path, see service.http.hot_paths) runs on it, at once under light load, in a
  task among uvicorn's own once it waits (a graceful shutdown waits for it); the response leaves in
  one socket write. That saves about 14 µs of CPU per prediction, a tenth of the whole
  (bench/README.md). A hot request whose client leaves before its answer is cancelled, which drops
  it from the model's queue before inference (uvicorn lets an app run on for a client that is
  gone). Anything else (another method or path, a chunked or larger body, `Expect: 100-continue`,
  a request pipelined behind one not yet answered) goes through uvicorn's cycle as before.
- Every other response also leaves in one socket write (`HeaderHoldingTransport`): uvicorn writes a
  response's status line and headers, then its body, as two writes: two send() system calls per
  response, each ~4.5 µs of CPU on loopback (bench/socket_writes.py), and two segments for the
  client to read.
"""

from __future__ import annotations

import asyncio
import hmac
import time

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.http.hot_request import HOT_BODY_LIMIT, HOT_GATHERING_LIMIT, HeaderHoldingTransport, HotRequest
from service.http.guards import BODY, HEAD, LINGER_BYTES, LINGER_S, ConnectionLimits, DeadlineSweep, error_response

# For an app that carries none (the service's carries its settings').
DEFAULT_LIMITS = ConnectionLimits()


class Refused(Exception):
    """Raised from a parser callback once the request was refused: stops the parser on the spot."""


class HttpProtocol(HttpToolsProtocol):
    # Slots for what this class adds: uvicorn's protocol already sets 29 attributes, and past 30 an instance's
    # attributes leave CPython's compact shared-key layout, which slowed every attribute access (~5% per request).
    __slots__ = ("limits", "_max_url", "_max_head", "_in_head", "_head_bytes", "_chunk_size", "_requests", "_body_bytes",
                 "_watched", "_watched_since", "_body_seen", "_body_seen_at", "_refused", "_shutdown_at", "_linger",
                 "_lingered", "_sweep", "api_key")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeaderHoldingTransport(transport, self.loop))  # type: ignore[arg-type]
        self.hot_app = hot_app = _hot_app(self.app)
        self.api_key = _api_key(hot_app)
        self.limits = limits = getattr(hot_app, "connection_limits", None) or DEFAULT_LIMITS
        self._max_url = limits.max_request_line_bytes
        self._max_head = limits.max_header_bytes
        # The head being received: whether the parser is in one, and its bytes in the chunks before this one.
        self._in_head = True
        self._head_bytes = 0
        self._chunk_size = 0
        # For the deadlines, which the sweep measures from when it first sees a request in a state (a request being
        # the count of heads received): no clock is read per request.
        self._requests = 0
        self._body_bytes = 0
        self._watched: tuple = ()
        self._watched_since = self._body_seen_at = 0.0
        self._body_seen = 0
        self._refused = False
        self._shutdown_at: float | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._sweep = DeadlineSweep.of(self.server_state, self.loop, limits)
        self._sweep.ensure_running()
        if len(self.connections) > limits.max_connections:
            self.refuse(503, "too_many_connections", f"this worker has {limits.max_connections} connections open, its "
                        "limit (PIXELSERVE_MAX_CONNECTIONS); retry shortly", "over max_connections", ((b"retry-after", b"1"),))

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the head's bytes counted: a head over the limit is refused before the parser
        # accumulates more of it (httptools joins an unfinished header's pieces anew for each one).
        if self._refused:
            self._drop(len(data))
            return
        self._unset_keepalive_if_required()
        self._chunk_size = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, Refused):
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head and not self._refused:
                self._refuse_head()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self._max_url:
            self.refuse(414, "uri_too_long", f"the request target is longer than the {self._max_url} bytes accepted "
                        "(PIXELSERVE_MAX_REQUEST_LINE_BYTES)", "request line too long")
            raise Refused

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The chunks counted so far and this one are a bound on the head's size; only past the limit is it measured.
        if self._head_bytes + self._chunk_size > self._max_head and self._head_size() > self._max_head:
            self._refuse_head()
            raise Refused
        self._requests += 1
        self._body_bytes = 0
        if self.timeout_keep_alive_task is not None:
            # Armed when a hot request was answered within this same data_received: a request pipelined behind it
            # is under way, and the timer must not close its connection.
            self._unset_keepalive_if_required()
        request = self._hot_request()
        if request is None:
            super().on_headers_complete()
        else:
            self.cycle = request  # type: ignore[assignment]

    def _hot_request(self) -> HotRequest | None:
        """A HotRequest for this request if it is one, with the scope uvicorn would have made; else None."""
        parser = self.parser
        if (
            self.hot_app is None
            or parser.get_method() != b"POST"
            or self.expect_100_continue
            or self.limit_concurrency is not None  # uvicorn's 503 for too many connections applies
            or (self.cycle is not None and not self.cycle.response_complete)  # pipelined: uvicorn queues it
            or parser.should_upgrade()
        ):
            return None
        declared = None
        for name, value in self.headers:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                return None
        if self.api_key is not None and not hmac.compare_digest(_sent_key(self.headers), self.api_key):
            # Without the key: uvicorn's cycle, where the endpoint refuses it before reading the body.
            return None
        if declared is None or not declared.isdigit() or int(declared) > HOT_BODY_LIMIT:
            return None
        if HotRequest.gathering + int(declared) > HOT_GATHERING_LIMIT:
            return None
        url = httptools.parse_url(self.url)
        if b"%" in url.path:  # percent-escapes: uvicorn unquotes the path
            return None
        scope = self.scope
        scope["method"] = "POST"
        http_version = parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = url.path.decode("ascii")
        scope["raw_path"] = url.path
        scope["query_string"] = url.query or b""
        if not self.hot_app.hot_paths.match(scope):  # refuses a root_path, as the ASGI path does
            return None
        scope["app"] = self.hot_app
        scope["pixelserve.gathered"] = True  # the body is in memory before the app runs (the app's body budget skips it)
        return HotRequest(self, scope, keep_alive=http_version != "1.0" and parser.should_keep_alive(), declared=int(declared))

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if type(self.cycle) is HotRequest:
            self.cycle.add_body(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        # The next bytes begin the next request's head; those left in this chunk are not counted (one chunk at most).
        self._in_head, self._head_bytes = True, -self._chunk_size
        if type(self.cycle) is HotRequest:
            self.cycle.start(self.hot_app.hot_entry)
        else:
            super().on_message_complete()

    def shutdown(self) -> None:
        """A graceful shutdown: uvicorn closes the idle connections; a request body still arriving then has
        body_timeout_s to arrive whole, however slow its rate was allowed to be."""
        self._shutdown_at = time.monotonic()
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        request = self.cycle
        if type(request) is HotRequest:
            self.cycle = None  # type: ignore[assignment]  # uvicorn's bookkeeping below is for its own cycles
            request.client_left()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, as the service's JSON error rather than plain text."""
        body = orjson.dumps({"error": {"code": "bad_request", "message": msg}})
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        content += (b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body), body)
        self.transport.write(b"".join(content))
        self.transport.close()


    # --- limits and deadlines (service/http/guards.py) -----------------------------------------------

    def _head_size(self) -> int:
        """The bytes of the request line and headers received: exact but for the method and the spaces."""
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers or ())

    def _refuse_head(self) -> None:
        self.refuse(431, "request_header_fields_too_large", f"the request line and headers are longer than the "
                    f"{self._max_head} bytes accepted (PIXELSERVE_MAX_HEADER_BYTES)", "headers too large")

    def check_deadlines(self, moment: float) -> None:
        """Called by the sweep: cut this connection if its request is overdue."""
        if self._refused:
            return
        cycle = self.cycle
        if not self._in_head:
            state = BODY  # the head arrived, the body has not all
        elif cycle is None or (cycle.response_complete and not self.pipeline):
            state = HEAD  # waiting for a request: the first, or the next after a response
        else:
            return  # the app answers: its own limits apply
        if (state, self._requests) != self._watched:  # first seen so: its deadlines run from now
            self._watched, self._watched_since = (state, self._requests), moment
            self._body_seen, self._body_seen_at = self._body_bytes, moment
            return
        limits, elapsed = self.limits, moment - self._watched_since
        if state == HEAD:
            if elapsed <= limits.header_timeout_s:
                return
            if self._head_bytes > 0:  # a request began: tell the client why
                self.refuse(408, "request_timeout", f"the request line and headers did not arrive within "
                            f"{limits.header_timeout_s:g} s (PIXELSERVE_HEADER_TIMEOUT_S)", "header deadline")
            else:
                self._sweep.refused["idle, header deadline"] += 1
                self.transport.close()
            return
        if self._body_bytes != self._body_seen or self.flow.read_paused:  # paused by us: no fault of the client's
            self._body_seen, self._body_seen_at = self._body_bytes, moment
        timeout = limits.body_timeout_s
        if moment - self._body_seen_at > timeout:
            why = f"no byte of the request body arrived for {timeout:g} s (PIXELSERVE_BODY_TIMEOUT_S)"
        elif elapsed > timeout and self._body_bytes < limits.min_body_rate_bytes * (elapsed - timeout):
            why = (f"the request body arrived slower than {limits.min_body_rate_bytes} bytes per second after its first "
                   f"{timeout:g} s (PIXELSERVE_MIN_BODY_RATE_BYTES)")
        elif self._shutdown_at is not None and moment - self._shutdown_at > timeout:
            self.refuse(503, "shutting_down", f"the server is shutting down and the request body did not arrive within "
                        f"{timeout:g} s", "body unfinished at shutdown")
            return
        else:
            return
        self.refuse(408, "request_timeout", why, "body deadline")

    def refuse(self, status: int, code: str, message: str, reason: str, headers: tuple = ()) -> None:
        """Answer with a JSON error and close: the write side at once, the connection once the client stops
        sending or LINGER_S has passed (what it sends meanwhile is dropped)."""
        self._refused = True
        self._sweep.refused[reason] += 1
        cycle = self.cycle
        if type(cycle) is HotRequest:
            cycle.client_left()  # not started: its body never came whole
        elif cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # too late for an error response: just close
                self.transport.close()
                return
            cycle.disconnected = True  # the app's receive() answers http.disconnect, its sends go nowhere
            cycle.message_event.set()
        self.transport.write_now(error_response(status, code, message, getattr(self, "url", b""), headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._lingered = 0
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)

    def _drop(self, size: int) -> None:
        self._lingered += size
        if self._lingered > LINGER_BYTES:
            self.transport.close()


def _api_key(app) -> bytes | None:
    """The key the service's app requires (its settings' api_key), if any: hot requests must carry it."""
    key = getattr(getattr(getattr(app, "state", None), "settings", None), "api_key", None)
    return key.get_secret_value().encode() if key is not None else None


def _sent_key(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The key a request's headers carry (X-API-Key, else Authorization: Bearer), as service.api.dependencies reads it."""
    bearer = b""
    for name, value in headers:
        if name == b"x-api-key" and value:
            return value
        if name == b"authorization" and value[:7].lower() == b"bearer " and not bearer:
            bearer = value[7:].strip()
    return bearer


def _hot_app(app):
    """The service's app under uvicorn's wrappers (proxy headers, message logging), if it serves hot
    paths; else None (any other ASGI app: every request then goes through uvicorn's cycle)."""
    while getattr(app, "hot_entry", None) is None:
        app = getattr(app, "app", None)
        if app is None:
            return None
    return app
