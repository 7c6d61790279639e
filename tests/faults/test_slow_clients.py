"""Row 3 of issue 19: clients trickling a head or a body are cut at their deadline, a worker's connections are
capped, and SIGTERM does not wait out the graceful timeout on a stuck client."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from tests.faults.conftest import PREDICT_BODY, healthy, json_body, predicts, read_reply, running_server, status_of

DEADLINES = {
    "PIXELSERVE_HEADER_TIMEOUT_S": "1", "PIXELSERVE_BODY_TIMEOUT_S": "1", "PIXELSERVE_MIN_BODY_RATE_BYTES": "2000",
    "PIXELSERVE_MAX_CONNECTIONS": "60",
}
PREDICT_HEAD = b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # One worker: the connection cap is per worker, and every connection then meets it.
    with running_server(tmp_path_factory.mktemp("slow") / "models", workers=1, env=DEADLINES) as server:
        yield server


def trickle(port: int, data: bytes, piece: int, every_s: float, results: list, index: int) -> None:
    """Send `data` `piece` bytes at a time; record (status, seconds until the server closed)."""
    started = time.monotonic()
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.settimeout(every_s)
    reply = b""
    try:
        for start in range(0, len(data), piece):
            connection.sendall(data[start:start + piece])
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            reply += chunk
        rest, _ = read_reply(connection, timeout_s=30)
        reply += rest
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        connection.close()
    results[index] = (status_of(reply), time.monotonic() - started, reply)


def test_clients_trickling_headers_are_cut_at_the_deadline_while_others_are_served(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-Slow: x\r\n" * 100 + b"\r\n"
    results: list = [None] * 40
    threads = [threading.Thread(target=trickle, args=(server.port, head, 2, 0.2, results, i)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    assert healthy(server.url) and predicts(server.url)  # served meanwhile
    for thread in threads:
        thread.join()
    for status, elapsed, reply in results:
        assert status == 408 and json_body(reply)["error"]["code"] == "request_timeout", reply[:300]
        assert 0.9 < elapsed < 3.0, elapsed


def test_a_client_that_sends_nothing_is_closed_at_the_header_deadline(server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        reply, closed = read_reply(connection)
    assert closed and reply == b"" and 0.9 < time.monotonic() - started < 3.0


@pytest.mark.parametrize("piece, every_s", [(100, 0.2), (1, 0.05)], ids=["slow-body", "trickled-body"])
def test_a_body_slower_than_the_minimum_rate_is_cut(server, piece, every_s):
    results: list = [None] * 10
    data = PREDICT_HEAD % len(PREDICT_BODY) + PREDICT_BODY
    threads = [threading.Thread(target=trickle, args=(server.port, data, piece, every_s, results, i)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for status, elapsed, reply in results:
        assert status == 408 and b"connection: close" in reply, reply[:300]
        assert 1.0 < elapsed < 4.0, elapsed
    assert predicts(server.url)


def test_a_stalled_body_is_cut(server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(PREDICT_HEAD % len(PREDICT_BODY) + PREDICT_BODY[:1000])
        reply, closed = read_reply(connection)
    assert status_of(reply) == 408 and closed and time.monotonic() - started < 3.0, reply[:300]


def test_a_slow_body_above_the_minimum_rate_is_served(server):
    results: list = [None]
    data = PREDICT_HEAD % len(PREDICT_BODY) + PREDICT_BODY  # ~4 KB at ~8 KB/s: 0.5 s, never idle
    trickle(server.port, data, 400, 0.05, results, 0)
    status, _, reply = results[0]
    assert status == 200, reply[:300]


def test_connections_over_the_cap_get_503_and_others_are_served_once_they_go(server):
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(60)]
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            reply, closed = read_reply(extra)
        assert status_of(reply) == 503 and closed, reply[:300]
        assert json_body(reply)["error"]["code"] == "too_many_connections" and b"retry-after: 1" in reply
    finally:
        for connection in held:
            connection.close()
    deadline = time.monotonic() + 5
    while not healthy(server.url):
        assert time.monotonic() < deadline


def test_sigterm_does_not_wait_the_graceful_timeout_on_a_trickling_client(tmp_path):
    # A client keeping above the minimum rate (so no deadline cuts it) with a body that never ends.
    env = DEADLINES | {"PIXELSERVE_BODY_TIMEOUT_S": "2"}
    with running_server(tmp_path / "models", workers=2, env=env, args=("--graceful-timeout", "30")) as server:
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        connection.sendall(PREDICT_HEAD % (1 << 20))
        stop = threading.Event()

        def keep_sending() -> None:
            try:
                while not stop.is_set():
                    connection.sendall(b" " * 500)
                    time.sleep(0.05)  # 10 KB/s
            except OSError:
                pass

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            time.sleep(3)
            assert server.process.poll() is None
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=30) == 0
            stopped_in = time.monotonic() - started
        finally:
            stop.set()
            sender.join()
            connection.close()
        assert stopped_in < 6, f"SIGTERM took {stopped_in:.1f} s with a trickling client"
