"""The photo methods, `resize-crop`, `resize` and `letterbox`: picture bytes -> 8-bit pixels [H, W, C] at the
model's size, in its colour order, made as torchvision, timm and Hugging Face's image processors make them
(all three resize with Pillow):

  decode (first frame, EXIF orientation applied), RGB (or L) with transparency composited on white or the
               alpha dropped (the card's `transparency`), then
  resize-crop: shorter side -> resize_shorter (the longer one truncated, as torchvision's Resize does), or a
               plain resize to resize_size, then the centre height x width (offsets rounded as torchvision's
               CenterCrop does, or floored as Hugging Face's: crop_rounding);
  resize:      plain resize to height x width (the aspect is not kept);
  letterbox:   fit inside height x width keeping the aspect, centred on pad_color.

Range, mean / std, layout and element type are the model input's step (service.inference.model_input).

A JPEG is decoded at a reduced scale (Pillow's draft: 1/2, 1/4 or 1/8, done inside the JPEG decoder and
far cheaper than decoding every pixel) only while the reduced picture keeps DRAFT_MARGIN times the
pixels per side that the resize keeps: the resize then still averages several decoded pixels into each
output pixel, and the result stays within a few grey levels of a full decode, a fifth of one on average
(tests/service/test_photo.py).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from service.imaging.decode import decode_sized
from service.inference.card import ModelCard

DRAFT_MARGIN = 2.0
FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
WHITE = (255, 255, 255, 255)


def picture_pixels(data: bytes, card: ModelCard, *, max_pixels: int) -> np.ndarray:
    """Picture bytes -> uint8 [height, width, channels] as `card`'s photo method makes them, in its colour order."""
    mode = "L" if card.input.channels == 1 else "RGB"
    image, full_size = decode_sized(
        data, max_pixels=max_pixels, draft=lambda width, height: draft_size(card, width, height), draft_mode=None
    )
    pixels = np.asarray(framed(as_mode(image, mode, card.preprocessing.transparency), card, full_size))
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    if card.input.color_order == "BGR":
        pixels = pixels[:, :, ::-1]
    return pixels


def draft_size(card: ModelCard, width: int, height: int) -> tuple[int, int]:
    """The least size a reduced JPEG decode may have: DRAFT_MARGIN times what the resize keeps of each side.
    Orientation-blind (the stored picture may be turned): the larger of the two sides' ratios counts."""
    spec, prep = card.input, card.preprocessing
    shorter = min(width, height)
    if prep.method == "resize-crop" and prep.resize_shorter is not None:
        ratio = prep.resize_shorter / shorter
    else:
        target = prep.resize_size if prep.method == "resize-crop" else (spec.height, spec.width)
        ratio = max(target) / shorter
    ratio *= DRAFT_MARGIN
    return max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio))


def as_mode(image: Image.Image, mode: str, transparency: str = "white") -> Image.Image:
    """The picture as 8-bit RGB or L; 16-bit and float pictures scaled to 8 bits; transparency composited on
    white, or (`transparency` "drop") the alpha dropped as Pillow's convert does, the colour under it kept."""
    if image.mode == mode:
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image.convert("F"), dtype=np.float32)
        # The smallest usual range that holds the values: [0, 1] floats, 8-bit or 16-bit integers.
        peak = 65535.0 if image.mode.startswith("I;16") else next((r for r in (1.0, 255.0, 65535.0) if values.max() <= r), float(values.max()))
        grey = Image.fromarray(np.rint(np.clip(values / peak, 0.0, 1.0) * 255).astype(np.uint8))
        return grey.convert(mode)
    if image.mode == "La":
        image = image.convert("LA")
    if image.mode == "RGBa":
        image = image.convert("RGBA")
    if transparency == "white" and (image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info):
        image = Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA"))
    return image.convert(mode)


def framed(image: Image.Image, card: ModelCard, full_size: tuple[int, int]) -> Image.Image:
    """Resize (and crop or pad) to the model's height x width. Sizes are computed from the picture's full
    size, so a reduced decode gives the same geometry as a full one."""
    spec, prep = card.input, card.preprocessing
    height, width = spec.height, spec.width
    resample = FILTERS[prep.interpolation]
    full_width, full_height = full_size
    if prep.method == "resize":
        return image.resize((width, height), resample)
    if prep.method == "letterbox":
        ratio = min(width / full_width, height / full_height)
        inner = (max(1, min(width, round(full_width * ratio))), max(1, min(height, round(full_height * ratio))))
        pad = tuple(prep.pad_color) if prep.pad_color is not None else (114,) * spec.channels
        canvas = Image.new(image.mode, (width, height), pad[0] if image.mode == "L" else pad)
        canvas.paste(image.resize(inner, resample), ((width - inner[0]) // 2, (height - inner[1]) // 2))
        return canvas
    # resize-crop
    if prep.resize_shorter is not None:
        shorter = prep.resize_shorter
        if full_width <= full_height:
            size = (shorter, int(shorter * full_height / full_width))
        else:
            size = (int(shorter * full_width / full_height), shorter)
    else:
        size = (prep.resize_size[1], prep.resize_size[0])
    if prep.crop_rounding == "floor":  # Hugging Face's center_crop
        top, left = (size[1] - height) // 2, (size[0] - width) // 2
    else:  # torchvision's CenterCrop (Python's round: half to even)
        top, left = int(round((size[1] - height) / 2.0)), int(round((size[0] - width) / 2.0))
    if top < 0 or left < 0:  # a crop larger than the resized picture: pad as the libraries do
        return image.resize(size, resample).crop((left, top, left + width, top + height))
    # Only the part that is kept is resized: Pillow's `box` names the source region, and each output pixel
    # is the same weighted sum of source pixels as in the whole resize (the filter reads past the box into the
    # rest of the picture, as the whole resize does). The box is passed as single-precision floats, so a few
    # pixels in a hundred thousand come out one grey level apart. As measured (640x480 to 224x224 through
    # 341x256, bilinear): 1.5 ms against 3.1 ms.
    sx, sy = image.width / size[0], image.height / size[1]
    box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
    return image.resize((width, height), resample, box=box)
