"""Against a real `python -m service` (uvicorn) process on loopback: HTTP, logs, the CLI client, shutdown."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import orjson
from PIL import Image

from service.imaging import to_model_input
from tests.onnx_models import reference_probabilities, write_version
from tests.service.conftest import PROJECT_ROOT, ServerProcess, predict_across_sigterm


def test_serves_v1_and_health_over_http(server):
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert {m["name"]: m["state"] for m in models} == {"broken": "UNAVAILABLE", "digits": "READY", "fashion": "READY"}
    x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    response = httpx.post(f"{server.url}/v1/models/digits/predict", content=orjson.dumps({"instances": x.reshape(4, 784).tolist()}))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert "server" not in response.headers  # no advertisement of the implementation
    answer = response.json()
    got = np.array([[p["probabilities"][str(c)] for c in range(10)] for p in answer["predictions"]])
    np.testing.assert_allclose(got, reference_probabilities(x, seed=2), atol=1e-5)
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/docs").status_code == 200
    assert "pixelserve_requests_total" in httpx.get(f"{server.url}/metrics").text


def test_logs_are_json_lines_with_the_request_id(server):
    response = httpx.post(f"{server.url}/v1/models/nope/predict", json={"instances": [[0] * 784]}, headers={"X-Request-ID": "log-check-1"})
    assert response.status_code == 404 and response.headers["x-request-id"] == "log-check-1"
    time.sleep(0.2)
    lines = [orjson.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    request_lines = [line for line in lines if line.get("request_id") == "log-check-1"]
    assert request_lines and request_lines[0]["status"] == 404 and request_lines[0]["path"] == "/v1/models/nope/predict"
    assert any(line["logger"] == "service.inference.registry" and "cannot serve broken" in line["message"] for line in lines)


def _picture(path) -> bytes:
    picture = np.zeros((96, 96), dtype=np.uint8)
    picture[10:86, 40:52] = 255
    Image.fromarray(picture).save(path)
    return path.read_bytes()


def test_cli_client_prints_the_top_classes(server, tmp_path):
    data = _picture(tmp_path / "one.png")
    result = subprocess.run(
        [sys.executable, "-m", "service", "predict", "--model", "digits", str(tmp_path / "one.png"), "--url", server.url, "--top-k", "2"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    expected = reference_probabilities(to_model_input(data, "mnist-digit", max_pixels=10**7)[None], seed=2)[0]
    best = np.argsort(-expected)[:2]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'one.png'}: {best[0]}") and "digits version 2" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == [str(b) for b in best]
    assert float(lines[1].split()[1]) == round(float(expected[best[0]]), 4)


def test_cli_client_reports_server_errors_and_unreachable_servers(server, tmp_path):
    _picture(tmp_path / "one.png")
    refused = subprocess.run(
        [sys.executable, "-m", "service", "predict", "--model", "nope", str(tmp_path / "one.png"), "--url", server.url],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 1 and "model_not_found" in refused.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    unreachable = subprocess.run(
        [sys.executable, "-m", "service", "predict", "--model", "digits", str(tmp_path / "one.png"), "--url", f"http://127.0.0.1:{closed_port}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


def test_sigterm_finishes_the_request_in_flight(tmp_path):
    root = tmp_path / "models"
    write_version(root, "digits", 1)
    process = ServerProcess(root)
    try:
        process.wait_ready()
        reply = predict_across_sigterm(process.port, process.process)
        status_line, _, rest = reply.partition(b"\r\n")
        assert b" 200 " in status_line, reply[:500]
        answer = orjson.loads(rest.partition(b"\r\n\r\n")[2])
        assert answer["model"] == "digits" and len(answer["predictions"]) == 1
        # uvicorn re-raises the signal once shut down, so the exit status says "terminated by SIGTERM".
        assert process.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in process.log()
    finally:
        process.stop()
