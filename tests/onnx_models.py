"""Tiny ONNX classifiers for tests, built with onnx.helper (no torch), and repository writers.

The classifier is input [N,1,28,28] -> Flatten -> Gemm -> Softmax -> probabilities [N,C], with seeded
weights, so a test can compute the exact expected probabilities in numpy (`reference_probabilities`).
Broken variants cover what the model repository must reject: bytes that are not ONNX, a card whose
sha256 does not match the file, and a graph whose input is not [N,1,28,28].
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DIGIT_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def classifier_weights(seed: int, num_classes: int = 10, features: int = 784) -> tuple[np.ndarray, np.ndarray]:
    """The Gemm weights [features, C] and bias [C] of the tiny classifier built with this seed."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 0.5, size=(features, num_classes)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=num_classes).astype(np.float32)
    return weights, bias


def reference_probabilities(x: np.ndarray, seed: int, num_classes: int = 10) -> np.ndarray:
    """What the classifier built with `seed` answers for x [N,1,28,28], computed in numpy (float64)."""
    weights, bias = classifier_weights(seed, num_classes)
    logits = x.reshape(len(x), -1).astype(np.float64) @ weights.astype(np.float64) + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def make_classifier(
    *, seed: int = 0, num_classes: int = 10, input_shape: tuple = ("N", 1, 28, 28), opset: int = 17
) -> onnx.ModelProto:
    """input -> Flatten -> Gemm -> Softmax; `input_shape` other than [N,1,28,28] makes a mismatched model."""
    features = int(np.prod([d for d in input_shape[1:]]))
    weights, bias = classifier_weights(seed, num_classes, features)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "weights", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny-classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", num_classes])],
        initializer=[numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.checker.check_model(model)
    return model


def make_card(name: str, version: int, onnx_bytes: bytes, *, classes: list[str] | None = None, task: str = "digits") -> dict:
    """A model card as the training side writes it, with the sha256 of `onnx_bytes`."""
    classes = list(classes or (DIGIT_CLASSES if task == "digits" else FASHION_CLASSES))
    return {
        "name": name,
        "version": version,
        "task": task,
        "classes": classes,
        "architecture": {"arch": "softmax-regression", "parameters": 784 * len(classes) + len(classes), "description": "test model"},
        "input": {"name": "input", "shape": ["N", 1, 28, 28], "dtype": "float32", "range": [0.0, 1.0], "polarity": "white-on-black"},
        "output": {"name": "probabilities", "shape": ["N", len(classes)], "dtype": "float32", "activation": "softmax"},
        "preprocessing": {
            "method": "mnist-digit" if task == "digits" else "fashion-fit",
            "description": "test preprocessing",
        },
        "metrics": {"test_accuracy": 0.5, "test_split": "none (test model)", "test_size": 0, "validation_accuracy": 0.5},
        "training": {"dataset": "none", "split": "none", "epochs": 0, "seed": version, "wall_time_s": 0.0, "library_versions": {}},
        "onnx": {"file": "model.onnx", "opset": 17, "sha256": hashlib.sha256(onnx_bytes).hexdigest()},
        "created_at": "2026-01-01T00:00:00Z",
    }


def _deep_update(target: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value
    return target


def write_version(
    root: Path,
    name: str,
    version: int,
    *,
    seed: int | None = None,
    task: str = "digits",
    onnx_bytes: bytes | None = None,
    card_changes: dict | None = None,
    input_shape: tuple = ("N", 1, 28, 28),
) -> Path:
    """Write models/<name>/<version>/ atomically (temporary directory, then rename), as the trainer does.

    By default the model is the tiny classifier with seed = version; `onnx_bytes` replaces the file
    (the card's sha256 follows it), `card_changes` edits the card after the sha256 is computed.
    """
    if onnx_bytes is None:
        model = make_classifier(seed=version if seed is None else seed, input_shape=input_shape)
        onnx_bytes = model.SerializeToString()
    card = make_card(name, version, onnx_bytes, task=task)
    if card_changes:
        card = _deep_update(copy.deepcopy(card), card_changes)
    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
    (staging / "model.onnx").write_bytes(onnx_bytes)
    (staging / "model.json").write_text(json.dumps(card, indent=2))
    os.chmod(staging, 0o755)
    final = model_dir / str(version)
    os.rename(staging, final)
    return final


def write_bad_onnx(root: Path, name: str, version: int) -> Path:
    """A version whose model.onnx is not ONNX at all (its card's sha256 matches the bad bytes)."""
    return write_version(root, name, version, onnx_bytes=b"this is not an ONNX model")


def write_sha_mismatch(root: Path, name: str, version: int) -> Path:
    """A valid model whose card names another file's sha256."""
    return write_version(root, name, version, card_changes={"onnx": {"sha256": "0" * 64}})


def write_wrong_input_shape(root: Path, name: str, version: int) -> Path:
    """A valid model that wants [N,3,32,32] pictures instead of [N,1,28,28]."""
    return write_version(root, name, version, input_shape=("N", 3, 32, 32))


# --- colour classifiers for imported models (any size, NCHW or NHWC, logits or probabilities) -------------


def photo_weights(seed: int, features: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gemm weights scaled so the logits are of order 1: the probabilities then move with the pixels."""
    rng = np.random.default_rng(seed)
    weights = (rng.normal(0.0, 1.0, size=(features, num_classes)) / np.sqrt(features)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=num_classes).astype(np.float32)
    return weights, bias


def make_photo_classifier(
    *,
    seed: int = 0,
    num_classes: int = 5,
    layout: str = "NCHW",
    channels: int = 3,
    height: int = 24,
    width: int = 32,
    batch: object = "batch",
    dtype: int = TensorProto.FLOAT,
    softmax: bool = False,
    input_name: str = "pixel_values",
    output_name: str = "logits",
    dynamic_size: bool = False,
    opset: int = 17,
) -> onnx.ModelProto:
    """input -> (Cast) -> Flatten -> Gemm [-> Softmax]: a classifier of `channels` x `height` x `width` pictures
    whose answer depends on every pixel, its place and its channel. Logits unless `softmax`."""
    features = channels * height * width
    weights, bias = photo_weights(seed, features, num_classes)
    dims = [channels, height, width] if layout == "NCHW" else [height, width, channels]
    if dynamic_size:
        dims = [channels, "height", "width"] if layout == "NCHW" else ["height", "width", channels]
    nodes, source = [], input_name
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT))
        source = "as_float"
    nodes += [
        helper.make_node("Flatten", [source], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weights", "bias"], ["scores" if softmax else output_name]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "photo-classifier",
        [helper.make_tensor_value_info(input_name, dtype, [batch, *dims])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, num_classes])],
        initializer=[numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_small_convnet(*, seed: int = 0, num_classes: int = 10, side: int = 224, opset: int = 17) -> onnx.ModelProto:
    """A ResNet-shaped classifier with random weights: two strided 3x3 convolutions with ReLU, global average
    pooling, a dense layer; input [N, 3, side, side] float32, logits out."""
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.normal(0.0, 1.0, size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)

    initializers = {"w1": weight(16, 3, 3, 3), "w2": weight(32, 16, 3, 3), "fc": weight(num_classes, 32),
                    "fc_bias": rng.normal(0.0, 0.1, num_classes).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["pixel_values", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "fc", "fc_bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small-convnet",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
