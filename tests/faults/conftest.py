"""Fixtures for the fault suite: each fault is reproduced against a real `python -m service` on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

from tests.onnx_models import write_version
from tests.service.conftest import ServerProcess

# One picture of zeros for the test model "digits": what a client asks when it only needs an answer.
PREDICT_BODY = orjson.dumps({"instances": [[0.0] * 784]})


@contextmanager
def running_server(root: Path, *, workers: int = 1, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Iterator[ServerProcess]:
    """`python -m service` over a repository holding the test model "digits", stopped on leaving."""
    if not (root / "digits").exists():
        write_version(root, "digits", 1)
    server = ServerProcess(root, env={"PIXELSERVE_WORKERS": str(workers), "PIXELSERVE_LOG_FORMAT": "text"} | (env or {}), args=args)
    try:
        server.wait_ready()
        if workers > 1:
            wait_for(lambda: len(worker_pids(server.process.pid)) == workers and listening_sockets(server.port) == workers)
        yield server
    finally:
        server.stop()


def wait_for(condition: Callable[[], object], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still not true after {timeout_s} s: {condition}")
        time.sleep(0.05)


def worker_pids(parent: int) -> set[int]:
    """The supervisor's worker processes (multiprocessing's resource tracker is its child too)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):  # the process ended meanwhile
            continue
        if int(fields[1]) == parent and b"spawn_main" in command and fields[0] != "Z":
            pids.add(int(stat.parent.name))
    return pids


def listening_sockets(port: int) -> int:
    """LISTEN sockets on the port in the kernel's table: each worker opens its own once it serves."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[3] == "0A" and int(row.split()[1].rsplit(":", 1)[1], 16) == port)


def predicts(url: str, timeout_s: float = 5.0) -> bool:
    """A prediction on a connection of its own answers 200 with ten probabilities."""
    response = httpx.post(f"{url}/v1/models/digits/predict", content=PREDICT_BODY, timeout=timeout_s)
    return response.status_code == 200 and len(response.json()["predictions"][0]["probabilities"]) == 10


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=timeout_s).status_code == 200
    except httpx.TransportError:
        return False


def read_reply(connection: socket.socket, timeout_s: float = 10.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection, and whether it did within `timeout_s`."""
    connection.settimeout(timeout_s)
    reply = bytearray()
    try:
        while chunk := connection.recv(65536):
            reply += chunk
    except ConnectionResetError:  # closed while the client was still sending: the answer came before it
        return bytes(reply), True
    except TimeoutError:
        return bytes(reply), False
    return bytes(reply), True


def status_of(reply: bytes) -> int | None:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None


def json_body(reply: bytes) -> dict:
    return orjson.loads(reply.partition(b"\r\n\r\n")[2])
