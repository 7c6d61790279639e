"""Trust in answers: typicality and warnings in v1, v2 and the web page; explain=true; old cards still serve."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.onnx_models import write_version
from tests.service.conftest import make_settings
from tests.service.test_v2_api import json_request, read_response
from tests.trust.datasets import dataset_pictures
from training.data import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "models" / "mnist-convnet" / "2"


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    """The shipped mnist-convnet v2; 'hesitant', the same graph with a card whose margin makes every answer
    low-confidence; 'plain', a model whose card has no trust sections."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(SHIPPED, root / "mnist-convnet" / "2")
    card = json.loads((SHIPPED / "model.json").read_text())
    card.update(name="hesitant", version=1)
    card["calibration"]["low_confidence_margin"] = 1.01
    (root / "hesitant").mkdir()
    shutil.copytree(SHIPPED, root / "hesitant" / "1")
    (root / "hesitant" / "1" / "model.json").write_text(json.dumps(card))
    write_version(root, "plain", 1)
    with TestClient(create_app(make_settings(root, max_instances=256))) as test_client:
        yield test_client


def png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(picture.reshape(28, 28) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(client, model: str, x: np.ndarray, **extra) -> list[dict]:
    response = client.post(f"/v1/models/{model}/predict", json={"instances": x.reshape(len(x), 784).tolist(), **extra})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def codes(prediction: dict) -> list[str]:
    return [w["code"] for w in prediction["warnings"]]


def test_digits_are_typical_and_noise_is_flagged(client):
    digits, _ = dataset_pictures("mnist", 100)
    answers = predict(client, "mnist-convnet", digits)
    threshold = json.loads((SHIPPED / "model.json").read_text())["typicality"]["threshold"]
    assert all(isinstance(a["typicality"], float) for a in answers)
    flagged = [a for a in answers if "out_of_distribution" in codes(a)]
    assert len(flagged) <= 10
    assert all(a["typicality"] < threshold for a in flagged)
    noise = np.random.default_rng(0).random((20, 1, 28, 28), dtype=np.float32)
    for answer in predict(client, "mnist-convnet", noise):
        (warning,) = [w for w in answer["warnings"] if w["code"] == "out_of_distribution"]
        assert "does not look like what the model was trained on" in warning["message"]


def test_fashion_items_sent_to_the_digit_model_are_mostly_flagged(client):
    items, _ = dataset_pictures("fashion-mnist", 200)
    answers = predict(client, "mnist-convnet", items)
    assert np.mean(["out_of_distribution" in codes(a) for a in answers]) >= 0.95


def test_a_close_call_names_the_two_classes(client):
    digits, _ = dataset_pictures("mnist", 3)
    for answer in predict(client, "hesitant", digits, top_k=1):
        (warning,) = [w for w in answer["warnings"] if w["code"] == "low_confidence"]
        ranked = sorted(answer["probabilities"], key=answer["probabilities"].get, reverse=True)
        assert f"'{ranked[0]}'" in warning["message"] and f"'{ranked[1]}'" in warning["message"]
    assert all("low_confidence" not in codes(a) for a in predict(client, "mnist-convnet", digits))


def test_a_card_without_trust_sections_answers_null_and_no_warning(client):
    noise = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    for answer in predict(client, "plain", noise):
        assert answer["typicality"] is None and answer["warnings"] == []
    document, outputs = read_response(client.post("/v2/models/plain/infer", content=json_request(noise, [4, 784])))
    assert document["parameters"] == {"typicality": [None] * 4, "warnings": [[]] * 4}


def test_v2_answers_carry_typicality_and_warnings_as_parameters(client):
    digits, _ = dataset_pictures("mnist", 2)
    noise = np.random.default_rng(2).random((1, 1, 28, 28), dtype=np.float32)
    x = np.concatenate([digits, noise])
    document, outputs = read_response(client.post("/v2/models/mnist-convnet/infer", content=json_request(x, [3, 784])))
    assert list(outputs) == ["probabilities"]
    v1 = predict(client, "mnist-convnet", x)
    assert document["parameters"]["typicality"] == pytest.approx([a["typicality"] for a in v1], abs=1e-5)
    assert document["parameters"]["warnings"] == [a["warnings"] for a in v1]
    asked = json_request(x, [3, 784], outputs=[{"name": "typicality"}, {"name": "probabilities"}])
    _, outputs = read_response(client.post("/v2/models/mnist-convnet/infer", content=asked))
    np.testing.assert_allclose(outputs["typicality"], document["parameters"]["typicality"], atol=1e-5)
    metadata = client.get("/v2/models/mnist-convnet").json()
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "typicality"]


def test_explain_answers_a_map_of_the_top_class(client):
    digits, _ = dataset_pictures("mnist", 2)
    for answer in predict(client, "mnist-convnet", digits, explain=True):
        explanation = answer["explanation"]
        assert explanation["method"] == "occlusion" and explanation["label"] == answer["label"]
        assert np.asarray(explanation["map"]).shape == (28, 28)
    assert all("explanation" not in a for a in predict(client, "mnist-convnet", digits))
    upload = client.post("/v1/models/mnist-convnet/predict/image?explain=true", files={"file": ("d.png", png(digits[0]), "image/png")})
    assert upload.status_code == 200 and np.asarray(upload.json()["predictions"][0]["explanation"]["map"]).shape == (28, 28)


def test_explain_counts_the_occluded_copies_against_the_limit(client):
    digits, _ = dataset_pictures("mnist", 6)
    response = client.post("/v1/models/mnist-convnet/predict", json={"instances": digits.reshape(6, 784).tolist(), "explain": True})
    assert response.status_code == 422  # 6 x (1 + 49 occluded copies) = 300 images, over the limit of 256
    assert "send at most 5 pictures with explain" in response.json()["error"]["message"]
    bad = client.post("/v1/models/mnist-convnet/predict", json={"instances": digits[:1].reshape(1, 784).tolist(), "explain": "yes"})
    assert bad.status_code == 422


def test_the_page_shows_the_warning_without_javascript(client):
    shirt, _ = dataset_pictures("fashion-mnist", 1)
    noise = np.random.default_rng(3).random((1, 28, 28)) > 0.5
    page = client.post("/", data={"model": "mnist-convnet"}, files={"file": ("n.png", png(noise.astype(np.float32)), "image/png")})
    assert page.status_code == 200
    assert 'class="warning warning-out_of_distribution"' in page.text
    assert 'id="explanation"' in page.text and "data:image/png;base64," in page.text
    answer = client.post("/ui/api/predict", data={"model": "mnist-convnet"}, files={"file": ("s.png", png(shirt[0]), "image/png")}).json()
    assert answer["explanation_png"].startswith("data:image/png;base64,")
    assert isinstance(answer["typicality"], float)
