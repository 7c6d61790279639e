"""Hot requests skip uvicorn's request cycle (`service.http.hot_request.HotRequest`): on a real server on
loopback, their answers must be those of uvicorn's cycle, and HTTP must behave as before."""

from __future__ import annotations

import asyncio
import socket
import threading

import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from service.inference import runtime
from service.app import create_app
from service.http.hot_request import _Resumed
from service.http.protocol import HttpProtocol
from service.observability import request_id_var
from tests.service.conftest import make_settings, serve_on_loopback
from tests.service.test_hot_paths import IMAGE, REQUESTS

PREDICT = orjson.dumps({"instances": [IMAGE.tolist()]})


class CountingProtocol(HttpProtocol):
    """Counts the requests that went the hot way."""

    hot: list[str] = []

    def _hot_request(self):
        request = super()._hot_request()
        if request is not None:
            CountingProtocol.hot.append(request.scope["path"])
        return request


def run_with_server(app, check) -> None:
    """Serve `app` with the counting protocol on a free loopback port and call check(port) from a thread."""
    CountingProtocol.hot = []
    # A request stuck by a bug must fail its test, not hang the shutdown.
    serve_on_loopback(app, CountingProtocol, check, timeout_graceful_shutdown=5)


def exchange(port: int, raw: bytes, *, replies: int = 1, until_closed: bool = False) -> bytes:
    """Send raw bytes on a new connection and read until `replies` answers are whole, or the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        received = b""
        while until_closed or answered(received) < replies:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def answered(received: bytes) -> int:
    """How many whole answers with a content-length the bytes hold."""
    count = 0
    while b"\r\n\r\n" in received:
        head, _, rest = received.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        if len(rest) < length:
            break
        count, received = count + 1, rest[length:]
    return count


def request(method: str, path: str, body: bytes, headers: dict, *, chunked: bool = False, version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test", "X-Request-ID: fixed-id", "Origin: http://example.test",
             *(f"{k}: {v}" for k, v in headers.items())]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in (body[:100], body[100:]) if part) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def parts(answer: bytes) -> tuple[bytes, dict, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines)
    headers.pop(b"date")
    return status, headers, body


@pytest.fixture(scope="module")
def settings(repository):
    return make_settings(repository, max_body_bytes=65_536, cors_origins=["http://example.test"])


def test_hot_requests_answer_as_uvicorns_cycle_does(settings):
    """Each POST of the hot-path suite, sent with a Content-Length (hot) and chunked (uvicorn's cycle)."""
    posts = [(path, body, headers) for method, path, body, headers in REQUESTS if method == "POST"]
    answers: list[tuple[bytes, bytes]] = []

    def check(port):
        for path, body, headers in posts:
            answers.append((exchange(port, request("POST", path, body, headers)),
                            exchange(port, request("POST", path, body, headers, chunked=True))))

    run_with_server(create_app(settings), check)
    for (path, body, _), (hot, cycle) in zip(posts, answers):
        if len(body) > settings.max_body_bytes:  # refused before reading when declared, while reading when chunked
            assert b" 413 " in hot.split(b"\r\n")[0] and b" 413 " in cycle.split(b"\r\n")[0]
        else:
            assert parts(hot) == parts(cycle), path
    statuses = {parts(hot)[0].split(b" ")[1] for hot, _ in answers}
    assert statuses >= {b"200", b"400", b"404", b"413", b"422"}
    # Every well-formed predict and infer path went the hot way, and only those.
    assert sorted(set(CountingProtocol.hot)) == [
        "/v1/models/broken/predict", "/v1/models/digits/predict", "/v1/models/nope/predict",
        "/v2/models/digits/infer", "/v2/models/nope/infer",
    ]


def test_keep_alive_pipelining_and_connection_close(settings):
    def check(port):
        # Three requests in one write: the first goes the hot way, the two behind it wait in uvicorn's queue.
        three = exchange(port, request("POST", "/v1/models/digits/predict", PREDICT, {}) * 3, replies=3)
        assert three.count(b"HTTP/1.1 200 OK\r\n") == 3 and answered(three) == 3
        # One after another on one connection: each goes the hot way.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(3):
                sock.sendall(request("POST", "/v1/models/digits/predict", PREDICT, {}))
                received = b""
                while not answered(received):
                    received += sock.recv(65536)
                assert received.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" not in received
        # HTTP/1.0 and "Connection: close": answered, then the server closes the connection.
        for raw in (request("POST", "/v1/models/digits/predict", PREDICT, {}, version="1.0"),
                    request("POST", "/v1/models/digits/predict", PREDICT, {"Connection": "close"})):
            answer = exchange(port, raw, until_closed=True)
            assert answered(answer) == 1 and b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0] + b"\r\n"

    run_with_server(create_app(settings), check)
    assert len(CountingProtocol.hot) == 1 + 3 + 2


def test_expect_100_continue_goes_through_uvicorns_cycle(settings):
    def check(port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = request("POST", "/v1/models/digits/predict", PREDICT, {"Expect": "100-continue"})
            sock.sendall(head[: -len(PREDICT)])
            interim = b""
            while not interim.endswith(b"\r\n\r\n"):
                interim += sock.recv(65536)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(PREDICT)
            answer = b""
            while not answered(answer):
                answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")

    run_with_server(create_app(settings), check)
    assert CountingProtocol.hot == []


def test_a_client_that_leaves_has_its_request_cancelled_and_counted_as_499(settings, monkeypatch):
    """A hot request whose client disconnects before the answer is cancelled where it waits (here: for the
    model, which the batcher would then drop), and the metrics count it as 499."""
    waiting, cancelled = threading.Event(), threading.Event()

    async def never_answers(self, images):
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    monkeypatch.setattr("service.inference.registry.ServedModel._submit", never_answers)
    app = create_app(settings)

    def check(port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request("POST", "/v1/models/digits/predict", PREDICT, {}))
            assert waiting.wait(10)
        assert cancelled.wait(10)

    run_with_server(app, check)
    metrics = app.state.metrics
    assert metrics.requests.labels("digits", "2", "/v1/models/{name}/predict", "499")._value.get() == 1


def test_an_app_fault_after_the_middleware_is_a_json_500_and_the_server_goes_on(settings, monkeypatch):
    app = create_app(settings)

    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    def check(port):
        app.hot_entry, healthy = broken, app.hot_entry
        answer = exchange(port, request("POST", "/v1/models/digits/predict", PREDICT, {}))
        assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and b"content-type: application/json" in answer
        assert orjson.loads(answer.partition(b"\r\n\r\n")[2]) == {"error": {"code": "internal_error", "message": "Internal Server Error"}}
        assert b"connection: close" in answer
        app.hot_entry = healthy
        assert exchange(port, request("POST", "/v1/models/digits/predict", PREDICT, {})).startswith(b"HTTP/1.1 200 OK\r\n")

    run_with_server(app, check)


def test_responses_without_a_length_are_chunked_and_bad_headers_refused():
    """The hot entry of an app that streams, and one that sends a header value with a line break."""

    class App:
        def __init__(self, entry):
            self.hot_entry = entry
            self.hot_paths = self

        def match(self, scope):
            return scope["path"] == "/hot"

        async def __call__(self, scope, receive, send):  # anything not hot
            raise AssertionError("not expected")

    async def streams(scope, receive, send):
        assert (await receive())["body"] == b"abc"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first,", "more_body": True})
        await send({"type": "http.response.body", "body": b"second"})

    async def injects(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-evil", b"a\r\nset-cookie: b")]})

    def check_stream(port):
        answer = exchange(port, b"POST /hot HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc", until_closed=True)
        assert b"transfer-encoding: chunked" in answer
        assert answer.endswith(b"\r\n\r\n6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n")

    def check_injection(port):
        answer = exchange(port, b"POST /hot HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n", until_closed=True)
        assert answer.startswith(b"HTTP/1.1 500 ") and b"set-cookie" not in answer

    run_with_server(App(streams), check_stream)
    run_with_server(App(injects), check_injection)
    assert CountingProtocol.hot == ["/hot"]



def test_a_request_cut_short_by_a_shutdown_out_of_time_gets_a_500(settings, monkeypatch):
    """uvicorn cancels the requests still running when a graceful shutdown runs out of time; as for its own
    requests, the client then gets a plain 500 rather than a dropped connection."""
    waiting = threading.Event()

    async def never_answers(self, images):
        waiting.set()
        await asyncio.Event().wait()

    monkeypatch.setattr("service.inference.registry.ServedModel._submit", never_answers)
    app = create_app(settings)
    answers: list[bytes] = []
    clients: list[threading.Thread] = []

    def check(port):
        # The client waits for its answer while the server shuts down around it.
        raw = request("POST", "/v1/models/digits/predict", PREDICT, {})
        clients.append(threading.Thread(target=lambda: answers.append(exchange(port, raw, until_closed=True))))
        clients[0].start()
        assert waiting.wait(10)

    serve_on_loopback(app, CountingProtocol, check, log_level="critical", timeout_graceful_shutdown=0.5)
    clients[0].join(10)
    assert answers[0].startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and b"connection: close" in answers[0]
    assert answers[0].endswith(b'{"error":{"code":"internal_error","message":"Internal Server Error"}}')


class FakeTransport:
    """What the protocol needs of a socket's transport; keeps what is written."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_requests_read_in_one_loop_step_run_in_one_batch_and_are_answered_in_the_next(settings, monkeypatch):
    """Each hot request starts in the loop callback that reads it: the requests read in one step are all queued
    when the model's flush runs, and each response leaves in the step of the run, not one step later."""
    batches: list[int] = []
    make_infer_fn = runtime.make_infer_fn

    def recording_infer_fn(*args, **options):
        infer = make_infer_fn(*args, **options)

        def recorded(images):
            batches.append(len(images))
            return infer(images)

        return recorded

    monkeypatch.setattr(runtime, "make_infer_fn", recording_infer_fn)
    app = create_app(settings)
    predict = request("POST", "/v1/models/digits/predict", PREDICT, {})

    async def scenario():
        await app.state.repository.start()
        config = uvicorn.Config(app, log_level="warning")
        config.load()
        state = ServerState()
        connections = []
        for _ in range(3):
            protocol = HttpProtocol(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())
            transport = FakeTransport()
            protocol.connection_made(transport)
            connections.append((protocol, transport))
        first_protocol, first = connections[0]
        first_protocol.data_received(predict)  # the first run goes to the inference thread: it is not measured yet
        while not first.written:
            await asyncio.sleep(0.001)
        first.written = b""
        del batches[:]

        # Answered without waiting for anything: within the callback that read it.
        first_protocol.data_received(request("POST", "/v1/models/nope/predict", PREDICT, {}))
        assert first.written.startswith(b"HTTP/1.1 404 ")
        first.written = b""

        for protocol, _ in connections:
            protocol.data_received(predict)
        assert not any(transport.written for _, transport in connections)
        assert request_id_var.get() is None  # each request's context variables are its own, as in a task
        await asyncio.sleep(0)  # one loop step: the flush, then each request's task
        answers = [transport.written for _, transport in connections]
        await app.state.repository.stop()
        return answers

    answers = asyncio.run(scenario())
    assert batches == [3]
    assert all(answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'"predictions"' in answer for answer in answers)


def test_a_coroutine_started_by_hand_goes_on_in_a_task_as_it_would_have_in_one():
    """`_Resumed` hands the task what the coroutine waits for, or goes on at once when that is done already;
    a bare yield asks for the next loop step; a cancellation before the task's first step cancels the future
    and reaches the coroutine where it waits."""

    async def waits(awaitable, seen: list):
        try:
            seen.append(await awaitable)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        await asyncio.sleep(0)  # a bare yield afterwards
        return len(seen)

    def started(awaitable, seen):
        coroutine = waits(awaitable, seen)
        return coroutine, coroutine.send(None)

    async def scenario():
        loop = asyncio.get_running_loop()
        outcomes = {}
        for case in ("pending", "done", "cancelled"):
            future, seen = loop.create_future(), []
            coroutine, awaited = started(future, seen)
            assert awaited is future
            task = loop.create_task(_Resumed(coroutine, awaited))
            if case == "pending":
                loop.call_soon(future.set_result, "late")
            elif case == "done":
                future.set_result("early")
            else:
                task.cancel()
            try:
                outcomes[case] = (await task, seen, future.cancelled())
            except asyncio.CancelledError:
                outcomes[case] = ("task cancelled", seen, future.cancelled())
        # A coroutine whose first suspension is a bare yield.
        coroutine, awaited = started(asyncio.sleep(0, result="slept"), seen := [])
        assert awaited is None
        outcomes["bare yield"] = (await loop.create_task(_Resumed(coroutine, awaited)), seen, False)
        # Awaited directly, as any coroutine may be.
        future, seen = loop.create_future(), []
        coroutine, awaited = started(future, seen)
        loop.call_soon(future.set_result, "awaited")
        outcomes["awaited"] = (await _Resumed(coroutine, awaited), seen, False)
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes["pending"] == (1, ["late"], False)
    assert outcomes["done"] == (1, ["early"], False)
    assert outcomes["cancelled"] == ("task cancelled", ["cancelled"], True)
    assert outcomes["bare yield"] == (1, ["slept"], False)
    assert outcomes["awaited"] == (1, ["awaited"], False)
