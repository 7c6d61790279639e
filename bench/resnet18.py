"""A ResNet-18-sized model at 224x224 for the big-model benchmark, published into a model repository.

    .venv/bin/python bench/resnet18.py --repository /tmp/bench-models      # -> /tmp/bench-models/resnet18-bench/1
    .venv/bin/python bench/resnet18.py                                      # into a new temporary repository

ResNet-18 (He et al. 2016; torchvision's layout: 7x7/2 stem, 3x3/2 max pool, four stages of two basic
blocks at 64, 128, 256, 512 channels, global average pool, 1000-way dense layer), written here because
torchvision's CPU build for this torch is not installable on this machine (its only wheel is the CUDA
one, which fails to load against torch's CPU build). Random weights, seeded; batch norm's running
statistics are set by a few random batches so that activations keep a sensible scale, and the last layer
is scaled so that the softmax is not one-hot (a top-5 that means something). ~1.8 G multiply-adds per picture.

Published as training and the importer publish (service/model_import/publish.py): model.onnx and a model
card (docs/models.md: resize-crop 256 -> 224, bilinear, ImageNet mean / std, NCHW RGB float32) renamed into
place as the next version.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service.model_import.publish import publish  # noqa: E402

NAME = "resnet18-bench"
SIZE, RESIZE_SHORTER = 224, 256
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLASSES = 1000
OPSET = 18


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        stages, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)
        return torch.softmax(self.fc(features), dim=1)


def build(seed: int = 0) -> ResNet18:
    torch.manual_seed(seed)
    model = ResNet18()
    model.train()
    with torch.no_grad():
        for _ in range(3):  # batch norm's running statistics from random pictures
            model(torch.randn(8, 3, SIZE, SIZE))
        model.fc.weight.mul_(20.0)  # a spread-out softmax: probabilities that differ, a meaningful top 5
    return model.eval()


def export(model: nn.Module) -> onnx.ModelProto:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (torch.rand(2, 3, SIZE, SIZE),), input_names=["input"], output_names=["probabilities"],
            opset_version=OPSET, dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=1024)}},
            external_data=False, dynamo=True, verbose=False,
        )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_parity(proto: onnx.ModelProto, model: nn.Module, pictures: int = 8) -> float:
    """The largest difference between ONNX Runtime's and torch's probabilities on random inputs."""
    inputs = torch.randn(pictures, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(inputs).numpy()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"input": inputs.numpy()})[0]
    difference = float(np.abs(actual - expected).max())
    if difference > 1e-4 or (actual.argmax(1) != expected.argmax(1)).any():
        raise SystemExit(f"ONNX Runtime and torch disagree: max abs difference {difference:.3g}")
    return difference


def card(parameters: int, parity: float) -> dict:
    classes = [f"class-{index:03d}" for index in range(CLASSES)]
    return {
        "name": NAME,
        "task": "images",
        "classes": classes,
        "architecture": {"arch": "resnet18", "parameters": parameters,
                         "description": "ResNet-18 (torchvision's layout), random weights, for benchmarks"},
        "input": {"name": "input", "layout": "NCHW", "channels": 3, "color_order": "RGB", "height": SIZE,
                  "width": SIZE, "dtype": "float32", "range": [0.0, 1.0], "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                  "shape": ["N", 3, SIZE, SIZE]},
        "output": {"name": "probabilities", "kind": "probabilities", "shape": ["N", CLASSES], "dtype": "float32"},
        "preprocessing": {
            "method": "resize-crop", "resize_shorter": RESIZE_SHORTER, "interpolation": "bilinear",
            "description": f"shorter side to {RESIZE_SHORTER} (bilinear), centre {SIZE}x{SIZE}, [0, 1], ImageNet mean / std",
        },
        "source": {"file": "bench/resnet18.py", "weights": "random (seed 0)",
                   "parity_max_abs_difference": parity, "torch": torch.__version__},
        "onnx": {"file": "model.onnx", "opset": OPSET},
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository to publish into (default: a new temporary directory, printed)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build()
    proto = export(model)
    parity = check_parity(proto, model)
    repository = args.repository or Path(tempfile.mkdtemp(prefix="bench-models-"))
    version_dir = publish(repository, NAME, proto, card(sum(p.numel() for p in model.parameters()), parity))
    print(f"published {version_dir} (ONNX Runtime against torch: max abs difference {parity:.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
