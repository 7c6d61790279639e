"""The v1 data path in isolation: instances to a batch, probabilities to answers."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import InvalidInput
from service.predictions import check_pixels, decode_base64_picture, format_predictions, pixels_to_batch


def test_format_predictions_lists_every_class_and_the_best_first():
    probs = np.array([[0.1, 0.7, 0.2], [0.3, 0.3, 0.4]], dtype=np.float32)
    answers = format_predictions(probs, ["a", "b", "c"], top_k=2)
    assert answers[0]["label"] == "b"
    assert answers[0]["probabilities"] == pytest.approx({"a": 0.1, "b": 0.7, "c": 0.2})
    assert [t["label"] for t in answers[0]["top"]] == ["b", "c"]
    # Ties keep class order; top_k is clipped to the number of classes.
    assert [t["label"] for t in format_predictions(probs[1:], ["a", "b", "c"], top_k=99)[0]["top"]] == ["c", "a", "b"]
    assert all(isinstance(v, float) for v in answers[0]["probabilities"].values())


def test_format_predictions_refuses_a_class_count_mismatch():
    with pytest.raises(ValueError):
        format_predictions(np.ones((1, 3), dtype=np.float32) / 3, ["a", "b"], top_k=1)


def test_pixels_to_batch_accepts_each_layout_and_keeps_order():
    x = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    for instances in (x.tolist(), x.reshape(3, 784).tolist(), x.reshape(3, 1, 28, 28).tolist(),
                      [x[0].tolist(), x[1].reshape(784).tolist(), x[2][None].tolist()]):
        np.testing.assert_array_equal(pixels_to_batch(instances), x[:, None])


def test_check_pixels_clips_slack_and_rejects_the_rest():
    slack = np.array([[-0.0005, 1.0005]], dtype=np.float32)
    np.testing.assert_array_equal(check_pixels(slack, "x"), [[0.0, 1.0]])
    for bad in ([[np.nan, 0.5]], [[np.inf, 0.5]], [[0.5, 1.5]], [[-0.2, 0.5]]):
        with pytest.raises(InvalidInput):
            check_pixels(np.array(bad, dtype=np.float32), "x")


def test_decode_base64_picture():
    assert decode_base64_picture(0, {"image_base64": "aGVs\nbG8="}) == b"hello"
    assert decode_base64_picture(0, {"image_base64": "data:image/png;base64,aGVsbG8="}) == b"hello"
    for bad in ({"image_base64": "!!"}, {"image_base64": 5}, {"image_base64": "aGVsbG8=", "x": 1}):
        with pytest.raises(InvalidInput):
            decode_base64_picture(0, bad)


def test_many_classes_are_ranked_as_few_are_ties_in_class_order():
    """Above MANY_CLASSES the ranking is numpy's, for all rows at once: the same top, ties in class order."""
    rng = np.random.default_rng(3)
    classes = [f"class-{i}" for i in range(1000)]
    probs = rng.dirichlet(np.ones(1000), size=3).astype(np.float32)
    probs[1, [900, 17, 400]] = probs[1].max() + 0.01  # a three-way tie at the top, out of class order
    answers = format_predictions(probs, classes, 5)
    for row, answer in zip(probs.tolist(), answers, strict=True):
        expected = sorted(range(1000), key=row.__getitem__, reverse=True)[:5]
        assert [t["label"] for t in answer["top"]] == [classes[i] for i in expected]
        assert answer["label"] == classes[expected[0]] and len(answer["probabilities"]) == 1000
    assert [t["label"] for t in answers[1]["top"][:3]] == ["class-17", "class-400", "class-900"]
