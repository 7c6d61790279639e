"""Fixtures for the service tests: a model repository of tiny ONNX models, apps, a real server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.onnx_models import write_bad_onnx, write_sha_mismatch, write_version, write_wrong_input_shape

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_INSTANCES = 8


def build_repository(root: Path) -> Path:
    """digits v1 and v2 (v2 default), fashion v1, a digits v3 that is not ONNX, and a model with only broken versions."""
    write_version(root, "digits", 1)
    write_version(root, "digits", 2)
    write_bad_onnx(root, "digits", 3)
    write_version(root, "fashion", 1, task="fashion")
    write_sha_mismatch(root, "broken", 1)
    write_wrong_input_shape(root, "broken", 2)
    return root


def make_settings(root: Path, **changes) -> Settings:
    values = dict(
        model_repository=root, providers=["cpu"], watch_interval_s=0, max_instances=MAX_INSTANCES,
        log_level="info", log_format="text",
    )
    return Settings(**(values | changes))


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module", params=[True, False], ids=["batching", "direct"])
def client(request, repository) -> Iterator[TestClient]:
    """The whole app over the shared repository, with batching on and off."""
    with TestClient(create_app(make_settings(repository, batching=request.param))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def shipped_client() -> Iterator[TestClient]:
    """The app on the shipped models (models/), for the photo goals measured on them."""
    from service.config import DEFAULT_REPOSITORY

    if not any(DEFAULT_REPOSITORY.glob("*-convnet/*/model.onnx")):
        pytest.fail("models/ holds no shipped convnet: the photo goals are measured on them")
    with TestClient(create_app(Settings(providers=["cpu"], watch_interval_s=0, log_level="warning"))) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m service` on a free loopback port, in its own process."""

    def __init__(self, root: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PIXELSERVE_")}
        # One worker process unless a test asks for more (`--workers`): the default is one per CPU.
        environment |= {"PIXELSERVE_WATCH_INTERVAL_S": "0", "PIXELSERVE_PROVIDERS": "cpu", "PIXELSERVE_WORKERS": "1"} | (env or {})
        self.log_path = root.parent / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port), "--model-repository", str(root), *args],
            cwd=PROJECT_ROOT, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def predict_across_sigterm(port: int, process: subprocess.Popen) -> bytes:
    """Send half of a predict request, SIGTERM the server, check that it waits, send the rest: the raw reply."""
    body = b'{"instances": [[' + b", ".join([b"0.25"] * 784) + b"]]}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        head = f"POST /v1/models/digits/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        connection.sendall(head.encode() + body[:100])
        time.sleep(0.3)  # the request is now in flight, its body half sent
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert process.poll() is None, "the server quit with a request in flight"
        connection.sendall(body[100:])
        reply = bytearray()
        while chunk := connection.recv(65536):
            reply += chunk
    return bytes(reply)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A real uvicorn server over its own copy of the test repository."""
    root = build_repository(tmp_path_factory.mktemp("server") / "models")
    process = ServerProcess(root)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def serve_on_loopback(app, protocol, check, **config) -> None:
    """Serve `app` in this process with uvicorn and the given HTTP protocol class on a free loopback port,
    and call check(port) from a thread; the server then shuts down gracefully."""

    async def main() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, http=protocol, **{"log_level": "warning", **config}))
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            await asyncio.to_thread(check, listener.getsockname()[1])
        finally:
            server.should_exit = True
            await serving

    asyncio.run(main())
