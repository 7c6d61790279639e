"""Request bodies for the serving benchmark and the decoding of each server's answer.

Every protocol sends the same picture: one MNIST test digit (pixels / 255, as a client's
`json.dumps(pixels.tolist())` writes them), one image per request.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MNIST_TEST_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def test_digit(index: int = 0) -> np.ndarray:
    """One MNIST test image as float32 [1, 1, 28, 28] in [0, 1]; a fixed synthetic stroke if the file is absent."""
    if MNIST_TEST_IMAGES.exists():
        with gzip.open(MNIST_TEST_IMAGES) as file:
            pixels = np.frombuffer(file.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[index]
    else:
        pixels = np.zeros((28, 28), dtype=np.uint8)
        pixels[6:22, 13:16] = 255
    return (pixels.astype(np.float64) / 255.0).astype(np.float32).reshape(1, 1, 28, 28)


@dataclass(frozen=True)
class Body:
    protocol: str  # "v1-json" | "v2-json" | "v2-binary"
    content: bytes
    content_type: str
    header_length: int | None = None  # Inference-Header-Content-Length for the binary extension


def make_bodies(image: np.ndarray) -> dict[str, Body]:
    pixels = [float(p) for p in image.astype(np.float64).reshape(-1)]
    v1 = json.dumps({"instances": [pixels]}).encode()
    v2 = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": pixels}]}).encode()
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 784 * 4}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    binary = header + image.astype("<f4").tobytes()
    return {
        "v1-json": Body("v1-json", v1, "application/json"),
        "v2-json": Body("v2-json", v2, "application/json"),
        "v2-binary": Body("v2-binary", binary, "application/octet-stream", len(header)),
    }


def decode_answer(protocol: str, headers: dict[str, str], content: bytes, classes: list[str]) -> np.ndarray:
    """The probabilities [1, C] a server answered, whatever its protocol."""
    if protocol == "v1-json":
        prediction = json.loads(content)["predictions"][0]["probabilities"]
        row = [prediction[c] for c in classes] if isinstance(prediction, dict) else prediction
        return np.asarray([row], dtype=np.float64)
    header_length = headers.get("inference-header-content-length")
    if header_length is None:
        output = json.loads(content)["outputs"][0]
        return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
    header = json.loads(content[: int(header_length)])
    output = header["outputs"][0]
    data = np.frombuffer(content[int(header_length) :], dtype="<f4")
    return data.astype(np.float64).reshape(output["shape"])
