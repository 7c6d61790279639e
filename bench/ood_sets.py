"""Pictures a model was not trained on, as the model sees them, for bench/trust.py and the trust tests.

Raw tensors: uniform noise, and a blank picture with one random scribble. "Uploaded": each 28x28 picture
saved as a PNG and run through the model's own preprocessing method (service.imaging), as the service
does with an upload, so a Fashion-MNIST item sent to a digit model is judged after mnist-digit framing.
"""

from __future__ import annotations

import glob
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

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


# ------------------------------------------------------------------ held-out pictures of other kinds
# Larger pictures (SIDE pixels a side), as a person would upload them; `small` gives the 28x28 tensor a client
# would send instead. Nothing here is used to fit any model or typicality: they only measure.

SIDE = 112
FONTS = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVu*.ttf"))
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
NATURAL = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "horse", "clock",
           "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel", "cell")


def _canvas(rng: np.random.Generator) -> tuple[Image.Image, int, int]:
    """A blank picture and the ink and paper values: dark ink on light paper or light on dark, either way."""
    light_paper = rng.random() < 0.5
    paper, ink = (int(rng.integers(200, 256)), int(rng.integers(0, 60))) if light_paper else (int(rng.integers(0, 50)), int(rng.integers(190, 256)))
    return Image.new("L", (SIDE, SIDE), paper), ink, paper


def shapes(count: int, seed: int = 0) -> np.ndarray:
    """1 to 3 circles, rectangles, triangles or stars, filled or outlined, uint8 [N, SIDE, SIDE]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, SIDE, SIDE), np.uint8)
    for i in range(count):
        image, ink, paper = _canvas(rng)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy, r = rng.uniform(25, SIDE - 25), rng.uniform(25, SIDE - 25), rng.uniform(10, 40)
            width = int(rng.integers(2, 12))
            fill = ink if rng.random() < 0.5 else None
            kind = rng.choice(["ellipse", "rectangle", "triangle", "star"])
            if kind == "ellipse":
                draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r * rng.uniform(0.5, 1)], fill=fill, outline=ink, width=width)
            elif kind == "rectangle":
                draw.rectangle([cx - r, cy - r * rng.uniform(0.4, 1), cx + r * rng.uniform(0.4, 1), cy + r], fill=fill, outline=ink, width=width)
            else:
                points = 3 if kind == "triangle" else 10
                angles = np.linspace(0, 2 * np.pi, points, endpoint=False) + rng.uniform(0, np.pi)
                radii = np.full(points, r) if kind == "triangle" else np.where(np.arange(points) % 2, r * 0.45, r)
                polygon = [(float(cx + q * np.cos(a)), float(cy + q * np.sin(a))) for q, a in zip(radii, angles)]
                draw.polygon(polygon, fill=fill, outline=ink, width=width)
        out[i] = np.asarray(image)
    return out


def thick_scribbles(count: int, seed: int = 0) -> np.ndarray:
    """A polyline of 3 to 7 points, 3 to 10 px wide, dark on white and light on black in turn, uint8 [N, SIDE, SIDE]:
    a scribble drawn with a thick pen on a canvas larger than 28x28 (the smoke check's kind)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, SIDE, SIDE), np.uint8)
    for i in range(count):
        light = i % 2 == 0
        image = Image.new("L", (SIDE, SIDE), 255 if light else 0)
        points = [tuple(rng.uniform(12, SIDE - 12, 2)) for _ in range(int(rng.integers(3, 8)))]
        ImageDraw.Draw(image).line(points, fill=0 if light else 255, width=int(rng.integers(3, 11)), joint="curve")
        out[i] = np.asarray(image)
    return out


def letters(count: int, seed: int = 0) -> np.ndarray:
    """One Latin letter (A-Z, a-z) in a DejaVu font, random size, weight and tilt, uint8 [N, SIDE, SIDE]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, SIDE, SIDE), np.uint8)
    for i in range(count):
        image, ink, paper = _canvas(rng)
        font = ImageFont.truetype(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(40, 90)))
        ImageDraw.Draw(image).text((SIDE / 2, SIDE / 2), LETTERS[i % len(LETTERS)], fill=ink, font=font, anchor="mm")
        out[i] = np.asarray(image.rotate(float(rng.uniform(-15, 15)), fillcolor=paper))
    return out


def natural_crops(count: int, seed: int = 0) -> np.ndarray:
    """Grey square crops (a fifth to all of the shorter side) of scikit-image's sample pictures, uint8 [N, SIDE, SIDE]."""
    from skimage import data  # measuring only: the service does not need scikit-image's sample pictures

    rng = np.random.default_rng(seed)
    pictures = [Image.fromarray(getattr(data, name)()).convert("L") for name in NATURAL]
    out = np.zeros((count, SIDE, SIDE), np.uint8)
    for i in range(count):
        picture = pictures[i % len(pictures)]
        side = int(min(picture.size) * rng.uniform(0.2, 1.0))
        left, top = int(rng.integers(0, picture.width - side + 1)), int(rng.integers(0, picture.height - side + 1))
        out[i] = np.asarray(picture.resize((SIDE, SIDE), Image.Resampling.BOX, box=(left, top, left + side, top + side)))
    return out


def smooth_noise(count: int, seed: int = 0) -> np.ndarray:
    """Blurred noise (blobs of a random size) and gratings, uint8 [N, SIDE, SIDE]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, SIDE, SIDE), np.uint8)
    for i in range(count):
        if i % 2:
            noise = Image.fromarray((rng.random((SIDE, SIDE)) * 255).astype(np.uint8))
            blurred = np.asarray(noise.filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 10)))), np.float32)
            spread = blurred.std() or 1.0
            out[i] = np.clip((blurred - blurred.mean()) / spread * 60 + 128, 0, 255).astype(np.uint8)
        else:
            yy, xx = np.mgrid[0:SIDE, 0:SIDE]
            angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
            wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
            out[i] = np.where(wave > 0, 230, 25).astype(np.uint8) if rng.random() < 0.5 else ((wave + 1) * 127.5).astype(np.uint8)
    return out


def small(pictures: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] -> the 28x28 tensors [N,1,28,28] in [0, 1] a client would send: area-reduced, turned white on
    black where the border is light (the models' convention)."""
    out = np.zeros((len(pictures), 1, 28, 28), np.float32)
    for i, picture in enumerate(pictures):
        x = np.asarray(Image.fromarray(picture).resize((28, 28), Image.Resampling.BOX), np.float32) / 255.0
        border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]).mean()
        out[i, 0] = 1.0 - x if border > 0.5 else x
    return out


def uploaded(pictures: np.ndarray, method: str) -> tuple[np.ndarray, int]:
    """uint8 [N, H, W] pictures sent as PNG uploads to a `method` model: its tensors, and how many it refused."""
    kept, refused = [], 0
    for picture in pictures:
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")
        try:
            kept.append(to_model_input(buffer.getvalue(), method, max_pixels=MAX_PIXELS))
        except InvalidInput:
            refused += 1
    return (np.stack(kept) if kept else np.empty((0, 1, 28, 28), np.float32)), refused


HELD_OUT = {"shapes": shapes, "letters": letters, "natural_crops": natural_crops, "smooth_noise": smooth_noise,
            "thick_scribbles": thick_scribbles}
