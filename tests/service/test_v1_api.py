"""The v1 REST surface through the whole app (FastAPI test client), with batching on and off."""

from __future__ import annotations

import base64
import io

import numpy as np
import orjson
import pytest
from PIL import Image

import service.api.v1
from service.imaging import to_model_input
from tests.onnx_models import DIGIT_CLASSES, FASHION_CLASSES, reference_probabilities
from tests.service.conftest import MAX_INSTANCES

TOLERANCE = 1e-5


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def png_bytes(seed: int = 0, size: int = 28) -> bytes:
    """A white stroke on black, drawn at `size` pixels."""
    rng = np.random.default_rng(seed)
    picture = np.zeros((size, size), dtype=np.uint8)
    column = int(rng.integers(size // 3, 2 * size // 3))
    picture[size // 6 : 5 * size // 6, column : column + max(2, size // 10)] = 255
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def probabilities_of(answer: dict, classes=DIGIT_CLASSES) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in classes] for p in answer["predictions"]])


# --- listing and describing -----------------------------------------------------------------------


def test_list_models_reports_every_model_and_why_broken_versions_are_skipped(client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert sorted(models) == ["broken", "digits", "fashion"]
    digits = models["digits"]
    assert digits["state"] == "READY" and digits["default_version"] == 2
    states = {v["version"]: v for v in digits["versions"]}
    assert states[1]["state"] == states[2]["state"] == "READY"
    assert states[2]["providers"] == ["CPUExecutionProvider"]
    assert states[3]["state"] == "UNAVAILABLE" and "ONNX Runtime cannot load" in states[3]["reason"]
    broken = {v["version"]: v for v in models["broken"]["versions"]}
    assert models["broken"]["state"] == "UNAVAILABLE" and models["broken"]["default_version"] is None
    assert "sha256" in broken[1]["reason"]
    assert "[N, 1, 28, 28]" in broken[2]["reason"]


def test_describe_model_shows_card_classes_input_and_providers(client):
    detail = client.get("/v1/models/fashion").json()
    assert detail["version"] == 1 and detail["task"] == "fashion"
    assert detail["classes"] == FASHION_CLASSES
    assert detail["input"]["shape"] == ["N", 1, 28, 28]
    assert detail["preprocessing"]["method"] == "fashion-fit"
    assert detail["providers"] == ["CPUExecutionProvider"]
    assert "test_accuracy" in detail["metrics"]
    assert client.get("/v1/models/digits", params={"version": 1}).json()["version"] == 1


def test_describe_broken_model_gives_status_without_card(client):
    detail = client.get("/v1/models/broken").json()
    assert detail["state"] == "UNAVAILABLE" and "classes" not in detail


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/models/nope", 404, "model_not_found"),
        ("/v1/models/digits?version=9", 404, "version_not_found"),
        ("/v1/models/digits?version=3", 400, "model_not_ready"),
        ("/v1/models/digits?version=zero", 422, "invalid_input"),
    ],
)
def test_describe_errors(client, path, status, code):
    error_of(client.get(path), status, code)


# --- predict from JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["28x28", "784", "1x28x28"])
def test_predict_pixels_in_every_layout_answers_the_models_probabilities(client, layout):
    x = pixels(3)
    shapes = {"28x28": (3, 28, 28), "784": (3, 784), "1x28x28": (3, 1, 28, 28)}
    body = {"instances": x.reshape(shapes[layout]).tolist()}
    response = client.post("/v1/models/digits/predict", content=orjson.dumps(body))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "digits" and answer["version"] == 2
    expected = reference_probabilities(x, seed=2)
    np.testing.assert_allclose(probabilities_of(answer), expected, atol=TOLERANCE)
    for prediction, row in zip(answer["predictions"], expected):
        assert prediction["label"] == str(int(row.argmax()))
        assert [t["label"] for t in prediction["top"]] == [str(i) for i in np.argsort(-row)[:3]]
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_keeps_input_order_with_mixed_layouts_and_pictures(client):
    x = pixels(2, seed=5)
    picture = png_bytes(1)
    body = {"instances": [x[0].reshape(784).tolist(), {"image_base64": base64.b64encode(picture).decode()}, x[1, 0].tolist()]}
    answer = client.post("/v1/models/digits/predict", json=body).json()
    seen = to_model_input(picture, "mnist-digit", max_pixels=10**7)[None]
    expected = reference_probabilities(np.concatenate([x[:1], seen, x[1:]]), seed=2)
    np.testing.assert_allclose(probabilities_of(answer), expected, atol=TOLERANCE)


def test_errors_in_mixed_instances_name_the_instance_by_its_place(client):
    body = {"instances": [{"image_base64": base64.b64encode(png_bytes()).decode()}, [0.5] * 784, [0.5] * 10]}
    assert "instance 2 has shape [10]" in error_of(client.post("/v1/models/digits/predict", json=body), 422, "invalid_input")


def test_predict_top_k_and_version(client):
    x = pixels(1, seed=3)
    answer = client.post("/v1/models/digits/predict", json={"instances": x.reshape(1, 784).tolist(), "top_k": 5, "version": 1}).json()
    assert answer["version"] == 1
    np.testing.assert_allclose(probabilities_of(answer), reference_probabilities(x, seed=1), atol=TOLERANCE)
    assert len(answer["predictions"][0]["top"]) == 5
    everything = client.post("/v1/models/digits/predict", json={"instances": x.reshape(1, 784).tolist(), "top_k": 100}).json()
    assert len(everything["predictions"][0]["top"]) == 10


def test_predict_clips_rounding_slack_just_outside_0_1(client):
    x = np.full((1, 784), 1.0004, dtype=np.float32)
    x[0, :10] = -0.0004
    answer = client.post("/v1/models/digits/predict", json={"instances": x.tolist()}).json()
    np.testing.assert_allclose(probabilities_of(answer), reference_probabilities(np.clip(x, 0, 1), seed=2), atol=TOLERANCE)


def test_numeric_bodies_answer_the_same_with_and_without_the_json_accelerator(client, monkeypatch):
    x = pixels(3, seed=5)
    bodies = [
        {"instances": x.reshape(3, 784).tolist(), "top_k": 2},
        {"instances": x[:, 0].tolist(), "version": 1},
        {"instances": x.tolist()},
        {"instances": [[1.5] + [0.0] * 783]},  # outside [0, 1]
        {"instances": [[0.5] * 784], "top_k": 0},
        {"instances": [[0.5] * 784], "version": 99},
        {"instances": [[0.5] * 784] * (MAX_INSTANCES + 1)},
    ]
    read = service.api.v1.read_numeric_instances
    accelerated = []

    def reading(body: bytes):
        result = read(body)
        accelerated.append(result is not None)
        return result

    def refusing(body: bytes):
        return None

    answers = {}
    for name, reader in (("accelerator", reading), ("orjson", refusing)):
        monkeypatch.setattr("service.api.v1.read_numeric_instances", reader)
        answers[name] = [
            (response.status_code, response.content)
            for response in (client.post("/v1/models/digits/predict", content=orjson.dumps(body)) for body in bodies)
        ]
    assert accelerated == [True] * len(bodies)
    assert answers["accelerator"] == answers["orjson"]
    assert [status for status, _ in answers["orjson"]] == [200, 200, 200, 422, 422, 404, 422]


def test_predict_base64_picture_with_data_url_prefix(client):
    picture = png_bytes(2, size=200)
    data_url = "data:image/png;base64," + base64.b64encode(picture).decode()
    answer = client.post("/v1/models/fashion/predict", json={"instances": [{"image_base64": data_url}]}).json()
    expected = reference_probabilities(to_model_input(picture, "fashion-fit", max_pixels=10**7)[None], seed=1)
    np.testing.assert_allclose(probabilities_of(answer, FASHION_CLASSES), expected, atol=TOLERANCE)


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (b"{not json", 422, "invalid_input", "not valid JSON"),
        (b"[1, 2]", 422, "invalid_input", "'instances'"),
        (b'{"images": []}', 422, "invalid_input", "'instances'"),
        (b'{"instances": [], "top_k": 3}', 422, "invalid_input", "no images"),
        (b'{"instances": [[0]], "extra": 1}', 422, "invalid_input", "unknown fields"),
        (orjson.dumps({"instances": [[0.5] * 784] * (MAX_INSTANCES + 1)}), 422, "invalid_input", f"at most {MAX_INSTANCES}"),
        (orjson.dumps({"instances": [[0.5] * 783]}), 422, "invalid_input", "shape [783]"),
        (orjson.dumps({"instances": [[[0.5] * 28] * 27]}), 422, "invalid_input", "shape [27, 28]"),
        (orjson.dumps({"instances": [[0.5] * 784, [0.5] * 700]}), 422, "invalid_input", "instance 1 has shape [700]"),
        (orjson.dumps({"instances": [[[0.5] * 28] * 27 + [[0.5] * 20]]}), 422, "invalid_input", "instance 0 is not a regular array"),
        (orjson.dumps({"instances": [["a"] * 784]}), 422, "invalid_input", "instance 0: pixels must be JSON numbers"),
        (orjson.dumps({"instances": [0.5, 0.5]}), 422, "invalid_input", "instance 0 is a JSON float"),
        (orjson.dumps({"instances": [[None] * 784]}), 422, "invalid_input", "not strings, true/false or null"),
        (b'{"instances": [[' + b",".join([b"1e39"] * 784) + b"]]}", 422, "invalid_input", "NaN, infinity"),
        (orjson.dumps({"instances": [[255.0] * 784]}), 422, "invalid_input", "divide 8-bit pixels by 255"),
        (orjson.dumps({"instances": [[-0.5] * 784]}), 422, "invalid_input", "pixels must be in [0, 1]"),
        (orjson.dumps({"instances": [[0.5] * 784], "top_k": 0}), 422, "invalid_input", "top_k"),
        (orjson.dumps({"instances": [[0.5] * 784], "top_k": "3"}), 422, "invalid_input", "top_k"),
        (orjson.dumps({"instances": [[0.5] * 784], "top_k": True}), 422, "invalid_input", "top_k"),
        (orjson.dumps({"instances": [[0.5] * 784], "version": 0}), 422, "invalid_input", "version"),
        (orjson.dumps({"instances": [[0.5] * 784], "version": 7}), 404, "version_not_found", "versions: [1, 2, 3]"),
        (orjson.dumps({"instances": [[0.5] * 784], "version": 3}), 400, "model_not_ready", "ONNX Runtime cannot load"),
        (orjson.dumps({"instances": [{"image_base64": "%%%"}]}), 422, "invalid_input", "not valid base64"),
        (orjson.dumps({"instances": [{"image_base64": ""}]}), 422, "invalid_input", "empty"),
        (orjson.dumps({"instances": [{"image_base64": base64.b64encode(b"plain text").decode()}]}), 415, "invalid_image", "PNG"),
        (orjson.dumps({"instances": [{"picture": "abc"}]}), 422, "invalid_input", "keys ['picture']"),
    ],
)
def test_predict_rejects_bad_bodies_saying_what_is_accepted(client, body, status, code, says):
    message = error_of(client.post("/v1/models/digits/predict", content=body), status, code)
    assert says in message


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/models/nope/predict", "model_not_found"),
        ("/v1/models/broken/predict", "model_not_ready"),
        ("/v1/models/..%2F..%2Fetc/predict", "not_found"),
        ("/v1/models/%2e%2e/predict", "invalid_model_name"),
        ("/v1/models/.hidden/predict", "invalid_model_name"),
        ("/v1/models/digits%00/predict", "invalid_model_name"),
    ],
)
def test_predict_unknown_broken_or_escaping_model_names(client, path, code):
    response = client.post(path, json={"instances": [[0.5] * 784]})
    assert response.status_code in (400, 404)  # a model that failed to load: 400, not worth retrying
    error_of(response, response.status_code, code)


# --- predict from uploaded pictures -----------------------------------------------------------------


def test_predict_image_single_file(client):
    picture = png_bytes(4, size=64)
    response = client.post("/v1/models/digits/predict/image", files={"file": ("digit.png", picture, "image/png")})
    assert response.status_code == 200, response.text
    expected = reference_probabilities(to_model_input(picture, "mnist-digit", max_pixels=10**7)[None], seed=2)
    np.testing.assert_allclose(probabilities_of(response.json()), expected, atol=TOLERANCE)


def test_predict_image_several_files_in_order_with_form_options(client):
    pictures = [png_bytes(seed) for seed in (5, 6, 7)]
    files = [("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(pictures)]
    response = client.post("/v1/models/digits/predict/image", files=files, data={"top_k": "2", "version": "1"})
    answer = response.json()
    assert answer["version"] == 1 and all(len(p["top"]) == 2 for p in answer["predictions"])
    seen = np.stack([to_model_input(p, "mnist-digit", max_pixels=10**7) for p in pictures])
    np.testing.assert_allclose(probabilities_of(answer), reference_probabilities(seen, seed=1), atol=TOLERANCE)
    by_query = client.post("/v1/models/digits/predict/image?top_k=4&version=1", files=files).json()
    assert by_query["version"] == 1 and len(by_query["predictions"][0]["top"]) == 4


def test_predict_image_errors(client):
    url = "/v1/models/digits/predict/image"
    error_of(client.post(url, files={"file": ("notes.txt", b"just text", "text/plain")}), 415, "invalid_image")
    assert "file" in error_of(client.post(url, data={"top_k": "2"}, files={"other": ("a.png", png_bytes(), "image/png")}), 422, "invalid_input")
    assert "multipart/form-data" in error_of(client.post(url, json={"instances": []}), 422, "invalid_input")
    assert "file upload" in error_of(client.post(url, data={"file": "not a file"}, files={"x": ("a", b"", "text/plain")}), 422, "invalid_input")
    malformed = client.post(url, content=b"--xyz\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "invalid_input"
    too_many = [("files", (f"{i}.png", png_bytes(), "image/png")) for i in range(MAX_INSTANCES + 1)]
    assert error_of(client.post(url, files=too_many), 422, "invalid_input")
    assert "top_k" in error_of(client.post(url, files={"file": ("a.png", png_bytes(), "image/png")}, data={"top_k": "many"}), 422, "invalid_input")
    error_of(client.post("/v1/models/digits/predict/image?version=0", files={"file": ("a.png", png_bytes(), "image/png")}), 422, "invalid_input")
    error_of(client.post("/v1/models/nope/predict/image", files={"file": ("a.png", png_bytes(), "image/png")}), 404, "model_not_found")


# --- reload -------------------------------------------------------------------------------------------


def test_reload_answers_the_models_versions(client):
    response = client.post("/v1/models/digits/reload")
    assert response.status_code == 200
    assert response.json()["default_version"] == 2
    error_of(client.post("/v1/models/nope/reload"), 404, "model_not_found")
    error_of(client.post("/v1/models/..%5Cx/reload"), 404, "invalid_model_name")
