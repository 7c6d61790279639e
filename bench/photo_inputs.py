"""Pictures for the big-model benchmarks: 640x480 JPEGs made from scikit-image's sample photos, the
multipart upload that carries one, the card's preprocessing as an independent reference (Pillow, full
decode, EXIF orientation, RGB, the card's resize and crop, range, mean / std, NCHW float32), and the
reading of an upload's answer (its top-k list).

The same functions serve `serving.py --model`, the naive baseline's check, the floor and `jpeg_draft.py`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

PICTURE_SIZE = (640, 480)
JPEG_QUALITY = 90
BOUNDARY = "pixelservebenchboundary"
FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
           "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


def sample_photos(count: int = 4, size: tuple[int, int] = PICTURE_SIZE) -> list[bytes]:
    """`count` JPEGs of real photos (scikit-image's samples, resized with Lanczos to `size`)."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    jpegs = []
    for index in range(count):
        picture = Image.fromarray(photos[index % len(photos)]).convert("RGB")
        picture = ImageOps.fit(picture, size, Image.Resampling.LANCZOS)  # crop to 4:3, then resize
        if index >= len(photos):
            picture = ImageOps.mirror(picture)
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
        jpegs.append(buffer.getvalue())
    return jpegs


@dataclass(frozen=True)
class CardInput:
    """What of the card the reference pipeline reads (docs/models.md's photo methods)."""

    name: str
    channels: int
    height: int
    width: int
    method: str
    resize_shorter: int | None
    interpolation: str
    range: tuple[float, float]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    layout: str = "NCHW"
    dtype: str = "float32"

    @classmethod
    def from_card(cls, card: dict) -> CardInput:
        section, preprocessing = card["input"], card["preprocessing"]
        return cls(
            name=section.get("name", "input"), channels=section.get("channels", 1),
            height=section["height"], width=section["width"], method=preprocessing["method"],
            resize_shorter=preprocessing.get("resize_shorter"),
            interpolation=preprocessing.get("interpolation", "bilinear"),
            range=tuple(section.get("range", (0.0, 1.0))), mean=section.get("mean"), std=section.get("std"),
            layout=section.get("layout", "NCHW"), dtype=section.get("dtype", "float32"),
        )


def is_photo_model(card: dict) -> bool:
    return card.get("preprocessing", {}).get("method") in ("resize-crop", "resize", "letterbox")


def decode(jpeg: bytes, channels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """Pillow, first frame, upright, RGB or grey; `draft` asks the JPEG decoder for a reduced size first."""
    picture = Image.open(io.BytesIO(jpeg))
    if draft is not None:
        picture.draft("RGB" if channels == 3 else "L", draft)
    picture = ImageOps.exif_transpose(picture)
    return picture.convert("RGB" if channels == 3 else "L")


def resize(picture: Image.Image, card: CardInput) -> Image.Image:
    """The card's resize: resize-crop (torchvision's Resize + CenterCrop) or plain resize."""
    resample = FILTERS[card.interpolation]
    if card.method == "resize":
        return picture.resize((card.width, card.height), resample)
    if card.method != "resize-crop":
        raise SystemExit(f"the benchmark's reference knows resize-crop and resize, not {card.method}")
    width, height = picture.size
    shorter = card.resize_shorter
    size = (shorter, int(shorter * height / width)) if width <= height else (int(shorter * width / height), shorter)
    picture = picture.resize(size, resample)
    top, left = int(round((size[1] - card.height) / 2.0)), int(round((size[0] - card.width) / 2.0))
    return picture.crop((left, top, left + card.width, top + card.height))


def to_input(picture: Image.Image, card: CardInput) -> np.ndarray:
    """[1, C, H, W] (or [1, H, W, C]) in the card's dtype: 0..255 onto the card's range, then (x - mean) / std;
    a uint8 input takes the pixels as they are."""
    pixels = np.asarray(picture).reshape(card.height, card.width, card.channels)
    if card.dtype != "uint8":
        low, high = card.range
        pixels = pixels.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)
        if card.mean is not None:
            pixels = (pixels - np.asarray(card.mean, np.float32)) / np.asarray(card.std, np.float32)
    if card.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels[None], dtype={"float32": np.float32, "float16": np.float16, "uint8": np.uint8}[card.dtype])


def reference_input(jpeg: bytes, card: CardInput, draft: tuple[int, int] | None = None) -> np.ndarray:
    return to_input(resize(decode(jpeg, card.channels, draft), card), card)


def multipart(jpeg: bytes, field: str = "file") -> tuple[bytes, str]:
    """(body, content type) of an upload of one picture, as a browser or `curl -F` sends it."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"photo.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def top_of_answer(content: bytes) -> list[tuple[str, float]]:
    """The first prediction's top-k list from a v1 answer (pixelserve's or the naive app's)."""
    prediction = json.loads(content)["predictions"][0]
    return [(entry["label"], float(entry["probability"])) for entry in prediction["top"]]


def same_top(answered: list[tuple[str, float]], probabilities: np.ndarray, classes: list[str], k: int,
             tolerance: float) -> bool:
    """An answered top-k agrees with the reference probabilities: k entries, each label's probability within
    `tolerance` of the reference's, and each among the reference's k best (ties within the tolerance)."""
    if len(answered) != k:
        return False
    index = {label: i for i, label in enumerate(classes)}
    kth = float(np.sort(probabilities)[-k])
    for label, probability in answered:
        if label not in index:
            return False
        reference = float(probabilities[index[label]])
        if abs(reference - probability) > tolerance or reference < kth - tolerance:
            return False
    return True
