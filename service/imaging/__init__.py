"""Picture bytes -> model input. `decode` reads the picture safely; each preprocessing method named by a
model card frames it as that model's training pictures were made (`ink`: mnist-digit, fashion-fit), and
says what was doubtful about the picture (a faint or unclear object) as warnings."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.errors import InvalidInput
from service.imaging.decode import ACCEPTED_DESCRIPTION, ACCEPTED_FORMATS, JPEG_START, decode, decode_picture
from service.imaging.ink import METHODS, WORK_SIDE, ImageWarning, prepare

__all__ = [
    "ACCEPTED_DESCRIPTION", "ACCEPTED_FORMATS", "METHODS", "ImageWarning", "decode_picture", "preprocess_image",
    "to_model_input", "to_model_input_and_picture", "to_model_input_picture_and_warnings",
    "to_model_input_with_warnings", "to_png",
]

# A garment is separated from its surface by colour; a digit's strokes need only grey.
DRAFT_MODE = {"mnist-digit": "L", "fashion-fit": "RGB"}


def to_model_input(data: bytes, method: str, *, max_pixels: int) -> np.ndarray:
    """Picture bytes -> float32 [1, 28, 28] in [0, 1], white on black, prepared as `method` says."""
    return to_model_input_with_warnings(data, method, max_pixels=max_pixels)[0]


def to_model_input_with_warnings(data: bytes, method: str, *, max_pixels: int) -> tuple[np.ndarray, list[ImageWarning]]:
    """The model input as `to_model_input` makes it, and what was doubtful about the picture."""
    _check_method(method)
    return prepare(decode(data, max_pixels=max_pixels, reduce_to=WORK_SIDE[method], draft_mode=DRAFT_MODE[method]), method)


def to_model_input_and_picture(data: bytes, method: str, *, max_pixels: int, picture_side: int) -> tuple[np.ndarray, Image.Image]:
    """The model input exactly as `to_model_input` makes it, and the decoded picture to show back."""
    x, picture, _ = to_model_input_picture_and_warnings(data, method, max_pixels=max_pixels, picture_side=picture_side)
    return x, picture


def to_model_input_picture_and_warnings(
    data: bytes, method: str, *, max_pixels: int, picture_side: int
) -> tuple[np.ndarray, Image.Image, list[ImageWarning]]:
    """The model input and warnings exactly as `to_model_input_with_warnings` makes them, and the decoded
    picture to show back, at least `picture_side` pixels a side where it is larger. A JPEG is decoded
    twice, each time at a reduced scale, which costs far less than decoding a photo once at full size;
    other formats once."""
    if data[:3] == JPEG_START:
        x, warnings = to_model_input_with_warnings(data, method, max_pixels=max_pixels)  # first: a bad picture fails early
        return x, decode(data, max_pixels=max_pixels, reduce_to=picture_side, draft_mode="RGB"), warnings
    _check_method(method)
    picture = decode_picture(data, max_pixels=max_pixels)
    x, warnings = prepare(picture, method)
    return x, picture, warnings


def preprocess_image(image: Image.Image, method: str) -> np.ndarray:
    """A decoded picture -> float32 [1, 28, 28] in [0, 1], white on black, prepared as `method` says."""
    _check_method(method)
    return prepare(image, method)[0]


def to_png(array: np.ndarray, *, scale: int = 1) -> bytes:
    """A [1, 28, 28] or [28, 28] array in [0, 1] as an 8-bit grayscale PNG, optionally enlarged `scale` times."""
    pixels = np.asarray(array, dtype=np.float32)
    if pixels.ndim == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise ValueError(f"expected a [1, H, W] or [H, W] array, got shape {list(np.shape(array))}")
    image = Image.fromarray(np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InvalidInput(f"unknown preprocessing method {method!r}; known methods: {', '.join(METHODS)}")
