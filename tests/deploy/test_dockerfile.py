"""The Dockerfile's shape, its HEALTHCHECK command, and the requirements helper that make lock uses.

Building and running the image is tests/e2e/test_container.py; these checks need no container tools.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.deploy.dockerfile_parsing import ROOT, dockerfile_stages, exec_form, instruction

REQUIREMENTS_SCRIPT = ROOT / "deploy" / "pyproject_requirements.py"


def test_serving_image_is_the_default_target():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "serve", "the last stage is what a plain `docker build .` produces"


def test_serving_stage_runs_the_service_unprivileged_with_exec_form():
    serve = dockerfile_stages()["serve"]
    assert instruction(serve, "FROM") == ["python-base AS serve"]
    [user] = instruction(serve, "USER")
    assert user.split(":")[0] not in ("root", "0")
    assert instruction(serve, "EXPOSE") == ["8000"]
    assert instruction(serve, "STOPSIGNAL") == ["SIGTERM"]
    [cmd] = instruction(serve, "CMD")
    assert exec_form(cmd) == ["python", "-m", "service"]
    env = " ".join(instruction(serve, "ENV"))
    assert "PIXELSERVE_MODEL_REPOSITORY=/models" in env
    assert any(args.split()[-1] == "/models" for args in instruction(serve, "COPY"))


def test_base_is_python_slim_and_user_has_uid_10001():
    stages = dockerfile_stages()
    assert instruction(stages["python-base"], "FROM") == ["python:3.11-slim AS python-base"]
    [useradd] = instruction(stages["python-base"], "RUN")
    assert "--uid 10001" in useradd


def test_serving_stage_gets_no_torch():
    stages = dockerfile_stages()
    serve_build = " ".join(arguments for _, arguments in stages["serve-builder"] + stages["serve"])
    assert "torch" not in serve_build and "training" not in serve_build
    for variant in ([], ["--ort-package", "onnxruntime", "--ort-extras", ""], ["--ort-extras", "cuda,cudnn"]):
        lines = requirements("serve", *variant)
        assert not [line for line in lines if line.startswith("torch")], lines


def test_training_stage_runs_python_m_training():
    train = dockerfile_stages()["train"]
    [entrypoint] = instruction(train, "ENTRYPOINT")
    assert exec_form(entrypoint) == ["python", "-m", "training"]
    [user] = instruction(train, "USER")
    assert user.split(":")[0] not in ("root", "0")
    builder = dockerfile_stages()["train-builder"]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in instruction(builder, "ARG")
    assert any("--index-url" in run for run in instruction(builder, "RUN"))


def test_gpu_build_argument_defaults_to_cuda_and_cudnn():
    args = instruction(dockerfile_stages()["serve-builder"], "ARG")
    assert "ORT_PACKAGE=onnxruntime-gpu" in args
    assert "ORT_EXTRAS=cuda,cudnn" in args
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in extras["gpu"])


def test_dockerignore_keeps_the_context_to_what_the_images_copy():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line[0] == "#"]
    assert patterns[0] == "**"
    copied = set()
    for stage in dockerfile_stages().values():
        for arguments in instruction(stage, "COPY"):
            if "--from=" in arguments:
                continue
            words = [w for w in arguments.split() if not w.startswith("--")]
            copied.update(words[:-1])
    for source in copied:
        parents = [f"!{parent}/**" for parent in Path(source).parents if parent != Path(".")]
        assert f"!{source}" in patterns or set(parents) & set(patterns), f"{source} is copied but excluded from the build context"
        assert (ROOT / source).exists(), f"COPY source {source} is missing"


# ---------------------------------------------------------------- the HEALTHCHECK command


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        code = self.status if self.path == "/v2/health/ready" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def health_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def healthcheck_argv() -> list[str]:
    [healthcheck] = instruction(dockerfile_stages()["serve"], "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    return exec_form(command)


def run_healthcheck(port: int) -> int:
    argv = healthcheck_argv()
    assert argv[0] == "python"
    env = {**os.environ, "PIXELSERVE_PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthcheck_command_follows_the_ready_endpoint(health_server, monkeypatch, status, healthy):
    monkeypatch.setattr(_Health, "status", status)
    assert (run_healthcheck(health_server.server_address[1]) == 0) is healthy


def test_healthcheck_command_fails_when_nothing_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run_healthcheck(port) != 0


def test_compose_uses_the_same_healthcheck_as_the_image():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["api"]["healthcheck"]["test"] == ["CMD", *healthcheck_argv()]


# ---------------------------------------------------------------- deploy/pyproject_requirements.py


def requirements(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), str(ROOT / "pyproject.toml"), *args],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_requirements_list_the_extra_and_the_core_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requirements("serve") == project["dependencies"] + project["optional-dependencies"]["serve"]


def test_requirements_swap_onnxruntime_keeping_its_version():
    [gpu] = [r for r in requirements("serve") if r.startswith("onnxruntime")]
    specifier = gpu.removeprefix("onnxruntime-gpu")
    assert [r for r in requirements("serve", "--ort-extras", "cuda,cudnn") if r.startswith("onnxruntime")] == [
        f"onnxruntime-gpu[cuda,cudnn]{specifier}"
    ]
    assert [r for r in requirements("serve", "--ort-package", "onnxruntime", "--ort-extras", "") if r.startswith("onnxruntime")] == [
        f"onnxruntime{specifier}"
    ]


def test_requirements_reject_unknown_extras_and_packages():
    for args in (["nonsense"], ["serve", "--ort-package", "tensorflow"]):
        result = subprocess.run(
            [sys.executable, str(REQUIREMENTS_SCRIPT), str(ROOT / "pyproject.toml"), *args],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode != 0
        assert shlex.quote(args[-1]).strip("'") in result.stderr
