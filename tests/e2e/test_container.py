"""Build the serving image and talk to it: readiness, HEALTHCHECK, non-root user, clean stop, a real prediction.

No Docker engine runs here. scripts/container-check.sh builds the Dockerfile with buildah from a local
stand-in for python:3.11-slim (debootstrap), starts the image's own command on loopback, waits for
/v2/health/ready, runs the image's HEALTHCHECK, checks the service's uid and stops it with SIGTERM. It does
not keep the service up for other requests, so the prediction tests start the built image's command once
more the same way (`buildah run`, chroot isolation, host network, a free port).

The image built is the one docker-compose.yml's `api` builds: CPU-only ONNX Runtime (locks/serve-cpu.txt).
Layers are cached between runs; only the first build on a machine is slow (the stand-in base takes minutes).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from training.data import TEST_IMAGES, verified_file

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "container-check.sh"
IMAGE = "localhost/pixelserve:container-test"
BUILD_ARGS = {"ORT_PACKAGE": "onnxruntime", "ORT_EXTRAS": ""}
TOOLS = ("buildah", "podman", "debootstrap", "curl")  # what scripts/container-check.sh runs


pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1200)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shipped_model() -> tuple[str, int, Path]:
    """The model the prediction uses: mnist-convnet if shipped, else the first model; its highest version."""
    names = sorted(p.name for p in (ROOT / "models").iterdir() if p.is_dir()) if (ROOT / "models").is_dir() else []
    assert names, "models/ ships no model: the image would have nothing to serve"
    name = "mnist-convnet" if "mnist-convnet" in names else names[0]
    versions = [int(p.name) for p in (ROOT / "models" / name).iterdir() if p.name.isdigit() and int(p.name) > 0]
    version = max(versions)
    return name, version, ROOT / "models" / name / str(version) / "model.onnx"


def service_env(port: int) -> dict[str, str]:
    # Loopback only: chroot isolation shares the host's network.
    return {"PIXELSERVE_HOST": "127.0.0.1", "PIXELSERVE_PORT": str(port), "PIXELSERVE_PROVIDERS": "cpu"}


@pytest.fixture(scope="module")
def container_check() -> subprocess.CompletedProcess:
    """Build the image and run container-check's start / health / HEALTHCHECK / stop cycle once."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"{', '.join(missing)} missing: scripts/install-system-deps.sh (make test) installs them"
    assert os.geteuid() == 0, "the container check needs root (buildah chroot isolation, debootstrap)"
    shipped_model()
    port = free_port()
    argv = [str(CHECK), "--tag", IMAGE, "--port", str(port), "--timeout", "120"]
    for key, value in BUILD_ARGS.items():
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in service_env(port).items():
        argv += ["--env", f"{key}={value}"]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=1140)
    # Its per-phase lines with their timings (base image, build, ready, stop), for the test log.
    print(f"container-check: {time.monotonic() - started:.1f} s")
    print("\n".join(line for line in result.stdout.splitlines() if line.startswith("check: ")))
    return result


def test_container_check_builds_starts_and_stops_the_image(container_check):
    output = container_check.stdout + container_check.stderr
    assert container_check.returncode == 0, output[-6000:]
    checks = dict(line.removeprefix("check: ").split(" ", 1) for line in container_check.stdout.splitlines()
                  if line.startswith("check: "))
    assert checks["PASS"] == IMAGE
    for name in ("base", "build", "ready", "healthcheck", "user", "stop"):
        assert checks[name].startswith("ok"), (name, checks)
    assert "/v2/health/ready -> 200" in checks["ready"]
    assert checks["user"].endswith("uid(s) 10001)"), "the service must run as the image's unprivileged user"
    assert "after SIGTERM" in checks["stop"], "SIGTERM must stop the service"


def image_command() -> list[str]:
    inspect = json.loads(subprocess.run(
        ["buildah", "inspect", "--type", "image", IMAGE], capture_output=True, text=True, check=True, timeout=60
    ).stdout)
    config = inspect["Docker"]["config"]
    return (config.get("Entrypoint") or []) + (config.get("Cmd") or [])


class RunningImage:
    """The built image's own command, started in a buildah working container like container-check does."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.container = subprocess.run(
            ["buildah", "from", "--pull=never", "--isolation", "chroot", IMAGE],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout.strip()
        env_args = [arg for key, value in service_env(self.port).items() for arg in ("--env", f"{key}={value}")]
        self.log_path = log_path
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            ["buildah", "run", "--isolation", "chroot", *env_args, self.container, "--", *image_command()],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"the service exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}"
            )
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"{self.url}/v2/health/ready not 200 within {timeout_s} s:\n{self.log_path.read_text()[-3000:]}")

    def run(self, *command: str) -> subprocess.CompletedProcess:
        """A command inside the same working container (the image's user and environment)."""
        return subprocess.run(["buildah", "run", "--isolation", "chroot", self.container, "--", *command],
                              capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        finally:
            self.log.close()
            subprocess.run(["buildah", "rm", self.container], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def running_image(container_check, tmp_path_factory) -> Iterator[RunningImage]:
    if container_check.returncode != 0:
        pytest.fail("the image did not build or pass container-check; see the test above")
    image = RunningImage(tmp_path_factory.mktemp("container") / "service.log")
    try:
        image.wait_ready()
        yield image
    finally:
        image.stop()


def mnist_digits(count: int) -> np.ndarray:
    """The first `count` MNIST test digits (datasets/mnist/, sha256-checked) as [N,1,28,28] float32 in [0,1]."""
    with gzip.open(verified_file("mnist", TEST_IMAGES)) as file:
        raw = np.frombuffer(file.read(16 + count * 784)[16:], dtype=np.uint8)
    return (raw.reshape(count, 1, 28, 28) / 255.0).astype(np.float32)


def test_running_image_predicts_what_onnx_runtime_computes_here(running_image):
    name, version, model_path = shipped_model()
    digits = mnist_digits(2)
    response = httpx.post(f"{running_image.url}/v1/models/{name}/predict",
                          json={"instances": digits.reshape(len(digits), -1).tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == (name, version)

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: digits})[0]
    classes = json.loads((model_path.parent / "model.json").read_text())["classes"]
    for prediction, row in zip(body["predictions"], expected, strict=True):
        served = np.array([prediction["probabilities"][label] for label in classes])
        np.testing.assert_allclose(served, row, atol=1e-5)
        assert prediction["label"] == classes[int(np.argmax(row))]


def test_running_image_answers_the_v2_protocol(running_image):
    name, _, _ = shipped_model()
    digit = mnist_digits(1)
    request = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": digit.ravel().tolist()}]}
    response = httpx.post(f"{running_image.url}/v2/models/{name}/infer", json=request, timeout=30)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert output["shape"][0] == 1
    assert sum(output["data"]) == pytest.approx(1.0, abs=1e-4)


def test_image_serves_its_shipped_models_without_torch(running_image):
    listed = {model["name"] for model in httpx.get(f"{running_image.url}/v1/models", timeout=10).json()["models"]}
    shipped = {p.name for p in (ROOT / "models").iterdir() if p.is_dir()}
    assert shipped <= listed
    probe = running_image.run("python", "-c", "import importlib.util, os, sys; "
                              "sys.exit(importlib.util.find_spec('torch') is not None or os.getuid() == 0)")
    assert probe.returncode == 0, "the serving image must hold no torch and run as a non-root user"


def test_running_image_logs_structured_json(running_image):
    httpx.get(f"{running_image.url}/v1/models", timeout=10)
    lines = [line for line in running_image.log_path.read_text().splitlines() if line.strip()]
    assert lines, "the service logged nothing"
    for line in lines:
        record = json.loads(line)  # one JSON object per line, nothing else (no stray library output)
        assert {"time", "level", "message"} <= set(record), line
