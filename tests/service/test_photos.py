"""Phone photos (issue 18): the fixed synthetic photo set of training/photo_eval.py, per condition, uploaded
to `/v1/models/{name}/predict/image` of the app, must be recognised at least as well as the issue's goals,
by the highest version of each shipped convnet; a faint object gets an answer with a warning, never a refusal."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from training.photo_eval import PHOTO_SETS, dataset_dir, measure, photo_set

MODEL_FOR = {"mnist": "mnist-convnet", "fashion-mnist": "fashion-convnet"}


@pytest.mark.slow
@pytest.mark.parametrize("spec", PHOTO_SETS, ids=lambda s: s.condition)
def test_each_condition_meets_its_goal(shipped_client, spec):
    if not (dataset_dir(spec.dataset) / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"{spec.dataset} is not in {dataset_dir(spec.dataset)}: make test installs it")
    model = MODEL_FOR[spec.dataset]
    classes = shipped_client.get(f"/v1/models/{model}").json()["classes"]
    result = measure(shipped_client, model, photo_set(spec), classes)
    assert result["refused"] == 0, result
    assert result["accuracy"] >= spec.goal, (spec.condition, result)


def faint_seven(contrast: float) -> bytes:
    """A '7' in grey ink barely darker than grey paper, as a phone photo of a pencil mark would be."""
    paper = np.full((600, 600), 0.7, np.float32) + np.random.default_rng(0).normal(0, 0.004, (600, 600))
    paper[150:175, 180:430] -= contrast  # the bar
    for row in range(175, 460):  # the stem, slanting down to the left
        left = int(410 - (row - 175) * 0.55)
        paper[row, left : left + 25] -= contrast
    buffer = io.BytesIO()
    Image.fromarray(np.clip(paper * 255, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_faint_digit_is_answered_with_a_warning_not_refused(shipped_client):
    response = shipped_client.post("/v1/models/mnist-convnet/predict/image", files={"file": ("faint.png", faint_seven(0.05))})
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert [w["code"] for w in prediction["warnings"]] == ["low_contrast"]
    assert prediction["warnings"][0]["message"]
    clear = shipped_client.post("/v1/models/mnist-convnet/predict/image", files={"file": ("clear.png", faint_seven(0.5))})
    assert clear.json()["predictions"][0]["warnings"] == []


def test_a_blank_picture_is_still_refused(shipped_client):
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (240, 240, 235)).save(buffer, format="PNG")
    response = shipped_client.post("/v1/models/fashion-convnet/predict/image", files={"file": ("blank.png", buffer.getvalue())})
    assert response.status_code == 415 and "no ink found" in response.text


def test_the_page_shows_the_warning_with_its_answer(shipped_client):
    files = {"file": ("faint.png", faint_seven(0.05))}
    answer = shipped_client.post("/ui/api/predict", data={"model": "mnist-convnet"}, files=files).json()
    assert [w["code"] for w in answer["warnings"]] == ["low_contrast"]  # what the page's script shows
    page = shipped_client.post("/", data={"model": "mnist-convnet"}, files=files)  # the form without JavaScript
    assert page.status_code == 200
    assert 'data-code="low_contrast"' in page.text and "stands out only faintly" in page.text
