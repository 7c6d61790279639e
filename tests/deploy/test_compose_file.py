"""docker-compose.yml and deploy/compose/gpu.yml: valid Compose files that wire what docs/deployment.md promises.

Validity is checked by Debian's `docker-compose config` (it validates against the Compose
specification schema it ships); the rest are structural checks on the parsed YAML.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.config import Settings

from tests.deploy.dockerfile_parsing import ROOT, dockerfile_stages

COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "deploy" / "compose" / "gpu.yml"
# ${NAME:-default} or ${NAME-default}
INTERPOLATION = re.compile(r"\$\{(\w+):?-([^}]*)\}")
# Fixed by the image (ENV) rather than by compose.
SET_BY_IMAGE = {"host", "port"}


def load(path) -> dict:
    return yaml.safe_load(path.read_text())


def with_defaults(value: object) -> object:
    """The value compose uses when no variable is set: ${NAME:-default} -> default."""
    return INTERPOLATION.sub(lambda m: m.group(2), value) if isinstance(value, str) else value


def compose_config(*files) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIXELSERVE_", "COMPOSE_"))}
    argv = ["docker-compose", "--project-directory", str(ROOT)]
    for path in files:
        argv += ["-f", str(path)]
    return subprocess.run([*argv, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_docker_compose_is_installed():
    """Debian's docker-compose validates against the Compose specification; `make test` installs it."""
    assert shutil.which("docker-compose"), "docker-compose is missing: scripts/install-system-deps.sh installs it"


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, GPU_OVERRIDE]], ids=["cpu", "gpu-override"])
def test_compose_files_are_valid(files):
    result = compose_config(*files)
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)
    assert {"api", "train"} <= set(merged["services"])


def test_gpu_override_reserves_an_nvidia_gpu_for_the_api():
    result = compose_config(COMPOSE, GPU_OVERRIDE)
    assert result.returncode == 0, result.stderr
    api = yaml.safe_load(result.stdout)["services"]["api"]
    [device] = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and int(device["count"]) >= 1
    assert api["build"]["args"] == {"ORT_PACKAGE": "onnxruntime-gpu", "ORT_EXTRAS": "cuda,cudnn"}
    assert with_defaults(api["environment"]["PIXELSERVE_PROVIDERS"]) == "cuda,cpu"
    # The override replaces the image tag: a CPU and a GPU build never share one.
    assert api["image"] != load(COMPOSE)["services"]["api"]["image"]


def test_compose_rejects_a_broken_file(tmp_path):
    """The validator really checks: an unknown key in a service fails."""
    broken = load(COMPOSE)
    broken["services"]["api"]["restart_policy"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = compose_config(path)
    assert result.returncode != 0
    assert "restart_policy" in result.stderr


def test_api_service_serves_the_image_with_port_healthcheck_restart_and_models_volume():
    api = load(COMPOSE)["services"]["api"]
    assert api["build"]["target"] in dockerfile_stages()
    assert any(str(port).endswith(":8000") for port in api["ports"])
    assert "/v2/health/ready" in " ".join(api["healthcheck"]["test"])
    assert api["restart"] in ("always", "unless-stopped")
    assert "models:/models" in api["volumes"]
    assert api["environment"]["PIXELSERVE_MODEL_REPOSITORY"] == "/models"


def test_train_profile_writes_into_the_volume_the_api_serves():
    compose = load(COMPOSE)
    train = compose["services"]["train"]
    assert train["profiles"] == ["train"]
    assert train["build"]["target"] == "train" and "train" in dockerfile_stages()
    # The same named volume: at /models for the api, at the CLI's default models/ (under /app) for training.
    assert "models:/models" in compose["services"]["api"]["volumes"]
    assert "models:/app/models" in train["volumes"]
    assert [args for key, args in dockerfile_stages()["train"] if key == "WORKDIR"] == ["/app"]
    assert "models" in compose["volumes"]


def test_environment_shows_every_setting_with_its_real_default(monkeypatch):
    environment = load(COMPOSE)["services"]["api"]["environment"]
    fields = Settings.model_fields
    shown = {key.removeprefix("PIXELSERVE_").lower() for key in environment}
    assert shown <= set(fields), f"not settings: {shown - set(fields)}"
    assert set(fields) - SET_BY_IMAGE <= shown, f"settings not shown: {set(fields) - SET_BY_IMAGE - shown}"

    for key in list(os.environ):
        if key.startswith("PIXELSERVE_"):
            monkeypatch.delenv(key)
    defaults = Settings(_env_file=None)
    for key, value in environment.items():
        if value is not None and key != "PIXELSERVE_MODEL_REPOSITORY":
            monkeypatch.setenv(key, str(with_defaults(value)))
    shown_defaults = Settings(_env_file=None)
    for name in set(fields) - {"model_repository", "providers"}:
        assert getattr(shown_defaults, name) == getattr(defaults, name), name
    # The api image has the CPU-only ONNX Runtime: it asks for the CPU only, the GPU override for CUDA first.
    assert shown_defaults.providers == ["CPUExecutionProvider"]


def test_cpu_limit_fits_the_onnx_runtime_threads():
    api = load(COMPOSE)["services"]["api"]
    cpus = float(with_defaults(api["deploy"]["resources"]["limits"]["cpus"]))
    intra = int(with_defaults(api["environment"]["PIXELSERVE_ORT_INTRA_OP_THREADS"]))
    inter = int(with_defaults(api["environment"]["PIXELSERVE_ORT_INTER_OP_THREADS"]))
    assert intra >= 1 and inter >= 1, "0 lets ONNX Runtime take every core of the host, ignoring the limit"
    assert intra <= cpus
    assert float(api["deploy"]["resources"]["reservations"]["cpus"]) <= cpus


def test_training_cli_defaults_land_in_the_volumes():
    """In the train image the package sits at /app/training: its defaults must resolve to /app/models and /app/data."""
    import training
    from training.__main__ import build_parser
    from training.data import DOWNLOAD_ROOT

    args = build_parser().parse_args(["train", "--dataset", "mnist"])
    assert args.models_dir == Path("models"), "relative to the working directory /app"
    assert DOWNLOAD_ROOT == Path(training.__file__).resolve().parents[1] / "data"
    train = load(COMPOSE)["services"]["train"]
    assert {"models:/app/models", "data:/app/data"} <= set(train["volumes"])
