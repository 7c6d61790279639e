"""Pictures a model was not trained on, as the model sees them, for bench/trust.py and the trust tests.

Raw tensors: uniform noise, and a blank picture with one random scribble. "Uploaded": each 28x28 picture
saved as a PNG and run through the model's own preprocessing method (service.imaging), as the service
does with an upload, so a Fashion-MNIST item sent to a digit model is judged after mnist-digit framing.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from service.errors import InvalidInput
from service.imaging import to_model_input

MAX_PIXELS = 40_000_000


def uniform_noise(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 28, 28), dtype=np.float32)


def scribbles(count: int, seed: int = 0) -> np.ndarray:
    """A black picture with one white random stroke of 2 to 5 segments, 1 to 3 pixels wide."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, 1, 28, 28), dtype=np.float32)
    for i in range(count):
        image = Image.new("L", (28, 28), 0)
        points = [tuple(rng.uniform(3, 25, size=2)) for _ in range(int(rng.integers(3, 7)))]
        ImageDraw.Draw(image).line(points, fill=255, width=int(rng.integers(1, 4)), joint="curve")
        out[i, 0] = np.asarray(image, dtype=np.float32) / 255.0
    return out


def as_uploaded(images: np.ndarray, method: str) -> tuple[np.ndarray, int]:
    """[N,1,28,28] in [0, 1] -> the tensors the service makes of them sent as PNG uploads to a `method` model, and
    how many it refuses to answer (a 422, e.g. "no ink found" for uniform noise)."""
    kept, refused = [], 0
    for picture in images:
        buffer = io.BytesIO()
        Image.fromarray(np.rint(picture[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
        try:
            kept.append(to_model_input(buffer.getvalue(), method, max_pixels=MAX_PIXELS))
        except InvalidInput:
            refused += 1
    return (np.stack(kept) if kept else np.empty((0, 1, 28, 28), np.float32)), refused
