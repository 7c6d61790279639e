"""A standard V2 client (Triton's tritonclient.http) against the service running under uvicorn on loopback."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as tritonclient_http

from tests.onnx_models import make_classifier

# The `server` fixture (tests/service/conftest.py) serves digits versions 1 and 2 (2 the default),
# each the tiny classifier built with seed = version.


@pytest.fixture
def client(server):
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def run_onnx(version: int, x: np.ndarray) -> np.ndarray:
    """The served model, run directly in ONNX Runtime."""
    session = ort.InferenceSession(make_classifier(seed=version).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"input": x.reshape(len(x), 1, 28, 28)})[0]


def test_metadata_and_readiness_through_the_client(client):
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "7")
    assert not client.is_model_ready("broken")
    metadata = client.get_model_metadata("digits")
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}


@pytest.mark.parametrize("binary_output", [True, False, None], ids=["binary-out", "json-out", "default-out"])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (3, 784)], ids=["nchw", "flat"])
def test_infer_matches_onnx_runtime(client, shape, binary_input, binary_output):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    tensor = tritonclient_http.InferInput("input", list(shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_input)
    outputs = None if binary_output is None else [tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary_output)]
    result = client.infer("digits", [tensor], outputs=outputs, request_id="r-7")
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("digits", "2", "r-7")
    # Without named outputs the client asks for every output in binary.
    assert ("data" not in response["outputs"][0]) is (binary_output is not False)
    np.testing.assert_allclose(result.as_numpy("probabilities"), run_onnx(2, x), rtol=1e-5, atol=1e-6)


def test_infer_a_named_version(client):
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    tensor = tritonclient_http.InferInput("input", [2, 1, 28, 28], "FP32").set_data_from_numpy(x)
    result = client.infer("digits", [tensor], model_version="1")
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_allclose(result.as_numpy("probabilities"), run_onnx(1, x), rtol=1e-5, atol=1e-6)


def test_errors_reach_the_client_as_messages(client):
    x = np.full((1, 784), 2.0, dtype=np.float32)
    tensor = tritonclient_http.InferInput("input", [1, 784], "FP32").set_data_from_numpy(x)
    with pytest.raises(tritonclient_http.InferenceServerException) as caught:
        client.infer("digits", [tensor])
    assert caught.value.status() == "422"
    assert "must be in [0, 1]" in caught.value.message()
    with pytest.raises(tritonclient_http.InferenceServerException) as caught:
        client.infer("letters", [tensor])
    assert caught.value.status() == "404"
    assert "letters" in caught.value.message()
