"""locks/: one hashed lock per install target, in step with pyproject.toml, used by every install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.dockerfile_parsing import ROOT, dockerfile_stages, instruction

LOCKS = ROOT / "locks"
HASHED = ("serve", "serve-gpu", "serve-cpu", "train", "dev")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(name: str) -> dict[str, tuple[str, list[str]]]:
    """Package -> (version, its sha256 hashes), from a lock file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (LOCKS / f"{name}.txt").read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            entries[current] = (match.group(3), [])
        elif current and (hashed := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            entries[current][1].append(hashed.group(1))
    return entries


def requirements(*extras: str) -> list[Requirement]:
    listed = PROJECT["dependencies"] + [r for extra in extras for r in PROJECT["optional-dependencies"][extra]]
    return [Requirement(r) for r in listed]


@pytest.mark.parametrize("name", HASHED)
def test_every_locked_package_is_pinned_with_hashes(name):
    text = (LOCKS / f"{name}.txt").read_text()
    assert "make lock" in text.splitlines()[1], "written by make lock"
    entries = pins(name)
    assert entries and all(hashes for _, hashes in entries.values()), [p for p, (_, h) in entries.items() if not h]
    assert "torch" not in entries, "torch is installed on its own, from locks/torch-cpu.txt"


@pytest.mark.parametrize("name, extras, ort", [
    ("serve", ["serve"], "onnxruntime-gpu"),
    ("serve-gpu", ["serve", "gpu"], "onnxruntime-gpu"),
    ("serve-cpu", ["serve"], "onnxruntime"),
    ("train", ["train"], "onnxruntime"),
    ("dev", ["serve", "train", "dev", "bench"], "onnxruntime-gpu"),
])
def test_locks_satisfy_the_ranges_in_pyproject(name, extras, ort):
    entries = pins(name)
    for requirement in requirements(*extras):
        package = canonicalize_name(requirement.name)
        if package == "torch":
            continue
        if package in ("onnxruntime", "onnxruntime-gpu"):
            package = ort
        assert package in entries, f"{name}.txt lacks {requirement}"
        assert requirement.specifier.contains(entries[package][0], prereleases=True), (requirement, entries[package])


def test_serving_locks_hold_no_torch_and_the_right_onnx_runtime():
    for name in ("serve", "serve-gpu", "serve-cpu"):
        entries = pins(name)
        assert not {"torch", "onnxscript", "matplotlib"} & set(entries), name
    assert "onnxruntime" in pins("serve-cpu") and "onnxruntime-gpu" not in pins("serve-cpu")
    assert "onnxruntime-gpu" in pins("serve") and not any(p.startswith("nvidia-") for p in pins("serve"))
    assert any(p.startswith("nvidia-cudnn") for p in pins("serve-gpu")), "onnxruntime-gpu[cuda,cudnn] brings cuDNN"


def test_torch_is_pinned_to_the_cpu_build_of_the_projects_version():
    [pinned] = [r for r in requirements("train") if r.name == "torch"]
    lines = [line for line in (LOCKS / "torch-cpu.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == [f"torch=={str(pinned.specifier).removeprefix('==')}+cpu"]
    # Its own dependencies (the CPU wheel's, not PyPI's CUDA build's) are in the hashed locks.
    for name in ("train", "dev"):
        assert {"sympy", "networkx", "filelock", "fsspec"} <= set(pins(name))
        assert not any(p.startswith("nvidia-") or p == "triton" for p in pins(name)), name


def test_every_install_uses_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r locks/serve.txt" in makefile and "--require-hashes -r locks/dev.txt" in makefile
    assert "-r locks/torch-cpu.txt" in makefile
    runs = " ".join(run for stage in dockerfile_stages().values() for run in instruction(stage, "RUN"))
    assert runs.count("--require-hashes") == 2, "the serving and the training image install from hashed locks"
    assert "-r locks/torch-cpu.txt" in runs
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make lock-check") < ci.index("make test"), "CI fails on a stale lock before it tests"


def test_dockerfile_serving_variants_each_have_a_lock():
    [run] = [r for r in instruction(dockerfile_stages()["serve-builder"], "RUN") if "--require-hashes" in r]
    for lock in re.findall(r"lock=([\w-]+)", run):
        assert (LOCKS / f"{lock}.txt").is_file(), lock


@pytest.mark.slow
def test_lock_check_sees_a_pyproject_change_that_make_lock_did_not_follow(tmp_path):
    """What `make lock-check` does (compile into a copy of locks/, diff), on a checkout whose pyproject.toml
    gained a dependency: the fresh locks differ. Unchanged, they are the same. Needs PyPI, as make lock does."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is in the dev extra"
    for path in ("pyproject.toml", "scripts/lock.sh", "deploy/pyproject_requirements.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tmp_path / path)
    env = {**os.environ, "UV": uv, "PYTHON": sys.executable}

    def relock() -> str:
        fresh = tmp_path / "fresh"
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.copytree(LOCKS, fresh)
        result = subprocess.run(["scripts/lock.sh", str(fresh)], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return subprocess.run(["diff", "-ru", str(LOCKS), str(fresh)], capture_output=True, text=True).stdout

    assert relock() == "", "locks/ is stale: run make lock"
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"orjson>=3.10",', '"orjson>=3.10",\n    "tomli-w>=1.0",'))
    assert "+tomli-w==" in relock()
