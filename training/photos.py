"""Pictures as a photo classifier sees them: decoded the way the model card's photo methods say
(Pillow, EXIF orientation applied, first frame, RGB with transparency on white, or grey), resized the
card's way (`resize-crop`: shorter side to `resize_shorter`, then the centre `size` x `size`, as
torchvision's Resize + CenterCrop; `resize`: straight to `size` x `size`), then scaled to [0, 1] and
normalised by the card's mean / std into the model's float32 NCHW input.

Pillow does the decoding and resampling, as it does on the serving side, so that what training measures
is what a server following the card computes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

RESIZE_METHODS = ("resize-crop", "resize")
# timm's and torchvision's usual crop: the centre 87.5% of the shorter side (224 of 256).
CROP_FRACTION = 0.875
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet's statistics for one grey channel: the means of the three.
IMAGENET_GREY_MEAN, IMAGENET_GREY_STD = (0.449,), (0.226,)
INTERPOLATION = "bilinear"


class PictureError(ValueError):
    """A picture file that cannot be read; the message names the file."""


def decode(path: Path, channels: int) -> Image.Image:
    """The picture's first frame, upright (EXIF orientation), as RGB (transparency on white) or grey."""
    try:
        with Image.open(path) as picture:
            picture.seek(0)
            picture = ImageOps.exif_transpose(picture)
            if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
                rgba = picture.convert("RGBA")
                picture = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                picture.alpha_composite(rgba)
            return picture.convert("RGB" if channels == 3 else "L")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PictureError(f"cannot read {path}: {exc}") from None


def default_resize_shorter(size: int) -> int:
    """The shorter side a `resize-crop` picture is brought to before its centre size x size is cut."""
    return math.floor(size / CROP_FRACTION)


@dataclass(frozen=True)
class PhotoPreprocessing:
    """What the card's input and preprocessing sections say, and how training applies it."""

    size: int
    channels: int
    method: str  # "resize-crop" | "resize"
    resize_shorter: int | None  # resize-crop only
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def shorter_side_size(self, width: int, height: int, shorter: int) -> tuple[int, int]:
        """torchvision's Resize(int): the shorter side becomes `shorter`, the longer keeps the aspect ratio."""
        if width <= height:
            return shorter, int(shorter * height / width)
        return int(shorter * width / height), shorter

    def training_source(self, picture: Image.Image) -> np.ndarray:
        """The picture, kept for the random crops of training: `resize-crop` keeps its aspect ratio with
        the shorter side at `resize_shorter` (random crops see the whole picture, as the evaluation crop
        sees its centre); `resize` squeezes it square, as serving will, at the same scale."""
        shorter = self.resize_shorter or default_resize_shorter(self.size)
        if self.method == "resize-crop":
            size = self.shorter_side_size(*picture.size, shorter)
        else:
            size = (shorter, shorter)
        return np.asarray(picture.resize(size, Image.Resampling.BILINEAR))

    def view(self, picture: Image.Image) -> np.ndarray:
        """uint8 [size, size] or [size, size, 3]: exactly what a server following the card feeds the model."""
        if self.method == "resize":
            return np.asarray(picture.resize((self.size, self.size), Image.Resampling.BILINEAR))
        width, height = self.shorter_side_size(*picture.size, self.resize_shorter)
        resized = picture.resize((width, height), Image.Resampling.BILINEAR)
        # torchvision's CenterCrop rounds the offsets.
        top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
        return np.asarray(resized.crop((left, top, left + self.size, top + self.size)))

    def to_input(self, views: np.ndarray) -> np.ndarray:
        """uint8 views [N, S, S(, C)] -> the model's float32 input [N, C, S, S]: range [0, 1], then (x - mean) / std."""
        pixels = views.astype(np.float32) / np.float32(255.0)
        pixels = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)

    def card_input(self) -> dict:
        """The card's input section (docs/models.md): NCHW float32, [0, 1] then the mean / std."""
        return {
            "name": "input",
            "layout": "NCHW",
            "channels": self.channels,
            "color_order": "RGB" if self.channels == 3 else "L",
            "height": self.size,
            "width": self.size,
            "dtype": "float32",
            "range": [0.0, 1.0],
            "mean": [round(float(m), 6) for m in self.mean],
            "std": [round(float(s), 6) for s in self.std],
            "shape": ["N", self.channels, self.size, self.size],
        }

    def card_preprocessing(self) -> dict:
        colour = "RGB (transparency on white)" if self.channels == 3 else "grey"
        if self.method == "resize-crop":
            section = {"method": "resize-crop", "resize_shorter": self.resize_shorter, "interpolation": INTERPOLATION}
            how = (f"shorter side resized to {self.resize_shorter} ({INTERPOLATION}), "
                   f"then the centre {self.size}x{self.size} cut out")
        else:
            section = {"method": "resize", "interpolation": INTERPOLATION}
            how = f"resized to {self.size}x{self.size} ({INTERPOLATION}), aspect ratio not kept"
        section["transparency"] = "white"  # decode() composites on white
        section["description"] = (
            f"a picture is decoded upright (EXIF orientation), first frame, as {colour}; {how}; pixels "
            f"scaled to [0, 1], then normalised by the card's mean and std"
        )
        return section


def channel_statistics(views: list[np.ndarray] | np.ndarray, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 views, in [0, 1] units."""
    pixels = np.concatenate([np.asarray(v, np.float64).reshape(-1, channels) for v in views]) / 255.0
    std = np.maximum(pixels.std(axis=0), 1e-3)  # a flat channel would otherwise divide by zero
    return tuple(float(m) for m in pixels.mean(axis=0)), tuple(float(s) for s in std)
