"""`python -m service import`: configs and flags become complete cards, logits get a Softmax, versions appear
atomically, and every refusal says why, exits 2 and publishes nothing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.inference.card import parse_card
from service.model_import.cli import main as import_main
from tests.onnx_models import make_photo_classifier
from tests.service.conftest import PROJECT_ROOT
from tests.service.imported_models import build_models


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, list]:
    directory = tmp_path_factory.mktemp("sources")
    return directory, build_models(directory)


def run_import(model_path: Path, name: str, repository: Path, *args: str) -> int:
    return import_main([str(model_path), "--name", name, "--model-repository", str(repository), *args])


def test_the_command_publishes_a_complete_card_and_the_next_version(sources, tmp_path):
    directory, models = sources
    clip = models[0]
    command = [sys.executable, "-m", "service", "import", str(clip.onnx_path), "--name", clip.name, "--model-repository", str(tmp_path), *clip.args]
    for version in (1, 2):
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"published {clip.name} version {version}" in done.stdout
    version_dir = tmp_path / clip.name / "2"
    assert sorted(p.name for p in (tmp_path / clip.name).iterdir()) == ["1", "2"]  # no staging directory left
    card = json.loads((version_dir / "model.json").read_text())
    model_bytes = (version_dir / "model.onnx").read_bytes()
    assert card["onnx"]["sha256"] == hashlib.sha256(model_bytes).hexdigest() and card["onnx"]["opset"] == 17
    assert card["version"] == 2 and card["created_at"].endswith("Z") and "training" not in card
    assert card["source"]["sha256"] == hashlib.sha256(clip.onnx_path.read_bytes()).hexdigest()
    assert card["source"]["config"] == "preprocessor_config.json" and card["source"]["config_kind"] == "huggingface"
    assert card["source"]["softmax_appended"] is True and card["source"]["original_output"] == "logits"
    assert card["input"] | {} == card["input"] and card["input"]["shape"] == ["N", 3, 24, 32]
    assert {k: card["input"][k] for k in ("name", "layout", "channels", "color_order", "height", "width", "dtype")} == {
        "name": "pixel_values", "layout": "NCHW", "channels": 3, "color_order": "RGB", "height": 24, "width": 32, "dtype": "float32"}
    assert card["input"]["range"] == pytest.approx([0.0, 1.0])
    assert card["preprocessing"] | {"description": ""} == {
        "method": "resize-crop", "interpolation": "bicubic", "resize_shorter": 40, "crop_rounding": "floor",
        "transparency": "drop", "description": ""}
    assert card["output"] == {"name": "probabilities", "kind": "probabilities", "shape": ["N", 5], "dtype": "float32"}
    assert card["classes"][2] == "great white shark"
    parse_card(card)
    # The served graph answers the softmax of the original's logits, and carries the card in its metadata.
    x = np.random.default_rng(0).normal(size=(3, 3, 24, 32)).astype(np.float32)
    logits = ort.InferenceSession(str(clip.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
    served = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(["probabilities"], {"pixel_values": x})[0]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(served, expected / expected.sum(axis=1, keepdims=True), atol=1e-6)
    embedded = {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}
    assert json.loads(embedded["model_card"])["version"] == 2


def test_timm_flags_and_dynamic_sizes_become_the_right_cards(sources, tmp_path):
    _, models = sources
    for model in models[1:]:
        assert run_import(model.onnx_path, model.name, tmp_path, *model.args) == 0
    timm = json.loads((tmp_path / "timm-nhwc" / "1" / "model.json").read_text())
    assert timm["input"]["layout"] == "NHWC" and timm["input"]["shape"] == ["N", 32, 32, 3]
    assert timm["preprocessing"]["resize_shorter"] == 35 and timm["preprocessing"]["interpolation"] == "bilinear"
    assert timm["input"]["mean"] == [0.485, 0.456, 0.406] and timm["source"]["softmax_appended"] is False
    assert timm["output"]["name"] == "probs" and timm["source"]["config_kind"] == "timm"
    fp16 = json.loads((tmp_path / "flags-fp16" / "1" / "model.json").read_text())
    assert fp16["input"]["dtype"] == "float16" and fp16["preprocessing"]["method"] == "resize"
    assert fp16["input"]["mean"] is None and fp16["source"]["flags"]["interpolation"] == "lanczos"
    grey = json.loads((tmp_path / "grey-letterbox" / "1" / "model.json").read_text())
    assert grey["input"]["color_order"] == "L" and grey["input"]["range"] == [-1.0, 1.0]
    assert grey["preprocessing"]["size"] == [20, 30] and grey["preprocessing"]["pad_color"] == [0]
    assert grey["preprocessing"]["transparency"] == "white" and fp16["preprocessing"]["transparency"] == "drop"
    assert grey["preprocessing"]["description"].endswith("transparency composited on white")


def _two_inputs(path: Path) -> None:
    model = make_photo_classifier()
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1]))
    onnx.save(model, path)


def _rank3_output(path: Path) -> None:
    model = make_photo_classifier(output_name="scores")
    model.graph.node.append(helper.make_node("Unsqueeze", ["scores", "axes"], ["logits"]))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([2], dtype=np.int64), "axes"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5, 1]))
    onnx.save(model, path)


def _config(path: Path, **changes) -> None:
    config = json.loads((path.parent / "preprocessor_config.json").read_text()) | changes
    path.write_text(json.dumps(config))


REFUSALS = {
    "labels that do not match the output": (lambda d: None, ["--labels", "labels4.txt", "--config", "preprocessor_config.json"],
                                            "answers 5 classes but labels4.txt lists 4 labels"),
    "an empty label": (lambda d: (d / "gap.txt").write_text("a\nb\n\nd\ne\n"), ["--labels", "gap.txt", "--config", "preprocessor_config.json"],
                       "(empty lines [3])"),
    "an unknown config key": (lambda d: _config(d / "odd.json", do_magic=True, shear=0.1), ["--labels", "labels5.txt", "--config", "odd.json"],
                              "unknown preprocessor_config.json keys: do_magic, shear"),
    "a config setting the card cannot express": (lambda d: _config(d / "pad.json", do_pad=True), ["--labels", "labels5.txt", "--config", "pad.json"],
                                                 "do_pad: true is not supported"),
    "a model config instead of a preprocessor config": (
        lambda d: (d / "model-config.json").write_text(json.dumps({"architectures": ["ViTForImageClassification"], "id2label": {}})),
        ["--labels", "labels5.txt", "--config", "model-config.json"], "pass the model's preprocessor_config.json"),
    "timm's border crop": (
        lambda d: (d / "border.json").write_text(json.dumps({"input_size": [3, 24, 32], "crop_mode": "border"})),
        ["--labels", "labels5.txt", "--config", "border.json"], "crop_mode 'border' is not supported; accepted: center, squash"),
    "a file that is not ONNX": (lambda d: (d / "clip.onnx").write_bytes(b"not a model"), ["--labels", "labels5.txt"], "is not an ONNX model"),
    "two inputs": (lambda d: _two_inputs(d / "clip.onnx"), ["--labels", "labels5.txt"], "the graph takes 2 inputs (pixel_values, mask)"),
    "a 3-D output": (lambda d: _rank3_output(d / "clip.onnx"), ["--labels", "labels5.txt"], "has rank 3; accepted: rank 2"),
    "a layout that the graph cannot have": (lambda d: None, ["--labels", "labels5.txt", "--layout", "NHWC"], "its channel axis must be 1 or 3"),
    "a size the graph does not take": (lambda d: None, ["--labels", "labels5.txt", "--size", "32x32"], "the graph takes 24x32 pictures"),
    "a normalisation of the wrong width": (lambda d: None, ["--labels", "labels5.txt", "--mean", "0.5,0.5", "--std", "0.2,0.2"],
                                           "mean has 2 values; one per channel (3)"),
    "an ambiguous layout": (lambda d: onnx.save(make_photo_classifier(layout="NHWC", height=3, width=3), d / "clip.onnx"),
                            ["--labels", "labels5.txt"], "pass --layout NCHW or --layout NHWC"),
    "a dynamic size with no size given": (lambda d: onnx.save(make_photo_classifier(dynamic_size=True), d / "clip.onnx"),
                                          ["--labels", "labels5.txt"], "give the size pictures are made at"),
}


@pytest.mark.parametrize(("prepare", "args", "words"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_say_what_is_wrong_exit_2_and_publish_nothing(sources, tmp_path, capsys, prepare, args, words):
    directory, models = sources
    work = tmp_path / "work"
    work.mkdir()
    for file in directory.iterdir():
        (work / file.name).write_bytes(file.read_bytes())
    prepare(work)
    repository = tmp_path / "repository"
    repository.mkdir()
    args = [str(work / a) if (work / a).exists() else a for a in args]
    assert run_import(work / "clip.onnx", "photo", repository, *args) == 2
    message = capsys.readouterr().err
    assert "refused" in message and words in message, message
    assert list(repository.iterdir()) == []  # nothing published, not even the model's directory


def test_a_layout_outside_the_contract_is_refused_by_the_command_line(sources, tmp_path):
    _, models = sources
    done = subprocess.run(
        [sys.executable, "-m", "service", "import", str(models[0].onnx_path), "--name", "x", "--labels", "l.txt", "--layout", "NCWH",
         "--model-repository", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "invalid choice: 'NCWH' (choose from NCHW, NHWC)" in done.stderr.replace("'NCHW', 'NHWC'", "NCHW, NHWC")
    assert list(tmp_path.iterdir()) == []


def test_repeated_labels_are_told_apart_by_their_column(sources, tmp_path):
    directory, models = sources
    (tmp_path / "imagenet-like.txt").write_text("crane\ntench\ncrane\nmaillot\nmaillot\n")
    clip = models[0]
    assert run_import(clip.onnx_path, "twice", tmp_path, "--labels", str(tmp_path / "imagenet-like.txt"),
                      "--config", str(directory / "preprocessor_config.json")) == 0
    card = json.loads((tmp_path / "twice" / "1" / "model.json").read_text())
    assert card["classes"] == ["crane", "tench", "crane (2)", "maillot", "maillot (4)"]


def test_a_sigmoid_output_is_refused_unless_told_to_take_logits(tmp_path, capsys):
    model = make_photo_classifier(output_name="scores")
    model.graph.node.append(helper.make_node("Sigmoid", ["scores"], ["multilabel"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("multilabel", TensorProto.FLOAT, ["batch", 5]))
    onnx.save(model, tmp_path / "sigmoid.onnx")
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\ne\n")
    repository = tmp_path / "repository"
    assert run_import(tmp_path / "sigmoid.onnx", "multi", repository, "--labels", str(tmp_path / "labels.txt")) == 2
    assert "comes from a Sigmoid" in capsys.readouterr().err
    assert run_import(tmp_path / "sigmoid.onnx", "multi", repository, "--labels", str(tmp_path / "labels.txt"), "--output-kind", "logits") == 0


def test_probabilities_made_without_a_softmax_node_are_not_taken_for_logits(tmp_path, capsys):
    """A softmax written out as Exp / ReduceSum / Div: appending a Softmax would flatten its answers silently."""
    model = make_photo_classifier(output_name="scores")
    graph = model.graph
    graph.node.extend([helper.make_node("Exp", ["scores"], ["exp"]),
                       helper.make_node("ReduceSum", ["exp", "axes"], ["total"], keepdims=1),
                       helper.make_node("Div", ["exp", "total"], ["probs"])])
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "axes"))
    output = graph.output[0]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probs", output.type.tensor_type.elem_type, ["batch", 5]))
    onnx.save(model, tmp_path / "manual.onnx")
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\ne\n")
    repository = tmp_path / "repository"
    assert run_import(tmp_path / "manual.onnx", "manual", repository, "--labels", str(tmp_path / "labels.txt")) == 2
    assert "made by no Softmax node, but its answers are probabilities" in capsys.readouterr().err
    assert not repository.exists() or not any(repository.iterdir())
    assert run_import(tmp_path / "manual.onnx", "manual", repository, "--labels", str(tmp_path / "labels.txt"),
                      "--output-kind", "probabilities") == 0
    card = json.loads((repository / "manual" / "1" / "model.json").read_text())
    assert card["output"]["name"] == "probs" and card["source"]["softmax_appended"] is False


FAST_VIT = {  # as transformers' fast image processors save themselves: every setting, unset ones as null
    "crop_size": None, "data_format": "channels_first", "default_to_square": True, "device": None, "disable_grouping": None,
    "do_center_crop": None, "do_convert_rgb": None, "do_normalize": True, "do_pad": None, "do_rescale": True, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "ViTImageProcessorFast", "image_std": [0.5, 0.5, 0.5],
    "input_data_format": None, "pad_size": None, "resample": 2, "rescale_factor": 0.00392156862745098, "return_tensors": None,
    "size": {"height": 224, "width": 224},
}
CONFIGS = {
    "a fast processor's nulls take the defaults": (FAST_VIT, {"method": "resize", "size": [224, 224], "range": [0.0, 1.0],
                                                              "mean": [0.5] * 3, "interpolation": "bilinear"}),
    "DeiT: a square resize, then the crop": (
        {"size": {"height": 256, "width": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "resample": 3,
         "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
        {"method": "resize-crop", "resize_size": [256, 256], "size": [224, 224], "interpolation": "bicubic"}),
    "ConvNeXt at 384: a plain resize": (
        {"size": {"shortest_edge": 384}, "crop_pct": 0.875, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
        {"method": "resize", "size": [384, 384]}),
    "a legacy integer size without a crop is a square": (
        {"size": 224, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "feature_extractor_type": "ViTFeatureExtractor"},
        {"method": "resize", "size": [224, 224]}),
    "a legacy integer size with a crop is the shorter side": (
        {"size": 224, "do_center_crop": True, "crop_size": 224, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
        {"method": "resize-crop", "resize_shorter": 224, "size": [224, 224]}),
    # transformers' DeiTImageProcessor reads a bare integer size as a square (get_size_dict's default), crop or not.
    "DeiT's legacy integer size is a square before the crop": (
        {"size": 256, "do_center_crop": True, "crop_size": 224, "resample": 3, "feature_extractor_type": "DeiTFeatureExtractor",
         "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
        {"method": "resize-crop", "resize_size": [256, 256], "resize_shorter": None, "size": [224, 224]}),
    "CLIP's legacy integer size is the shorter side": (
        {"size": 224, "do_center_crop": True, "crop_size": 224, "feature_extractor_type": "CLIPFeatureExtractor",
         "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
        {"method": "resize-crop", "resize_shorter": 224, "resize_size": None, "size": [224, 224]}),
    "LeViT resizes the shorter side to 256/224 of its size": (
        {"size": {"shortest_edge": 224}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
         "image_processor_type": "LevitImageProcessor", "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
        {"method": "resize-crop", "resize_shorter": 256, "size": [224, 224]}),
    "MobileViT as published: no normalisation, BGR, the integer size the shorter side": (
        {"crop_size": 256, "do_center_crop": True, "do_flip_channel_order": True, "do_resize": True,
         "feature_extractor_type": "MobileViTFeatureExtractor", "resample": 2, "size": 288},
        {"color_order": "BGR", "mean": None, "std": None, "range": [0.0, 1.0], "resize_shorter": 288, "size": [256, 256]}),
    "MobileViT's channel flip is BGR, its mean reversed": (
        {"size": {"shortest_edge": 288}, "do_center_crop": True, "crop_size": {"height": 256, "width": 256},
         "do_flip_channel_order": True, "do_normalize": True, "image_mean": [0.1, 0.2, 0.3], "image_std": [1, 1, 1]},
        {"color_order": "BGR", "mean": [0.3, 0.2, 0.1]}),
    "no rescale: raw 0..255": ({"size": {"height": 8, "width": 8}, "do_rescale": False, "do_normalize": False}, {"range": [0.0, 255.0]}),
    "an older timm config.json: the default_cfg flat beside num_features": (
        {"architecture": "resnet50", "num_classes": 1000, "num_features": 2048, "global_pool": "avg", "url": "", "input_size": [3, 224, 224],
         "pool_size": [7, 7], "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
         "first_conv": "conv1", "classifier": "fc"},
        {"method": "resize-crop", "resize_shorter": 256, "size": [224, 224], "interpolation": "bicubic"}),
    "timm squash": ({"input_size": [3, 240, 240], "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bicubic"},
                    {"method": "resize-crop", "resize_size": [240, 240], "size": [240, 240], "mean": [0.485, 0.456, 0.406]}),
}


@pytest.mark.parametrize(("config", "expected"), CONFIGS.values(), ids=CONFIGS.keys())
def test_configs_become_card_fields(config, expected):
    from service.model_import.configs import read_config

    _, fields = read_config(config, "config.json")
    assert {key: fields.get(key) for key in expected} == expected


def test_an_optimum_export_with_every_dimension_dynamic_takes_its_layout_from_the_config(sources, tmp_path, capsys):
    """Optimum exports pixel_values as [batch_size, num_channels, height, width], all dynamic: a Hugging Face config
    says channels-first RGB at its size; without one, the command asks for the layout."""
    directory, _ = sources
    model = make_photo_classifier(output_name="logits")
    for axis, name in enumerate(["batch_size", "num_channels", "height", "width"]):
        dim = model.graph.input[0].type.tensor_type.shape.dim[axis]
        dim.Clear()
        dim.dim_param = name
    onnx.save(model, tmp_path / "optimum.onnx")
    (tmp_path / "vit.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "resample": 2, "rescale_factor": 1 / 255, "size": {"height": 24, "width": 32}, "image_processor_type": "ViTImageProcessor"}))
    labels = str(directory / "labels5.txt")
    repository = tmp_path / "repository"
    assert run_import(tmp_path / "optimum.onnx", "vit", repository, "--labels", labels, "--size", "24x32") == 2
    assert "pass --layout NCHW or --layout NHWC" in capsys.readouterr().err
    assert run_import(tmp_path / "optimum.onnx", "vit", repository, "--labels", labels, "--config", str(tmp_path / "vit.json")) == 0
    card = parse_card(json.loads((repository / "vit" / "1" / "model.json").read_text()))
    assert (card.input.layout, card.input.channels, card.input.height, card.input.width) == ("NCHW", 3, 24, 32)
    assert card.preprocessing.size == (24, 32) and card.preprocessing.method == "resize"
