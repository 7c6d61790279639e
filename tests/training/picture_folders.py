"""Small folders of generated pictures in torchvision's ImageFolder layout, for the folder-training tests:
coloured shapes on noisy backgrounds, each class its own shape and hue, pictures of varied sizes and
aspect ratios, saved as JPEG, PNG (some with transparency) and grey JPEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = {"circles": (220, 60, 40), "squares": (40, 170, 60), "stripes": (50, 80, 220)}


def draw_picture(kind: str, rng: np.random.Generator) -> Image.Image:
    width, height = int(rng.integers(40, 120)), int(rng.integers(40, 120))
    background = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    picture = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(picture)
    colour = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in CLASSES[kind])
    side = min(width, height)
    size = int(side * rng.uniform(0.5, 0.8))
    left, top = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    if kind == "circles":
        draw.ellipse((left, top, left + size, top + size), fill=colour)
    elif kind == "squares":
        draw.rectangle((left, top, left + size, top + size), fill=colour)
    else:
        step = max(3, size // 6)
        for x in range(left, left + size, 2 * step):
            draw.rectangle((x, top, x + step - 1, top + size), fill=colour)
    return picture


def save(picture: Image.Image, path: Path, index: int) -> Path:
    """Every fifth picture a PNG with a transparent border, every seventh grey, the rest JPEG."""
    if index % 5 == 0:
        rgba = picture.convert("RGBA")
        alpha = Image.new("L", picture.size, 255)
        ImageDraw.Draw(alpha).rectangle((0, 0, picture.width - 1, 3), fill=0)
        rgba.putalpha(alpha)
        path = path.with_suffix(".png")
        rgba.save(path)
    elif index % 7 == 0:
        path = path.with_suffix(".jpg")
        picture.convert("L").save(path, quality=90)
    else:
        path = path.with_suffix(".jpg")
        picture.save(path, quality=90)
    return path


def write_picture_folder(root: Path, per_class: int = 30, seed: int = 0, classes=tuple(CLASSES)) -> Path:
    """root/<class>/<n>.jpg|png for each class; returns root."""
    rng = np.random.default_rng(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            save(draw_picture(kind, rng), root / kind / f"{kind}-{index:03d}", index)
    return root
