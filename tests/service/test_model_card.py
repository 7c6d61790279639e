"""The model card contract: legacy cards keep their meaning, new fields are checked, the graph is held to the card."""

from __future__ import annotations

import asyncio
import copy

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from service.inference.card import CardError, check_graph, parse_card
from service.inference.model_input import ModelInput
from service.inference.registry import UNAVAILABLE, ModelRepository
from tests.onnx_models import make_card, make_photo_classifier, write_version
from tests.service.conftest import make_settings

SHIPPED = ["mnist-convnet", "mnist-mlp", "fashion-convnet", "fashion-mlp"]


def photo_card(**changes) -> dict:
    card = make_card("photo", 1, b"model", classes=list("abcde"))
    card["task"] = "image-classification"
    card["input"] = {"name": "pixel_values", "layout": "NCHW", "channels": 3, "height": 24, "width": 32, "dtype": "float32",
                     "range": [0.0, 1.0], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    card["output"] = {"name": "probabilities", "kind": "probabilities"}
    card["preprocessing"] = {"method": "resize-crop", "resize_shorter": 40, "interpolation": "bicubic"}
    for section, values in changes.items():
        card[section] = {**card[section], **values} if isinstance(values, dict) else values
    return card


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_cards_read_as_the_models_they_describe(name):
    import json
    from pathlib import Path

    raw = json.loads((Path(__file__).resolve().parents[2] / "models" / name / "1" / "model.json").read_text())
    card = parse_card(raw)
    spec = card.input
    assert (spec.layout, spec.channels, spec.color_order, spec.height, spec.width, spec.dtype) == ("NCHW", 1, "L", 28, 28, "float32")
    assert spec.range == (0.0, 1.0) and spec.mean is None and spec.std is None
    assert card.output.kind == "probabilities" and card.is_ink
    assert ModelInput(spec).is_digits_shape


def test_a_legacy_card_without_softmax_means_logits_and_unknown_sections_are_kept():
    card = make_card("digits", 1, b"x")
    card["output"]["activation"] = "none"
    card["calibration"] = {"temperature": 1.3}
    parsed = parse_card(card)
    assert parsed.output.kind == "logits"
    assert parsed.model_extra["calibration"] == {"temperature": 1.3}


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"input": {"layout": "NHCW"}}, "'input.layout'"),
        ({"input": {"channels": 2}}, "'input.channels'"),
        ({"input": {"color_order": "L"}}, "color_order 'L' does not fit 3"),
        ({"input": {"mean": [0.5, 0.5]}}, "mean has 2 values"),
        ({"input": {"std": [0.2, 0.0, 0.3]}}, "must be positive"),
        ({"input": {"std": None}}, "both mean and std"),
        ({"input": {"range": [1.0, 0.0]}}, "low < high"),
        ({"input": {"dtype": "uint8"}}, "raw pixels"),
        ({"input": {"dtype": "int64"}}, "'input.dtype'"),
        ({"preprocessing": {"method": "stretch"}}, "unknown method 'stretch'"),
        ({"preprocessing": {"resize_shorter": 20}}, "smaller than the 24x32 crop"),
        ({"preprocessing": {"resize_size": [48, 48]}}, "exactly one of resize_shorter"),
        ({"preprocessing": {"interpolation": "cubic"}}, "'preprocessing.interpolation'"),
        ({"preprocessing": {"method": "mnist-digit"}}, "1-channel 28x28"),
        ({"input": {"height": None}}, "preprocessing.size"),
        ({"output": {"kind": "scores"}}, "'output.kind'"),
    ],
)
def test_a_card_that_breaks_the_contract_is_refused_naming_the_field(changes, words):
    with pytest.raises(CardError) as refused:
        parse_card(photo_card(**copy.deepcopy(changes)))
    assert words in str(refused.value)


def test_a_dynamic_size_takes_the_preprocessing_size():
    card = parse_card(photo_card(input={"height": None, "width": None}, preprocessing={"size": [24, 32]}))
    assert (card.input.height, card.input.width) == (24, 32) and card.input.shape == ["N", 3, 24, 32]


def card_changes(**changes) -> dict:
    """photo_card's sections as changes to write_version's card (which keeps its own name, version and sha256)."""
    return {k: v for k, v in photo_card(**changes).items() if k not in ("name", "version", "onnx")}


def _session(**options) -> ort.InferenceSession:
    return ort.InferenceSession(make_photo_classifier(**options).SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("graph", "card_changes", "words"),
    [
        ({}, {"input": {"name": "image"}}, "promises one input 'image'"),
        ({}, {"input": {"layout": "NHWC"}}, "dimension 1 is 3, the card says 24"),
        ({}, {"input": {"height": 32, "width": 24}}, "dimension 2 is 24, the card says 32"),
        ({"dtype": TensorProto.FLOAT16}, {}, "the card says float32"),
        ({}, {"output": {"name": "scores"}}, "no output 'scores'"),
        ({"num_classes": 4}, {}, "[N, 5] (one column per class)"),
    ],
)
def test_the_graph_is_held_to_the_card(graph, card_changes, words):
    session = _session(output_name="probabilities", softmax=True, **graph)
    with pytest.raises(CardError) as refused:
        check_graph(session.get_inputs(), session.get_outputs(), parse_card(photo_card(**card_changes)))
    assert words in str(refused.value)


def test_a_mismatched_version_is_unavailable_with_the_reason_and_the_others_serve(tmp_path):
    good = make_photo_classifier(output_name="probabilities", softmax=True).SerializeToString()
    write_version(tmp_path, "photo", 1, onnx_bytes=good, card_changes=card_changes())
    write_version(tmp_path, "photo", 2, onnx_bytes=good, card_changes=card_changes(input={"layout": "NHWC"}))

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path))
        await repository.start()
        try:
            statuses = {s.version: s for s in repository.describe("photo").versions}
            assert statuses[2].state == UNAVAILABLE and "the card (NHWC) describes [N, 24, 32, 3]" in statuses[2].reason
            served = repository.get("photo")
            assert served.version == 1 and served.input.instance_shape == (3, 24, 32)
            x = np.random.default_rng(0).uniform(-2, 2, (3, 3, 24, 32)).astype(np.float32)
            probabilities = await served.predict(x)
            assert probabilities.shape == (3, 5) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
        finally:
            await repository.stop()

    asyncio.run(scenario())


def test_logits_cards_and_fixed_batch_graphs_are_served_as_probabilities(tmp_path):
    """A card that says logits gets its softmax from the server; a graph fixed to batch 1 runs a batch picture by picture."""
    model = make_photo_classifier(batch=1, output_name="logits")
    write_version(tmp_path, "raw", 1, onnx_bytes=model.SerializeToString(), card_changes=card_changes(output={"name": "logits", "kind": "logits"}))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path))
        await repository.start()
        try:
            x = np.random.default_rng(1).uniform(-2, 2, (3, 3, 24, 32)).astype(np.float32)
            served = await repository.get("raw").predict(x)
        finally:
            await repository.stop()
        logits = np.concatenate([session.run(None, {"pixel_values": x[i : i + 1]})[0] for i in range(3)]).astype(np.float64)
        expected = np.exp(logits - logits.max(axis=1, keepdims=True))
        np.testing.assert_allclose(served, expected / expected.sum(axis=1, keepdims=True), atol=1e-6)

    asyncio.run(scenario())
