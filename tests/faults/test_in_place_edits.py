"""Row 11 of issue 19: a serving version whose files are edited in place (truncated, removed) keeps serving
its last good load, and says so: in its status, the log and the load-failure metric."""

from __future__ import annotations

import re
import shutil

import httpx
import pytest

from tests.faults.served import requests_counted, serving
from tests.onnx_models import write_version

PIXELS = {"instances": [[0.5] * 784]}


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "models"
    write_version(root, "digits", 1)
    with serving(root) as server:
        yield server, root / "digits" / "1"


def version_status(url: str) -> dict:
    return httpx.get(f"{url}/v1/models/digits", timeout=10).json()["versions"][0]


def load_failures(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r'^pixelserve_model_load_failures_total\{model="digits",version="1"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_a_truncated_model_keeps_serving_its_last_good_load(served):
    server, version_dir = served
    good = (version_dir / "model.onnx").read_bytes()
    with open(version_dir / "model.onnx", "r+b") as onnx_file:
        onnx_file.truncate(len(good) // 2)
    reload = httpx.post(f"{server.url}/v1/models/digits/reload", timeout=10)
    assert reload.status_code == 200 and reload.json()["default_version"] == 1
    for _ in range(20):
        assert httpx.post(f"{server.url}/v1/models/digits/predict", json=PIXELS, timeout=10).status_code == 200
    status = version_status(server.url)
    assert status["state"] == "READY" and "last good load" in status["reason"] and "sha256" in status["reason"]
    assert load_failures(server.url) == 1
    assert "changed on disk and cannot be loaded; still serving its last good load" in server.log()
    # A second scan of the same broken files does not try (nor count) again; fixed files load and clear the reason.
    httpx.post(f"{server.url}/v1/models/digits/reload", timeout=10)
    assert load_failures(server.url) == 1
    (version_dir / "model.onnx").write_bytes(good)
    httpx.post(f"{server.url}/v1/models/digits/reload", timeout=10)
    assert version_status(server.url)["reason"] is None
    assert requests_counted(server.url, 503) == 0 and requests_counted(server.url, 500) == 0


def test_a_model_file_removed_in_place_keeps_serving(served):
    server, version_dir = served
    saved = version_dir.parent / "saved.onnx"
    shutil.move(version_dir / "model.onnx", saved)
    httpx.post(f"{server.url}/v1/models/digits/reload", timeout=10)
    assert httpx.post(f"{server.url}/v1/models/digits/predict", json=PIXELS, timeout=10).status_code == 200
    assert "waiting for model.json and model.onnx" in version_status(server.url)["reason"]
    shutil.move(saved, version_dir / "model.onnx")
    httpx.post(f"{server.url}/v1/models/digits/reload", timeout=10)
    assert version_status(server.url) | {"providers": []} == {"version": 1, "state": "READY", "reason": None, "providers": []}
