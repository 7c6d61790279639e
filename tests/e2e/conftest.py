"""Fixtures for the browser tests: a real uvicorn process serving the app, and Debian's Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.onnx_models import write_bad_onnx, write_version

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m uvicorn` serving create_app() on 127.0.0.1 over one model repository."""

    # Small enough that the oversized-file tests send little data.
    max_body_bytes = 1_000_000

    def __init__(self, repository: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env = {
            **os.environ,
            "PIXELSERVE_MODEL_REPOSITORY": str(repository),
            "PIXELSERVE_PROVIDERS": "cpu",
            "PIXELSERVE_WATCH_INTERVAL_S": "0",
            "PIXELSERVE_MAX_BODY_BYTES": str(self.max_body_bytes),
            "PIXELSERVE_LOG_LEVEL": "warning",
            **(extra_env or {}),
        }
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not answering after {timeout_s} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def start_server(repository: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    server = Server(repository, log_path, extra_env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def server(artifacts: Path) -> Iterator[Server]:
    """The app serving the shipped model repository, models/."""
    yield from start_server(ROOT / "models", artifacts / "server.log")


@pytest.fixture(scope="session")
def empty_server(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app serving an empty model repository."""
    yield from start_server(tmp_path_factory.mktemp("empty-repository"), artifacts / "server-empty.log")


API_KEY = "page-test-key"


@pytest.fixture(scope="session")
def keyed_server(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app with an API key, serving a tiny test classifier and a model that fails to load."""
    repository = tmp_path_factory.mktemp("keyed-repository")
    write_version(repository, "tiny-digits", 1)
    write_bad_onnx(repository, "broken", 1)
    yield from start_server(repository, artifacts / "server-keyed.log", {"PIXELSERVE_API_KEY": API_KEY})


# Module scope: Playwright's sync API keeps an event loop running in this thread until it stops,
# which would break asyncio.run() in the test modules collected after this one.
@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: scripts/install-system-deps.sh installs Debian's chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
