"""Responses leave in one socket write (`service.http.protocol`), and HTTP behaves as before."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from service.http.hot_request import HeaderHoldingTransport
from service.http.protocol import HttpProtocol
from tests.service.conftest import serve_on_loopback

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.events: list[object] = []

    def write(self, data: bytes) -> None:
        self.events.append(bytes(data))

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default=None):
        return f"info:{name}"


def hold(scenario) -> list[object]:
    """Run `scenario(transport)` on a loop, let one more loop step pass, return what reached the socket."""
    recorded = RecordingTransport()

    async def main() -> None:
        scenario(HeaderHoldingTransport(recorded, asyncio.get_running_loop()))
        await asyncio.sleep(0)

    asyncio.run(main())
    return recorded.events


def test_status_line_and_headers_go_out_with_the_body():
    def scenario(transport):
        transport.write(HEAD)
        assert transport.get_write_buffer_size() == len(HEAD)  # held, and counted as buffered
        transport.write(b"hello")

    assert hold(scenario) == [HEAD + b"hello"]


def test_headers_without_a_body_go_out_on_the_next_loop_step():
    seen_before_the_step: list[object] = []

    def scenario(transport):
        transport.write(HEAD)  # a HEAD answer: uvicorn writes no body
        seen_before_the_step.extend(transport._transport.events)

    assert hold(scenario) == [HEAD]
    assert seen_before_the_step == []


def test_other_writes_pass_straight_through_in_order():
    def scenario(transport):
        transport.write(b"3\r\nabc\r\n")  # a chunk of a streamed body
        transport.write(HEAD)
        transport.write(b"hello")
        transport.write(b"more")

    assert hold(scenario) == [b"3\r\nabc\r\n", HEAD + b"hello", b"more"]


def test_close_sends_what_is_held_first_and_abort_drops_it():
    def closing(transport):
        transport.write(HEAD)
        transport.close()

    def aborting(transport):
        transport.write(HEAD)
        transport.abort()

    assert hold(closing) == [HEAD, "close"]
    assert hold(aborting) == ["abort"]


def test_other_transport_methods_reach_the_socket_transport():
    def scenario(transport):
        assert transport.get_extra_info("peername") == "info:peername"

    assert hold(scenario) == []


# --- through a real uvicorn server on loopback ------------------------------------------------------


class CountingProtocol(HttpProtocol):
    """Records every write that reaches the socket's transport."""

    writes: list[bytes] = []

    def connection_made(self, transport):
        socket_write = transport.write

        def write(data):
            CountingProtocol.writes.append(bytes(data))
            socket_write(data)

        transport.write = write
        super().connection_made(transport)


async def app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first,", "more_body": True})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"second"})
        return
    answer = b"echo:" + scope["path"].encode() + body
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def read_until(sock: socket.socket, done) -> bytes:
    received = b""
    while not done(received):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def run_with_server(check) -> None:
    CountingProtocol.writes = []
    serve_on_loopback(app, CountingProtocol, check, lifespan="off")


def test_a_response_is_one_write_on_a_real_server():
    def check(port):
        with connect(port) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\nabc")
            answer = read_until(sock, lambda got: got.endswith(b"echo:/xabc"))
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\necho:/xabc")
        assert CountingProtocol.writes == [answer]

    run_with_server(check)


def test_pipelined_requests_are_answered_in_order():
    def check(port):
        with connect(port) as sock:
            sock.sendall(b"".join(f"GET /{n} HTTP/1.1\r\nhost: t\r\n\r\n".encode() for n in range(3)))
            answer = read_until(sock, lambda got: got.count(b"echo:") == 3)
        assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3
        assert answer.index(b"echo:/0") < answer.index(b"echo:/1") < answer.index(b"echo:/2")

    run_with_server(check)


def test_head_streaming_and_100_continue_still_work():
    def check(port):
        with connect(port) as sock:
            sock.sendall(b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n")
            head = read_until(sock, lambda got: got.endswith(b"\r\n\r\n"))
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 7" in head

        with connect(port) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
            stream = read_until(sock, lambda got: got.endswith(b"0\r\n\r\n"))
        assert b"transfer-encoding: chunked" in stream
        assert stream.endswith(b"\r\n\r\n6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n")

        with connect(port) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
            interim = read_until(sock, lambda got: got.endswith(b"\r\n\r\n"))
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"ok")
            final = read_until(sock, lambda got: got.endswith(b"echo:/xok"))
        assert final.startswith(b"HTTP/1.1 200 OK\r\n")

    run_with_server(check)


def test_python_m_service_serves_with_this_protocol(monkeypatch, repository):
    import service.__main__ as cli
    import service.workers

    used: dict[int, dict] = {}  # worker count -> the uvicorn options it ran with

    def run_one_process(app, **options) -> None:
        used[1] = options

    def supervise_workers(app, **arguments) -> int:
        used[2] = arguments["uvicorn_options"]
        return 0

    monkeypatch.setattr(uvicorn, "run", run_one_process)
    monkeypatch.setattr(service.workers, "supervise", supervise_workers)
    for workers in ("1", "2"):
        monkeypatch.setenv("PIXELSERVE_WORKERS", workers)  # restored after the test, as main() sets it
        monkeypatch.setenv("PIXELSERVE_MODEL_REPOSITORY", str(repository))
        assert cli.main(["--workers", workers]) == 0
    assert used[1]["http"] is HttpProtocol and used[2]["http"] is HttpProtocol


def test_python_m_service_runs_one_process_by_default_when_a_gpu_serves(monkeypatch, repository):
    import service.__main__ as cli
    import service.config
    import service.inference.runtime
    import service.workers

    started: list[int] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append(1))
    monkeypatch.setattr(service.workers, "supervise", lambda app, **arguments: started.append(arguments["workers"]) or 0)
    monkeypatch.setattr(service.config, "available_cpus", lambda: 4)
    monkeypatch.setenv("PIXELSERVE_MODEL_REPOSITORY", str(repository))
    monkeypatch.delenv("PIXELSERVE_WORKERS", raising=False)
    for gpu in (False, True):
        monkeypatch.setattr(service.inference.runtime, "gpu_serves", lambda providers, gpu=gpu: gpu)
        assert cli.main([]) == 0
    assert started == [4, 1]
