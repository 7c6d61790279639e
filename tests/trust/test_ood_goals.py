"""Issue 20's out-of-distribution goals on the served models (the highest version of each, as `python -m service`
serves them), on pictures these tests make and nothing was fitted on: other slices of the datasets, scribbles,
shapes and photos drawn with seeds of their own, each as a tensor and as an upload (PNG through the model's own
preprocessing, as the service does with it)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from bench.ood_sets import as_uploaded, letters, scribbles, shapes, small, thick_scribbles, uploaded
from bench.trust import enlarged_inputs
from service.errors import InvalidInput
from service.imaging import to_model_input
from tests.trust.datasets import dataset_pictures
from training.data import PROJECT_ROOT, load_splits
from training.synthetic_photos import CLOTHES_CONDITIONS, DIGIT_CONDITIONS, photo
from training.trust import enlarged_as_served

DIGIT_MODELS, CLOTHES_MODELS = ("mnist-convnet", "mnist-mlp"), ("fashion-convnet", "fashion-mlp")


def served(name: str):
    root = PROJECT_ROOT / "models" / name
    version = max((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    card = json.loads((version / "model.json").read_text())
    return ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"]), card


def flagged(name: str, x: np.ndarray, refused: int = 0) -> float:
    """The share flagged out_of_distribution; a picture the preprocessing refuses (a 422, no answer) counts as caught."""
    session, card = served(name)
    (typicality,) = session.run(["typicality"], {"input": x}) if len(x) else (np.zeros(0),)
    return float(((typicality < card["typicality"]["threshold"]).sum() + refused) / (len(x) + refused))


@pytest.fixture(scope="module")
def fashion_items() -> np.ndarray:
    items, _ = dataset_pictures("fashion-mnist", 3400)
    return items[3000:]  # not the first 1,000 (bench/trust.py)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    splits = load_splits("mnist")
    return (splits.test_images[1200:1600].astype(np.float32) / 255.0)[:, None]  # the test split, past the bench's


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_digit_models_flag_fashion_items_sent_as_tensors_and_as_uploads(name, fashion_items):
    assert flagged(name, fashion_items) >= 0.95
    assert flagged(name, *as_uploaded(fashion_items, "mnist-digit")) >= 0.95


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_digit_models_flag_noise_and_scribbles(name):
    noise = np.random.default_rng(77).random((200, 1, 28, 28), dtype=np.float32)
    assert flagged(name, noise) >= 0.90
    assert flagged(name, *as_uploaded(noise, "mnist-digit")) >= 0.90
    lines = scribbles(300, seed=77)
    assert flagged(name, lines) >= 0.90
    # Uploaded scribbles are framed and thickened like a digit: the goal (90%) is not met; this holds what is.
    assert flagged(name, *as_uploaded(lines, "mnist-digit")) >= UPLOADED_SCRIBBLES[name]


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_digit_models_flag_latin_letters(name):
    """No goal is set for letters (an O is a 0, an l is a 1); this holds what the outlier head gained. The symbols it
    is fitted on hold no Latin letter."""
    pictures = letters(260, seed=77)  # five of each letter
    assert flagged(name, small(pictures)) >= 0.90
    assert flagged(name, *uploaded(pictures, "mnist-digit")) >= UPLOADED_LETTERS[name]


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_digit_models_flag_shapes(name):
    pictures = shapes(200, seed=77)
    assert flagged(name, small(pictures)) >= 0.90
    assert flagged(name, *uploaded(pictures, "mnist-digit")) >= UPLOADED_SHAPES[name]


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_digit_models_flag_thick_scribbles(name):
    """A polyline drawn with a thick pen on a larger canvas: the smoke check's kind of scribble, which the outlier head's
    first recipe let through a third of the time; nothing is fitted on polylines."""
    pictures = thick_scribbles(200, seed=77)
    raw_share, uploaded_share = THICK_SCRIBBLES[name]
    assert flagged(name, small(pictures)) >= raw_share
    assert flagged(name, *uploaded(pictures, "mnist-digit")) >= uploaded_share


@pytest.mark.parametrize("name", CLOTHES_MODELS)
def test_clothes_models_flag_digits_sent_as_tensors_and_as_uploads(name, digits):
    assert flagged(name, digits) >= 0.95
    # Uploaded: 96.25% / 97.75% of this slice with the outlier head (fashion-convnet 92.75% before it, 91.25% before
    # its refit on served pictures).
    assert flagged(name, *as_uploaded(digits, "fashion-fit")) >= 0.95


@pytest.mark.parametrize("name", CLOTHES_MODELS)
def test_clothes_models_flag_shapes_and_letters(name):
    """No goal is set for them; this holds what the clothes models' outlier head gained (its drawings and symbols hold
    no shape of bench/ood_sets.py's kinds and no Latin letter)."""
    assert flagged(name, *uploaded(shapes(200, seed=77), "fashion-fit")) >= CLOTHES_SHAPES[name]
    assert flagged(name, *uploaded(letters(260, seed=77), "fashion-fit")) >= CLOTHES_LETTERS[name]


def photos_as_served(dataset: str, conditions, method: str, count: int, seed: int, with_back: bool) -> np.ndarray:
    """Synthetic photos of held-out test pictures under `conditions` (taken in turn), through the preprocessing; a
    photo the preprocessing refuses is left out."""
    splits = load_splits(dataset)
    rng = np.random.default_rng(seed)
    kept = []
    for n, i in enumerate(rng.choice(len(splits.test_images), count, replace=False)):
        extra = {"back": splits.test_images[rng.integers(100)]} if with_back else {"label": int(splits.test_labels[i])}
        data = photo(conditions[n % 2], splits.test_images[i], rng, max_side=700, **extra)
        try:
            kept.append(to_model_input(data, method, max_pixels=40_000_000))
        except InvalidInput:
            continue
    return np.stack(kept)


@pytest.fixture(scope="module")
def digit_photos() -> np.ndarray:
    """Synthetic phone photos (a page, a card on a table) of held-out test digits, through the preprocessing."""
    return photos_as_served("mnist", DIGIT_CONDITIONS, "mnist-digit", 80, 2027, with_back=True)


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_photos_of_digits_are_mostly_not_flagged(name, digit_photos):
    assert flagged(name, digit_photos) <= 0.10


@pytest.fixture(scope="module")
def enlarged_digits() -> tuple[np.ndarray, np.ndarray]:
    """100 held-out test digits enlarged with Pillow (56 or 140 px, bilinear or bicubic, every other one dark on
    light) and uploaded as PNG through the preprocessing, and their labels. Enlarged then shrunk back, their strokes
    are softer than MNIST's: before the typicality was fitted on such uploads, 60-97% of them were flagged."""
    splits = load_splits("mnist")
    images, labels = splits.test_images[1600:1700], splits.test_labels[1600:1700]
    n = np.arange(len(images))
    x, kept = enlarged_as_served(images, np.where(n % 4 < 2, 56, 140), np.where(n % 2 == 0, "bilinear", "bicubic"), (n // 4) % 2 == 1)
    assert len(kept) == len(images)  # none refused
    return x, labels


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_enlarged_uploads_of_digits_are_mostly_not_flagged(name, enlarged_digits):
    x, labels = enlarged_digits
    assert flagged(name, x) <= 0.10
    session, _ = served(name)
    (probabilities,) = session.run(["probabilities"], {"input": x})
    assert (probabilities.argmax(1) == labels).mean() >= 0.95


@pytest.fixture(scope="module")
def clothes_photos() -> np.ndarray:
    """Synthetic photos (a product shot, a natural photo) of held-out test items, through the preprocessing."""
    return photos_as_served("fashion-mnist", CLOTHES_CONDITIONS, "fashion-fit", 60, 2028, with_back=False)


@pytest.mark.parametrize("name", CLOTHES_MODELS)
def test_photos_of_clothes_are_mostly_not_flagged(name, clothes_photos):
    # fashion-mlp's earlier refits on photos flagged 29% of the fixed photo set; the served fits 3.5% (fashion-mlp)
    # and 2.0% (fashion-convnet) (bench/results/trust.md).
    assert flagged(name, clothes_photos) <= 0.10


@pytest.mark.parametrize("name", [*DIGIT_MODELS, *CLOTHES_MODELS])
def test_the_threshold_holds_the_own_test_pictures_raw_and_uploaded_to_5_percent(name):
    from training.trust import PHOTO_FLAG_RATE

    _, card = served(name)
    assert card["typicality"]["flagged_share"] <= 0.05
    assert card["typicality"]["flagged_share_served"]["test_uploaded"] <= 0.05
    # The validation photos' own rate: 9% for digits (issue 20's goal for photos of digits is 10%), 5% for clothes.
    assert card["typicality"]["flagged_share_served"]["validation_photos"] <= PHOTO_FLAG_RATE[card["training"]["dataset"]]
    assert card["typicality"]["flagged_share_served"]["validation_enlarged"] <= 0.05


@pytest.fixture(scope="module")
def own_items() -> tuple[np.ndarray, np.ndarray]:
    """1,000 held-out Fashion-MNIST test items (not the bench's first 1,000), uploaded as PNG through the fashion-fit
    preprocessing, and the same items enlarged with Pillow to 56, 84, 140 or 280 px (nearest, bilinear, bicubic or
    lanczos in turn, every other 16 dark on light, as bench/trust.py's own_enlarged) and uploaded."""
    images = load_splits("fashion-mnist").test_images[3000:4000]
    plain, refused = as_uploaded((images.astype(np.float32) / 255.0)[:, None], "fashion-fit")
    enlarged, refused_enlarged = enlarged_inputs(images, "fashion-fit")
    assert refused == refused_enlarged == 0
    return plain, enlarged


@pytest.mark.parametrize("name", CLOTHES_MODELS)
def test_own_items_uploaded_and_enlarged_are_mostly_not_flagged_by_the_clothes_models(name, own_items):
    plain, enlarged = own_items
    # Issue 20's goal is 5%. The threshold holds all 10,000 test items uploaded, and 1,000 enlarged validation
    # uploads, to 5%; this slice is harder than the split. Before their refits on enlarged uploads fashion-convnet
    # flagged 8.1% of these uploads and 10.9% enlarged, fashion-mlp 6.1% and 6.1%; after them 5.7% and 5.2%, 5.7% and
    # 5.1%; with the outlier head (whose threshold the enlarged uploads set) 2.2% and 4.9%, 3.2% and 5.0%.
    assert flagged(name, plain) <= 0.065
    assert flagged(name, enlarged) <= 0.06


# What the served models flag of uploads whose goal is not met (bench/results/trust.md), held so it cannot slip.
# The digit models' outlier head (outlier exposure on training/doodles.py's drawings and symbols) raised this
# module's uploaded scribbles from 69% / 55% to 84% / 69%, shapes from 75% / 69% to 93% / 82% and Latin letters from
# 28% / 19% to 56% / 46% (mnist-convnet / mnist-mlp); its refit with four networks, 1,600 photos weighed as a group and
# the photos' threshold at 9% of 400 to 86% / 82%, 94.5% / 88.5% and 60% / 58%.
UPLOADED_SCRIBBLES = {"mnist-convnet": 0.80, "mnist-mlp": 0.76}
UPLOADED_SHAPES = {"mnist-convnet": 0.88, "mnist-mlp": 0.82}
UPLOADED_LETTERS = {"mnist-convnet": 0.52, "mnist-mlp": 0.50}
# (raw, uploaded): 91% / 76% (mnist-convnet) and 77% / 69.5% (mnist-mlp); the first recipe 86.5% / 72%, 74.5% / 55.5%.
# Made 28x28 a 3-10 px stroke on 112 px is 1-2.5 px wide, drawn much like a digit.
THICK_SCRIBBLES = {"mnist-convnet": (0.85, 0.70), "mnist-mlp": (0.70, 0.62)}
# The clothes models' outlier head raised uploaded shapes from 71.5% / 61.5% to 81.5% / 70.5% and letters from 53.5% /
# 58.8% to 83.8% / 80.8% (fashion-convnet 3 / fashion-mlp) in test_clothes_models_flag_shapes_and_letters. GrabCut
# started from the whole item (docs/photos.md) keeps more paper in a letter: fashion-mlp's letters 70.8%. fashion-convnet
# 4, fitted with the head's second recipe and on real photos of clothes: shapes 97.5%, letters 93.8%.
CLOTHES_SHAPES = {"fashion-convnet": 0.95, "fashion-mlp": 0.66}
CLOTHES_LETTERS = {"fashion-convnet": 0.90, "fashion-mlp": 0.68}
