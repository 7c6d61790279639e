"""Request bodies for the serving benchmark and the decoding of each server's answer.

Every protocol sends the same pictures: the first test pictures of the model's dataset, MNIST's digits or
Fashion-MNIST's items (pixels / 255, as a client's `json.dumps(pixels.tolist())` writes them), one per request
unless the benchmark asks for more.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

import numpy as np

from training.data import TEST_IMAGES, get_spec, verified_file



def test_pictures(count: int = 1, dataset: str = "mnist") -> np.ndarray:
    """The first test images of `dataset` as float32 [count, 1, 28, 28] in [0, 1]: MNIST's vendored in datasets/mnist/
    (sha256-checked), Fashion-MNIST's where Debian's dataset-fashion-mnist puts them (re-compressed, so unchecked). A
    model is sent its own kind of picture: a clothing model sent digits would answer an out-of-distribution warning
    every time, and the benchmark would time the warnings."""
    path = verified_file("mnist", TEST_IMAGES) if dataset == "mnist" else get_spec(dataset).default_dir / TEST_IMAGES
    with gzip.open(path) as file:
        pixels = np.frombuffer(file.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    return (pixels.astype(np.float64) / 255.0).astype(np.float32).reshape(count, 1, 28, 28)


@dataclass(frozen=True)
class Body:
    protocol: str  # "v1-json" | "v2-json" | "v2-binary"
    content: bytes
    content_type: str
    header_length: int | None = None  # Inference-Header-Content-Length for the binary extension


def make_bodies(images: np.ndarray) -> dict[str, Body]:
    """Each protocol's request for the images [N, 1, 28, 28]."""
    shape = [len(images), 1, 28, 28]
    instances = [[float(p) for p in image.astype(np.float64).reshape(-1)] for image in images]
    v1 = json.dumps({"instances": instances}).encode()
    data = [p for pixels in instances for p in pixels]
    v2 = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}).encode()
    header = json.dumps({
        "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": images.size * 4}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    binary = header + images.astype("<f4").tobytes()
    return {
        "v1-json": Body("v1-json", v1, "application/json"),
        "v2-json": Body("v2-json", v2, "application/json"),
        "v2-binary": Body("v2-binary", binary, "application/octet-stream", len(header)),
    }


def decode_answer(protocol: str, headers: dict[str, str], content: bytes, classes: list[str]) -> np.ndarray:
    """The probabilities [N, C] a server answered, whatever its protocol."""
    if protocol == "v1-json":
        rows = []
        for prediction in json.loads(content)["predictions"]:
            probabilities = prediction["probabilities"]
            rows.append([probabilities[c] for c in classes] if isinstance(probabilities, dict) else probabilities)
        return np.asarray(rows, dtype=np.float64)
    header_length = headers.get("inference-header-content-length")
    if header_length is None:
        output = json.loads(content)["outputs"][0]
        return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
    header = json.loads(content[: int(header_length)])
    output = header["outputs"][0]
    data = np.frombuffer(content[int(header_length) :], dtype="<f4")
    return data.astype(np.float64).reshape(output["shape"])
