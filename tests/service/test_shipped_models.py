"""The shipped model repository (models/) served as a user gets it: every model loads, answers what its
ONNX file answers, and classifies held-out pictures about as well as its card says."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.config import DEFAULT_REPOSITORY, Settings
from training.data import DATASETS, TEST_IMAGES, TEST_LABELS

SHIPPED = sorted(p.parent for p in DEFAULT_REPOSITORY.glob("*/*/model.json") if p.parent.name.isdigit())
HELD_OUT = {
    # dataset -> (images, labels, first held-out index): the MNIST models train on the first 8,000 test images.
    "mnist": (DATASETS["mnist"].default_dir, 8000),  # vendored in datasets/mnist/
    "fashion-mnist": (DATASETS["fashion-mnist"].default_dir, 0),  # Debian's dataset-fashion-mnist
}
SAMPLE = 300  # sent 100 per request, under the default limit of 256
UPLOADS = 50



def test_models_are_shipped():
    assert SHIPPED, "models/ holds no trained model: scripts/train-shipped-models.sh produces them"


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def held_out(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    name = "fashion-mnist" if "fashion" in dataset else "mnist"
    directory, start = HELD_OUT[name]
    images = read_idx(directory / TEST_IMAGES)[start:]
    labels = read_idx(directory / TEST_LABELS)[start:]
    picks = np.random.default_rng(0).choice(len(images), SAMPLE, replace=False)
    return images[picks], labels[picks]


@pytest.fixture(scope="module")
def shipped_client():
    with TestClient(create_app(Settings(providers=["cpu"], watch_interval_s=0, log_level="warning"))) as client:
        yield client


@pytest.mark.parametrize("version_dir", SHIPPED, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_shipped_model_serves_its_onnx_answers_and_card_accuracy(shipped_client, version_dir):
    card = json.loads((version_dir / "model.json").read_text())
    name, version = card["name"], card["version"]
    detail = shipped_client.get(f"/v1/models/{name}", params={"version": version}).json()
    assert detail["classes"] == card["classes"] and detail["providers"] == ["CPUExecutionProvider"]

    images, labels = held_out(card["training"]["dataset"])
    x = images.astype(np.float32)[:, None] / 255.0
    response = shipped_client.post(
        f"/v1/models/{name}/predict", content=orjson.dumps({"instances": x[:8].reshape(8, 784).tolist(), "version": version})
    )
    assert response.status_code == 200, response.text
    served = np.array([[p["probabilities"][c] for c in card["classes"]] for p in response.json()["predictions"]])
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(served, session.run(None, {"input": x[:8]})[0], atol=1e-5)

    predicted = []
    for start in range(0, SAMPLE, 100):
        batch = {"instances": x[start : start + 100].reshape(-1, 784).tolist(), "version": version, "top_k": 1}
        answer = shipped_client.post(f"/v1/models/{name}/predict", content=orjson.dumps(batch)).json()
        predicted += [card["classes"].index(p["label"]) for p in answer["predictions"]]
    accuracy = float(np.mean(np.array(predicted) == labels))
    assert accuracy >= card["metrics"]["test_accuracy"] - 0.05, (accuracy, card["metrics"]["test_accuracy"])


@pytest.mark.parametrize("version_dir", SHIPPED, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_shipped_model_classifies_uploaded_pictures(shipped_client, version_dir):
    card = json.loads((version_dir / "model.json").read_text())
    images, labels = held_out(card["training"]["dataset"])
    files = []
    for i, image in enumerate(images[:UPLOADS]):
        picture = Image.fromarray(255 - image).resize((112, 112), Image.Resampling.BICUBIC)  # dark ink on light paper, larger
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        files.append(("files", (f"{i}.png", buffer.getvalue(), "image/png")))
    response = shipped_client.post(f"/v1/models/{card['name']}/predict/image", files=files, params={"version": card["version"]})
    assert response.status_code == 200, response.text
    predicted = [card["classes"].index(p["label"]) for p in response.json()["predictions"]]
    # Redrawn dark-on-light at 4x, the pictures lose a little against the card's accuracy on the raw images.
    assert np.mean(np.array(predicted) == labels[:UPLOADS]) >= card["metrics"]["test_accuracy"] - 0.1
