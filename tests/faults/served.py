"""What the fault tests of rows 4 and 6-11 share: a real `python -m service` over a small repository, raw
requests on loopback, and the server's own counters."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.onnx_models import write_version
from tests.service.conftest import ServerProcess


def digits_repository(root: Path) -> Path:
    write_version(root, "digits", 1)
    return root


@contextmanager
def serving(root: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Iterator[ServerProcess]:
    server = ServerProcess(root, env={"PIXELSERVE_LOG_FORMAT": "text", **(env or {})}, args=args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send `data` on a new connection and read until the server closes it or answers once whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        return read_answer(connection)


def read_answer(connection: socket.socket) -> bytes:
    """One HTTP answer with a content-length, or whatever comes before the server closes."""
    reply = bytearray()
    while True:
        head, _, body = bytes(reply).partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if _ and length and len(body) >= int(length[1]):
            return bytes(reply)
        try:
            chunk = connection.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return bytes(reply)
        if not chunk:
            return bytes(reply)
        reply += chunk


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def requests_counted(url: str, status: int) -> float:
    """pixelserve_requests_total for one status, all endpoints together, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = re.compile(rf'^pixelserve_requests_total\{{.*status="{status}".*\}} (\S+)$', re.M)  # endpoints hold braces
    return sum(float(value) for value in pattern.findall(text))
