"""Picture bytes -> model input. `decode` reads the picture safely; each preprocessing method named by a
model card frames it as that model's training pictures were made (`ink`: mnist-digit, fashion-fit;
`photo`: resize-crop, resize, letterbox). `picture_pixels` is the one entry for any card: 8-bit-scaled
pixels [H, W, C] in the model's colour order, which the model input turns into its tensor."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.errors import InvalidInput
from service.imaging.decode import ACCEPTED_DESCRIPTION, ACCEPTED_FORMATS, JPEG_START, decode, decode_picture
from service.imaging.ink import METHOD_SIDE, METHODS, WORK_SIDE, ImageWarning, prepare
from service.imaging import photo
from service.inference.card import ModelCard

__all__ = [
    "ACCEPTED_DESCRIPTION", "ACCEPTED_FORMATS", "METHODS", "decode_picture", "picture_pixels", "pixels_and_picture",
    "pixels_png", "preprocess_image", "to_model_input", "to_model_input_and_picture", "ImageWarning",
    "picture_pixels_with_warnings", "pixels_picture_and_warnings", "to_model_input_picture_and_warnings",
    "to_model_input_with_warnings", "WORK_SIDE",
]

# A garment is separated from its surface by colour; a digit's strokes need only grey.
DRAFT_MODE = {"mnist-digit": "L", "fashion-fit": "RGB"}


def picture_pixels(data: bytes, card: ModelCard, *, max_pixels: int) -> tuple[np.ndarray, float]:
    """Picture bytes -> (pixels [H, W, C] in the model's colour order, their full scale): uint8 and 255 for the
    photo methods, float32 in [0, 1] and 1.0 for the ink methods."""
    pixels, full_scale, _ = picture_pixels_with_warnings(data, card, max_pixels=max_pixels)
    return pixels, full_scale


def picture_pixels_with_warnings(data: bytes, card: ModelCard, *, max_pixels: int) -> tuple[np.ndarray, float, list[ImageWarning]]:
    """`picture_pixels`, and what was doubtful about the picture (the ink methods: a faint or unclear object)."""
    if card.is_ink:
        x, warnings = to_model_input_with_warnings(data, card.preprocessing.method, max_pixels=max_pixels)
        return x[0][:, :, np.newaxis], 1.0, warnings
    return photo.picture_pixels(data, card, max_pixels=max_pixels), 255.0, []


def pixels_and_picture(data: bytes, card: ModelCard, *, max_pixels: int, picture_side: int) -> tuple[np.ndarray, float, Image.Image]:
    """`picture_pixels`, and the decoded picture to show back, at least `picture_side` pixels a side where it is
    larger (a JPEG is decoded a second time at a reduced scale: cheaper than decoding a photo once in full)."""
    pixels, full_scale, picture, _ = pixels_picture_and_warnings(data, card, max_pixels=max_pixels, picture_side=picture_side)
    return pixels, full_scale, picture


def pixels_picture_and_warnings(
    data: bytes, card: ModelCard, *, max_pixels: int, picture_side: int
) -> tuple[np.ndarray, float, Image.Image, list[ImageWarning]]:
    """`pixels_and_picture`, and what was doubtful about the picture."""
    if card.is_ink:
        x, picture, warnings = to_model_input_picture_and_warnings(
            data, card.preprocessing.method, max_pixels=max_pixels, picture_side=picture_side
        )
        return x[0][:, :, np.newaxis], 1.0, picture, warnings
    pixels = photo.picture_pixels(data, card, max_pixels=max_pixels)  # first: a bad picture fails before a second decode
    return pixels, 255.0, decode(data, max_pixels=max_pixels, reduce_to=picture_side, draft_mode="RGB"), []


def pixels_png(pixels: np.ndarray, full_scale: float, color_order: str, *, scale: int = 1) -> bytes:
    """Pixels [H, W, C] (as `picture_pixels` makes them) as an 8-bit PNG: grey for one channel, RGB for three."""
    values = np.rint(np.clip(np.asarray(pixels, dtype=np.float32) * (255.0 / full_scale), 0, 255)).astype(np.uint8)
    if color_order == "BGR":
        values = values[:, :, ::-1]
    image = Image.fromarray(values[:, :, 0] if values.shape[2] == 1 else np.ascontiguousarray(values))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_model_input(data: bytes, method: str, *, max_pixels: int) -> np.ndarray:
    """Picture bytes -> float32 [1, 28, 28] in [0, 1], white on black, prepared as `method` says."""
    return to_model_input_with_warnings(data, method, max_pixels=max_pixels)[0]


def to_model_input_with_warnings(data: bytes, method: str, *, max_pixels: int) -> tuple[np.ndarray, list[ImageWarning]]:
    """The model input as `to_model_input` makes it, and what was doubtful about the picture."""
    _check_method(method)
    return prepare(decode(data, max_pixels=max_pixels, reduce_to=METHOD_SIDE[method], draft_mode=DRAFT_MODE[method]), method)


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


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InvalidInput(f"unknown preprocessing method {method!r}; known methods: {', '.join(METHODS)}")

