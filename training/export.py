"""ONNX export with a parity check against PyTorch (publishing a version is service.model_import.publish's)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from training.models import WithSoftmax
from training.train import to_tensor


OPSET = 18
MIN_PARITY_IMAGES = 512
PARITY_TOLERANCE = 1e-5


class ExportRefused(RuntimeError):
    """The exported graph is not faithful to the trained model (or not well-formed); nothing was published."""


def export_onnx(classifier: nn.Module, input_shape: tuple[int, int, int] = (1, 28, 28)) -> onnx.ModelProto:
    """Trace classifier + softmax into an ONNX graph: input `input` [N, *input_shape], output `probabilities` [N,C]."""
    model = WithSoftmax(classifier).eval()
    batch = torch.export.Dim("N", min=1, max=1 << 20)
    # The exporter narrates its steps and warns about optional packages; keep the console for training.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (torch.rand(2, *input_shape),),
            input_names=["input"],
            output_names=["probabilities"],
            opset_version=OPSET,
            dynamic_shapes={"input": {0: batch}},
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportRefused(f"the exported graph fails onnx.checker: {exc}") from exc
    return proto


def onnx_probabilities(proto: onnx.ModelProto, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    chunks = [
        session.run(["probabilities"], {"input": to_tensor(images[i : i + batch_size]).numpy()})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def check_parity(proto: onnx.ModelProto, classifier: nn.Module, images: np.ndarray) -> np.ndarray:
    """Compare ONNX Runtime with PyTorch on `images`; return the ONNX probabilities if they agree."""
    if len(images) < MIN_PARITY_IMAGES:
        raise ExportRefused(f"parity needs at least {MIN_PARITY_IMAGES} images, got {len(images)}")
    expected = []
    with torch.no_grad():
        model = WithSoftmax(classifier).eval()
        for i in range(0, len(images), 1000):
            expected.append(model(to_tensor(images[i : i + 1000])).numpy())
    expected = np.concatenate(expected)
    actual = onnx_probabilities(proto, images)
    if actual.shape != expected.shape:
        raise ExportRefused(f"ONNX output shape {actual.shape} differs from PyTorch's {expected.shape}")
    difference = float(np.abs(actual - expected).max())
    disagreements = int((actual.argmax(1) != expected.argmax(1)).sum())
    if difference > PARITY_TOLERANCE or disagreements:
        raise ExportRefused(
            f"ONNX Runtime and PyTorch disagree on {len(images)} images: max abs difference "
            f"{difference:.3g} (allowed {PARITY_TOLERANCE}), {disagreements} different top classes"
        )
    return actual

