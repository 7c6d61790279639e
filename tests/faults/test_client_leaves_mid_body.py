"""Row 6 of issue 19: a client that leaves while sending a large body is a 499, logged at info without a
traceback, never a 500."""

from __future__ import annotations

import socket
import time

import pytest

from tests.faults.served import digits_repository, requests_counted, serving

DECLARED = 4 << 20  # over the 1 MiB that the HTTP protocol gathers itself: the endpoint reads this body
ROUTES = {
    "v1 predict": ("/v1/models/digits/predict", "application/json"),
    "v2 infer": ("/v2/models/digits/infer", "application/json"),
    "v1 predict/image": ("/v1/models/digits/predict/image", "multipart/form-data; boundary=x"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(digits_repository(tmp_path_factory.mktemp("leaves") / "models"), {"PIXELSERVE_LOG_LEVEL": "info"}) as server:
        yield server


def leave_mid_body(port: int, path: str, content_type: str) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {DECLARED}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        start = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' if "multipart" in content_type else b"{"
        connection.sendall(head.encode() + start + b" " * (DECLARED // 2))
        time.sleep(0.2)  # the endpoint is reading the body


@pytest.mark.parametrize("route", ROUTES)
def test_a_client_leaving_mid_body_is_a_499_at_info_without_a_traceback(server, route):
    before = requests_counted(server.url, 499)
    leave_mid_body(server.port, *ROUTES[route])
    deadline = time.monotonic() + 10
    while requests_counted(server.url, 499) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert requests_counted(server.url, 499) == before + 1
    assert requests_counted(server.url, 500) == 0
    log = server.log()
    assert "INFO service.requests" in log and f"POST {ROUTES[route][0]} -> 499" in log
    assert "Traceback" not in log and "ClientDisconnect" not in log
