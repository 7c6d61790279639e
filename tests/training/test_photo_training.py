"""Training on what serving produces: the synthetic photos, the pool of processed photos, and fine-tuning a
published model from its ONNX weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image, ImageOps

from training import photo_mix
from training.init_from import load_published_weights
from training.models import build_model
from training.synthetic_photos import CONDITIONS, photo

PROJECT = Path(__file__).resolve().parents[2]


def a_digit() -> np.ndarray:
    digit = np.zeros((28, 28), np.uint8)
    digit[5:23, 12:16] = 255  # a "1"
    return digit


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_condition_gives_a_picture_file_people_upload(condition):
    data = photo(condition, a_digit(), np.random.default_rng(3), label=1, back=a_digit(), max_side=700)
    opened = Image.open(io.BytesIO(data))
    assert opened.format in ("JPEG", "PNG", "WEBP")
    assert min(ImageOps.exif_transpose(opened).size) >= 40


def test_the_same_seed_gives_the_same_photo():
    first = photo("digit-photo", a_digit(), np.random.default_rng(7), max_side=700)
    assert first == photo("digit-photo", a_digit(), np.random.default_rng(7), max_side=700)
    with pytest.raises(ValueError, match="unknown condition"):
        photo("underwater", a_digit(), np.random.default_rng(7))


def test_the_pool_holds_what_the_service_makes_of_each_photo(tmp_path, monkeypatch):
    monkeypatch.setattr(photo_mix, "CACHE_DIR", tmp_path)
    images = np.stack([a_digit()] * 6)
    indices, photos = photo_mix.processed_pool(images, np.ones(6, np.int64), "mnist", 3, seed=0)
    assert len(indices) == 3 and photos.shape == (3, 28, 28) and photos.dtype == np.uint8
    assert all(p.max() == 255 for p in photos)  # the stroke found and saturated, as MNIST's are
    assert len(list(tmp_path.glob("mnist-3-seed0-*.npz"))) == 1  # cached: a second call reads it
    again = photo_mix.processed_pool(images, np.ones(6, np.int64), "mnist", 3, seed=0)
    np.testing.assert_array_equal(again[1], photos)


@pytest.mark.parametrize(
    ("name", "arch", "options"),
    [("mnist-convnet", "lenet5", {"channels": (6, 16), "hidden": (120, 84)}),
     ("fashion-convnet", "convnet", {"channels": (16, 32), "hidden": (128,), "dropout": 0.1})],
)
def test_a_published_model_loads_back_exactly(name, arch, options):
    path = PROJECT / "models" / name / "1" / "model.onnx"
    model = build_model(arch, 10, **options)
    load_published_weights(model, path)
    model.eval()
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(torch.softmax(model(torch.from_numpy(x)), 1).detach().numpy(), expected, atol=1e-5)


def test_another_architecture_is_refused_by_name():
    with pytest.raises(ValueError, match="does not fit|no batch norm|no weights"):
        load_published_weights(build_model("lenet5", 10, channels=(6, 16), hidden=(120, 84)),
                               PROJECT / "models" / "fashion-convnet" / "1" / "model.onnx")
