"""Reloading while requests pour in (real server): no request fails, each answer comes whole from one version."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import numpy as np
import orjson
import pytest

from tests.onnx_models import reference_probabilities, write_version
from tests.service.conftest import ServerProcess

X = np.random.default_rng(7).random((2, 1, 28, 28), dtype=np.float32)
BODY = orjson.dumps({"instances": X.reshape(2, 784).tolist()})
EXPECTED = {version: reference_probabilities(X, seed=version) for version in (2, 3)}


@pytest.mark.parametrize("batching", ["true", "false"], ids=["batching", "direct"])
def test_reload_under_concurrent_requests_loses_no_request(tmp_path, batching):
    root = tmp_path / "models"
    write_version(root, "digits", 1)
    write_version(root, "digits", 2)
    server = ServerProcess(root, env={"PIXELSERVE_BATCHING": batching})
    results: list[tuple[float, int, dict | str]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post("/v1/models/digits/predict", content=BODY)
                    results.append((started, response.status_code, response.json()))
                except httpx.HTTPError as error:
                    results.append((started, 0, repr(error)))

    try:
        server.wait_ready()
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        write_version(root, "digits", 3)  # staged in a temporary directory, renamed into place
        reloaded = httpx.post(f"{server.url}/v1/models/digits/reload", timeout=30)
        after_new_version = time.monotonic()
        assert reloaded.status_code == 200 and reloaded.json()["default_version"] == 3
        time.sleep(0.5)
        shutil.rmtree(root / "digits" / "2")
        assert httpx.post(f"{server.url}/v1/models/digits/reload", timeout=30).json()["default_version"] == 3
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        stop.set()
        server.stop()

    failures = [r for r in results if r[1] != 200]
    assert not failures, failures[:5]
    versions = {answer["version"] for _, _, answer in results}
    assert versions == {2, 3}, versions
    for started, _, answer in results:
        got = np.array([[p["probabilities"][str(c)] for c in range(10)] for p in answer["predictions"]])
        np.testing.assert_allclose(got, EXPECTED[answer["version"]], atol=1e-5)
        if started > after_new_version:
            assert answer["version"] == 3
    assert len(results) > 50
