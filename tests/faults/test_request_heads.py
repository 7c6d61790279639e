"""Row 2 of issue 19: an endless header or URL gets 414 / 431 and the connection closed, cheaply, while other
clients are answered."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.faults.conftest import PREDICT_BODY, healthy, json_body, predicts, read_reply, running_server, status_of

LIMITS = {"PIXELSERVE_MAX_REQUEST_LINE_BYTES": "2048", "PIXELSERVE_MAX_HEADER_BYTES": "16384"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("heads") / "models", workers=2, env=LIMITS) as server:
        yield server


def send_and_read(port: int, head: bytes) -> tuple[bytes, bool]:
    """Send `head` from a thread (the server may answer before it has read it all) and read the reply."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send() -> None:
        try:
            connection.sendall(head)
        except OSError:  # the server answered and closed before reading it all
            pass

    sender = threading.Thread(target=send)
    sender.start()
    try:
        return read_reply(connection)
    finally:
        sender.join()
        connection.close()


def test_a_megabyte_header_gets_431_and_the_connection_closed_while_others_are_answered(server):
    health: list[bool] = []
    done = threading.Event()

    def probe() -> None:  # each on a connection of its own: both workers are probed
        while not done.is_set():
            health.append(healthy(server.url, timeout_s=2.0))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(4):
            head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
            reply, closed = send_and_read(server.port, head)
            assert status_of(reply) == 431 and closed, reply[:300]
            assert json_body(reply)["error"]["code"] == "request_header_fields_too_large"
            assert b"connection: close" in reply.lower()
    finally:
        done.set()
        prober.join()
    assert health and all(health), health


def test_an_endless_header_is_cut_at_the_limit_not_parsed_on(server):
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: ")
    sent, started = 0, time.monotonic()
    piece = b"a" * 1024
    try:
        while time.monotonic() - started < 10:  # far more than the limit, if the server let it
            connection.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply, closed = read_reply(connection)
    connection.close()
    # Cut once the server has dropped what came after its answer for a moment (guards.LINGER_S, LINGER_BYTES); the
    # answer, 431, was sent first (the client may lose it to the reset that a close with unread bytes makes).
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"still reading after {sent} bytes, {elapsed:.1f} s"
    assert sent < 64 << 20
    assert status_of(reply) in (431, None) and closed, reply[:300]
    assert predicts(server.url)


def test_a_long_url_gets_414(server):
    reply, closed = send_and_read(server.port, b"GET /healthz?" + b"q" * 3000 + b" HTTP/1.1\r\nHost: test\r\n\r\n")
    assert status_of(reply) == 414 and closed, reply[:300]
    assert json_body(reply)["error"]["code"] == "uri_too_long"
    # v2 paths answer in the v2 error shape.
    reply, _ = send_and_read(server.port, b"GET /v2/models/" + b"m" * 3000 + b" HTTP/1.1\r\nHost: test\r\n\r\n")
    assert status_of(reply) == 414 and isinstance(json_body(reply)["error"], str)


def test_many_small_headers_over_the_limit_get_431(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-A: b\r\n" * 4000 + b"\r\n"
    reply, closed = send_and_read(server.port, head)
    assert status_of(reply) == 431 and closed, reply[:300]


def test_requests_within_the_limits_are_served_whatever_their_size(server):
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(14))  # 14 KB of headers, under 16 KiB
    body = PREDICT_BODY * 1  # and a body in the same packets as the head
    head = b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" + headers
    request = head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    reply, closed = send_and_read(server.port, request)
    assert status_of(reply) == 200 and closed, reply[:300]
    # A large body is no header: 600 KB arriving with the head in one write.
    big = b'{"instances": [' + b",".join([b"[" + b",".join([b"0.000001"] * 784) + b"]"] * 80) + b"]}"
    request = b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(big) + big
    reply, _ = send_and_read(server.port, request)
    assert status_of(reply) == 200, reply[:300]
