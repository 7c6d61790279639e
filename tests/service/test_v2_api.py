"""The Open Inference Protocol (v2) endpoints through the whole app, batching on and off.

Probabilities are compared with the same model.onnx run directly in ONNX Runtime.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from fastapi.testclient import TestClient

from service import __version__
from service.app import create_app
from tests.service.conftest import MAX_INSTANCES, make_settings

# The shared repository (tests/service/conftest.py): digits 1 and 2 (2 the default; 3 is not ONNX),
# fashion 1, and "broken" whose versions all fail to load.


def run_onnx(repository: Path, name: str, version: int, images: np.ndarray) -> np.ndarray:
    """What the model file answers when run directly in ONNX Runtime."""
    session = ort.InferenceSession(str(repository / name / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"input": images.reshape(len(images), 1, 28, 28).astype(np.float32)})[0]


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 784), dtype=np.float32)


def json_request(x: np.ndarray, shape: list[int], **extra) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": x.ravel()}], **extra}, option=orjson.OPT_SERIALIZE_NUMPY)


def binary_request(x: np.ndarray, shape: list[int], datatype: str = "FP32", **extra) -> tuple[bytes, dict]:
    raw = x.tobytes()
    tensor = {"name": "input", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}
    header = orjson.dumps({"inputs": [tensor], **extra})
    return header + raw, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


def read_response(response) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON document and every output as a numpy array, whether sent as JSON or binary."""
    assert response.status_code == 200, response.text
    length = response.headers.get("Inference-Header-Content-Length")
    header = response.content if length is None else response.content[: int(length)]
    document, offset, arrays = orjson.loads(header), len(header), {}
    for output in document["outputs"]:
        assert output["datatype"] == "FP32"
        if "data" in output:
            values = np.asarray(output["data"], dtype=np.float32)
        else:
            size = output["parameters"]["binary_data_size"]
            values = np.frombuffer(response.content[offset : offset + size], dtype="<f4")
            offset += size
        arrays[output["name"]] = values.reshape(output["shape"])
    assert offset == len(response.content)
    return document, arrays


# --- metadata and readiness -----------------------------------------------------------------------


def test_server_metadata_names_the_binary_extension(client):
    response = client.get("/v2")
    assert response.status_code == 200
    assert response.json() == {"name": "pixelserve", "version": __version__, "extensions": ["binary_tensor_data"]}


def test_model_metadata_lists_ready_versions_tensors_and_providers(client):
    metadata = client.get("/v2/models/digits").json()
    assert metadata["name"] == "digits"
    assert metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert metadata["providers"] == ["CPUExecutionProvider"]
    assert metadata["classes"] == [str(d) for d in range(10)]
    one = client.get("/v2/models/fashion/versions/1").json()
    assert one["versions"] == ["1"]
    assert one["classes"][9] == "Ankle boot"


@pytest.mark.parametrize("path", ["/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"])
def test_ready_models_answer_200(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.json()["ready"] is True


NOT_SERVABLE = {
    "unknown model": ("/v2/models/nope{}", 404),
    "unknown version": ("/v2/models/digits/versions/9{}", 404),
    "version not a number": ("/v2/models/digits/versions/latest{}", 404),
    "version zero": ("/v2/models/digits/versions/0{}", 404),
    "name escaping the repository": ("/v2/models/%2e%2e{}", 404),
    # Versions that failed to load: 400, which clients do not retry (Triton answers so for a model not ready).
    "broken model": ("/v2/models/broken{}", 400),
    "broken version": ("/v2/models/digits/versions/3{}", 400),
}


@pytest.mark.parametrize("suffix", ["", "/ready", "/infer"])
@pytest.mark.parametrize("path, status", NOT_SERVABLE.values(), ids=NOT_SERVABLE.keys())
def test_models_that_cannot_serve_answer_a_v2_error(client, path, status, suffix):
    url = path.format(suffix)
    if suffix == "/infer":
        response = client.post(url, content=json_request(images(1), [1, 784]))
    else:
        response = client.get(url)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str) and response.json()["error"]


# --- inference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [[3, 784], [3, 1, 28, 28]], ids=["flat", "nchw"])
def test_json_inference_matches_onnx_runtime(client, repository, shape):
    x = images(3)
    response = client.post("/v2/models/digits/infer", content=json_request(x, shape, id="req-1"))
    assert response.headers["content-type"] == "application/json"
    document, outputs = read_response(response)
    assert (document["model_name"], document["model_version"], document["id"]) == ("digits", "2", "req-1")
    np.testing.assert_allclose(outputs["probabilities"], run_onnx(repository, "digits", 2, x), rtol=1e-5, atol=1e-6)


def test_nested_json_data_is_accepted(client, repository):
    x = images(2)
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": x.reshape(2, 1, 28, 28).tolist()}]})
    _, outputs = read_response(client.post("/v2/models/digits/infer", content=body))
    np.testing.assert_allclose(outputs["probabilities"], run_onnx(repository, "digits", 2, x), rtol=1e-5, atol=1e-6)


def test_a_named_version_answers_with_that_version(client, repository):
    x = images(2, seed=1)
    document, outputs = read_response(client.post("/v2/models/digits/versions/1/infer", content=json_request(x, [2, 784])))
    assert document["model_version"] == "1"
    expected = run_onnx(repository, "digits", 1, x)
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, run_onnx(repository, "digits", 2, x))  # the versions really differ


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("shape", [[4, 784], [4, 1, 28, 28]], ids=["flat", "nchw"])
def test_binary_inference_matches_onnx_runtime(client, repository, shape, binary_output):
    x = images(4, seed=2)
    body, headers = binary_request(x, shape, outputs=[{"name": "probabilities", "parameters": {"binary_data": binary_output}}])
    response = client.post("/v2/models/fashion/infer", content=body, headers=headers)
    assert ("Inference-Header-Content-Length" in response.headers) is binary_output
    assert response.headers["content-type"] == ("application/octet-stream" if binary_output else "application/json")
    document, outputs = read_response(response)
    assert document["outputs"][0]["shape"] == [4, 10]
    np.testing.assert_allclose(outputs["probabilities"], run_onnx(repository, "fashion", 1, x), rtol=1e-5, atol=1e-6)


def test_binary_data_output_parameter_sends_every_output_in_binary(client, repository):
    x = images(1, seed=3)
    response = client.post("/v2/models/digits/infer", content=json_request(x, [1, 784], parameters={"binary_data_output": True}))
    assert "Inference-Header-Content-Length" in response.headers
    _, outputs = read_response(response)
    np.testing.assert_allclose(outputs["probabilities"], run_onnx(repository, "digits", 2, x), rtol=1e-5, atol=1e-6)


def test_fp64_and_uint8_pixels_give_the_same_answer_as_fp32(client, repository):
    levels = np.random.default_rng(4).integers(0, 256, size=(2, 784), dtype=np.uint8)
    expected = run_onnx(repository, "digits", 2, levels.astype(np.float32) / 255)
    for body, headers in [
        binary_request(levels, [2, 784], "UINT8"),
        binary_request(levels.astype(np.float64) / 255, [2, 784], "FP64"),
        (orjson.dumps({"inputs": [{"name": "input", "shape": [2, 784], "datatype": "UINT8", "data": levels.ravel().tolist()}]}), {}),
    ]:
        _, outputs = read_response(client.post("/v2/models/digits/infer", content=body, headers=headers))
        np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)


def test_the_largest_batch_allowed_is_answered_in_order(client, repository):
    x = images(MAX_INSTANCES, seed=5)
    _, outputs = read_response(client.post("/v2/models/digits/infer", content=json_request(x, [MAX_INSTANCES, 784])))
    np.testing.assert_allclose(outputs["probabilities"], run_onnx(repository, "digits", 2, x), rtol=1e-5, atol=1e-6)


# --- bad requests over HTTP -----------------------------------------------------------------------

ONE = images(1)
BAD_BODIES = {
    "not JSON": (b"pixels please", {}, "not valid JSON"),
    "no inputs": (b'{"outputs": []}', {}, '"inputs"'),
    "wrong datatype": (orjson.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "INT32", "data": [0] * 784}]}), {}, "FP32, FP64, UINT8"),
    "size mismatch": (json_request(ONE, [2, 784]), {}, "needs 1568"),
    "wrong shape": (json_request(ONE, [1, 28, 28]), {}, "[N, 1, 28, 28] or [N, 784]"),
    "out-of-range pixels": (json_request(ONE * 255, [1, 784]), {}, "must be in [0, 1]"),
    "NaN pixels": binary_request(np.full((1, 784), np.nan, np.float32), [1, 784]) + ("NaN, infinity",),
    "too many images": (json_request(images(MAX_INSTANCES + 1), [MAX_INSTANCES + 1, 784]), {}, f"1 to {MAX_INSTANCES} images"),
    "unknown input": (orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}]}), {}, "'input'"),
    "unknown output": (json_request(ONE, [1, 784], outputs=[{"name": "logits"}]), {}, "unknown output 'logits'"),
    "binary size mismatch": (
        binary_request(ONE, [1, 784])[0][:-4],
        binary_request(ONE, [1, 784])[1],
        "only 3132 follow",
    ),
    "header length beyond body": (b'{"inputs": []}', {"Inference-Header-Content-Length": "4096"}, "body holds 14 bytes"),
    "header length not a number": (b'{"inputs": []}', {"Inference-Header-Content-Length": "lots"}, "byte count"),
}


@pytest.mark.parametrize("body, headers, words", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_infer_requests_answer_422_saying_what_is_wrong(client, body, headers, words):
    response = client.post("/v2/models/digits/infer", content=body, headers=headers)
    assert response.status_code == 422
    assert set(response.json()) == {"error"}
    assert words in response.json()["error"]


def test_compressed_bodies_are_refused_clearly(client):
    response = client.post("/v2/models/digits/infer", content=gzip.compress(json_request(ONE, [1, 784])), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 415
    assert "uncompressed" in response.json()["error"]


def test_infer_is_documented_in_openapi(client):
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    assert {"APIKeyHeader", "HTTPBearer"} <= set(document["components"]["securitySchemes"])
    for path in ["/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"]:
        operation = paths[path]["post"]
        assert set(operation["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
        assert "Inference-Header-Content-Length" in [p["name"] for p in operation["parameters"]]
        assert operation["requestBody"]["content"]["application/json"]["examples"]
        assert operation["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
    for path in ["/v2", "/v2/models/{name}", "/v2/models/{name}/versions/{version}/ready"]:
        assert "get" in paths[path]
        assert "security" not in paths[path]["get"]


def test_an_api_key_guards_infer_but_not_metadata_or_readiness(repository):
    with TestClient(create_app(make_settings(repository, api_key="open-sesame"))) as client:
        body = json_request(ONE, [1, 784])
        refused = client.post("/v2/models/digits/infer", content=body)
        assert refused.status_code == 401
        assert set(refused.json()) == {"error"}
        assert client.post("/v2/models/digits/versions/1/infer", content=body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v2/models/digits/infer", content=body, headers={"X-API-Key": "open-sesame"}).status_code == 200
        assert client.post("/v2/models/digits/infer", content=body, headers={"Authorization": "Bearer open-sesame"}).status_code == 200
        for path in ["/v2", "/v2/models/digits", "/v2/models/digits/ready"]:
            assert client.get(path).status_code == 200


def test_the_response_id_is_the_request_id_when_the_body_has_none(client):
    response = client.post("/v2/models/digits/infer", content=json_request(ONE, [1, 784]), headers={"X-Request-ID": "trace-42"})
    assert response.json()["id"] == "trace-42"
    assert response.headers["X-Request-ID"] == "trace-42"
