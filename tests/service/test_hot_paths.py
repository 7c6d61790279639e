"""v1 predict and v2 infer are dispatched without FastAPI's router: answers must not change."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

import service.app
from service.app import create_app
from service.http.hot_paths import HotPaths
from tests.service.conftest import make_settings

IMAGE = np.linspace(0, 1, 784, dtype=np.float32)
BINARY_HEADER = json.dumps({
    "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 784 * 4}}],
    "parameters": {"binary_data_output": True},
}).encode()

# (method, path, body, headers): successes and every kind of error on and around the hot paths.
REQUESTS = [
    ("POST", "/v1/models/digits/predict", json.dumps({"instances": [IMAGE.tolist()], "top_k": 2}).encode(), {}),
    ("POST", "/v1/models/digits/predict", json.dumps({"instances": [IMAGE.tolist()], "version": 1}).encode(), {}),
    ("POST", "/v1/models/digits/predict", b"{not json", {}),
    ("POST", "/v1/models/digits/predict", json.dumps({"instances": [[2.0] * 784]}).encode(), {}),
    ("POST", "/v1/models/nope/predict", json.dumps({"instances": [IMAGE.tolist()]}).encode(), {}),
    ("POST", "/v1/models/broken/predict", json.dumps({"instances": [IMAGE.tolist()]}).encode(), {}),
    ("POST", "/v1/models/..%2F..%2Fetc/predict", b"{}", {}),
    ("POST", "/v1/models/digits/predict", b"x" * 70_000, {}),  # over the body limit
    ("GET", "/v1/models/digits/predict", b"", {}),  # wrong method: FastAPI's 405
    ("POST", "/v1/models/digits/predict/", b"{}", {}),
    ("POST", "/v2/models/digits/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                                                "data": IMAGE.tolist()}]}).encode(), {}),
    ("POST", "/v2/models/digits/infer", BINARY_HEADER + IMAGE.tobytes(), {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}),
    ("POST", "/v2/models/digits/infer", BINARY_HEADER + IMAGE.tobytes(), {"Inference-Header-Content-Length": "99999"}),
    ("POST", "/v2/models/nope/infer", b"{}", {}),
    ("POST", "/v2/models/digits/versions/1/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                                                           "data": IMAGE.tolist()}]}).encode(), {}),
]


def answers(client: TestClient) -> list[tuple]:
    results = []
    for method, path, body, headers in REQUESTS:
        response = client.request(method, path, content=body or None,
                                  headers={"X-Request-ID": "fixed-id", "Origin": "http://example.test", **headers})
        kept = {k: v for k, v in response.headers.items() if k not in ("content-length", "date")}
        results.append((method, path, response.status_code, kept, response.content))
    return results


@pytest.fixture(scope="module")
def settings(repository):
    return make_settings(repository, max_body_bytes=65_536, cors_origins=["http://example.test"])


def test_hot_paths_answer_exactly_as_fastapi_routing_does(settings, monkeypatch):
    served = []
    serve = HotPaths.__call__

    async def counted(self, scope, *args):
        served.append(scope["route"].path)
        await serve(self, scope, *args)

    monkeypatch.setattr(HotPaths, "__call__", counted)
    with TestClient(create_app(settings)) as client:
        direct = answers(client)
        metrics = client.get("/metrics").text
    monkeypatch.setattr(service.app, "hot_routes", lambda routes: [])  # everything through FastAPI's router
    with TestClient(create_app(settings)) as client:
        routed = answers(client)
    assert sorted(set(served)) == ["/v1/models/{name}/predict", "/v2/models/{name}/infer"] and len(served) == 11
    for fast, slow in zip(direct, routed):
        assert fast == slow
    assert {status for _, _, status, _, _ in direct} >= {200, 400, 404, 405, 413, 422}
    # CORS still wraps the directly served answers.
    assert all(headers.get("access-control-allow-origin") == "http://example.test" for _, _, status, headers, _ in direct if status == 200)
    # Requests served directly are still counted under their route's template.
    assert 'endpoint="/v1/models/{name}/predict"' in metrics and 'endpoint="/v2/models/{name}/infer"' in metrics


def test_a_bug_in_a_hot_endpoint_is_a_json_500_not_a_crash(settings, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("service.api.v1.format_predictions", broken)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/v1/models/digits/predict", json={"instances": [IMAGE.tolist()]})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
