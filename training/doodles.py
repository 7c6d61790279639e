"""Drawings that are none of the classes, for the outlier head (service/trust/outlier_head.py): curves, an arc with
a line, spirals and closed blob outlines, dark on light or light on dark, 1 to 3 strokes 3 to 12 pixels wide on a
112-pixel canvas; and symbols that are neither digits nor Latin letters (Greek and Cyrillic letters, signs) in a
DejaVu font. All are sent as PNG uploads through the model's preprocessing. They are made here, with generators of
their own: bench/ood_sets.py's held-out sets (polyline scribbles, shapes, Latin letters, photo crops) only measure,
and none of them is fitted on.
"""

from __future__ import annotations

import glob
import hashlib
import inspect

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIDE = 112
KINDS = ("curves", "arc and line", "spiral", "blob outline")
# Neither digits nor Latin letters: Greek and Cyrillic letters without a digit's shape (no omicron, no Cyrillic ze
# or be, which are a 0, a 3 and a 6), and signs.
SYMBOLS = "αβγεζηθλμξπψωΓΔΘΛΞΠΣΦΨΩвгджийклмнпфцшщъыэюяБГДЖИЙЛПФЦШЩЪЫЭЮЯ&@#%?!§¶+=<>{}[]~$€£¥*"
FONT_FILES = "/usr/share/fonts/truetype/dejavu/DejaVu*.ttf"  # Debian's fonts-dejavu-core


def _bezier(points: np.ndarray, steps: int = 40) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, steps)[:, None]
    curve = (1 - t) ** 3 * points[0] + 3 * (1 - t) ** 2 * t * points[1] + 3 * (1 - t) * t**2 * points[2] + t**3 * points[3]
    return [tuple(map(float, q)) for q in curve]


def doodle(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One drawing of `kind` (one of KINDS), uint8 [SIDE, SIDE]."""
    light = rng.random() < 0.5
    paper, ink = (int(rng.integers(200, 256)), int(rng.integers(0, 60))) if light else (int(rng.integers(0, 50)), int(rng.integers(190, 256)))
    image = Image.new("L", (SIDE, SIDE), paper)
    draw, width = ImageDraw.Draw(image), int(rng.integers(3, 13))
    if kind == "curves":
        for _ in range(int(rng.integers(1, 4))):
            draw.line(_bezier(rng.uniform(10, SIDE - 10, size=(4, 2))), fill=ink, width=width, joint="curve")
    elif kind == "arc and line":
        cx, cy = rng.uniform(35, SIDE - 35, 2)
        r, start = rng.uniform(15, 40), rng.uniform(0, 360)
        draw.arc([cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r], start, start + rng.uniform(90, 330), fill=ink, width=width)
        draw.line([tuple(rng.uniform(10, SIDE - 10, 2)), tuple(rng.uniform(10, SIDE - 10, 2))], fill=ink, width=width)
    elif kind == "spiral":
        turns, radii = np.linspace(0, rng.uniform(2, 5) * np.pi, 80), np.linspace(2, rng.uniform(20, 45), 80)
        centre = rng.uniform(40, SIDE - 40, 2)
        draw.line([(float(centre[0] + q * np.cos(a)), float(centre[1] + q * np.sin(a))) for q, a in zip(radii, turns)], fill=ink, width=width)
    elif kind == "blob outline":
        k = int(rng.integers(5, 9))
        angles, radii, centre = np.sort(rng.uniform(0, 2 * np.pi, k)), rng.uniform(12, 45, k), rng.uniform(40, SIDE - 40, 2)
        points = [(float(centre[0] + q * np.cos(a)), float(centre[1] + q * np.sin(a))) for q, a in zip(radii, angles)]
        draw.line(points + points[:1], fill=ink, width=width, joint="curve")
    else:
        raise ValueError(f"unknown doodle kind {kind!r}; one of {', '.join(KINDS)}")
    return np.asarray(image)


def symbol(rng: np.random.Generator, fonts: list[str]) -> np.ndarray:
    """One of SYMBOLS in one of `fonts`, 40-90 px, tilted up to 15 degrees, uint8 [SIDE, SIDE]."""
    light = rng.random() < 0.5
    paper, ink = (int(rng.integers(200, 256)), int(rng.integers(0, 60))) if light else (int(rng.integers(0, 50)), int(rng.integers(190, 256)))
    image = Image.new("L", (SIDE, SIDE), paper)
    font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(rng.integers(40, 90)))
    ImageDraw.Draw(image).text((SIDE / 2, SIDE / 2), SYMBOLS[int(rng.integers(len(SYMBOLS)))], fill=ink, font=font, anchor="mm")
    return np.asarray(image.rotate(float(rng.uniform(-15, 15)), fillcolor=paper))


def symbols(count: int, seed: int) -> np.ndarray:
    fonts = sorted(glob.glob(FONT_FILES))
    if not fonts:
        raise FileNotFoundError(f"no font matches {FONT_FILES}: install Debian's fonts-dejavu-core (scripts/install-system-deps.sh)")
    rng = np.random.default_rng(seed)
    return np.stack([symbol(rng, fonts) for _ in range(count)]) if count else np.empty((0, SIDE, SIDE), np.uint8)


def doodles(count: int, seed: int) -> np.ndarray:
    """`count` drawings, the KINDS in turn, uint8 [count, SIDE, SIDE]."""
    rng = np.random.default_rng(seed)
    return np.stack([doodle(KINDS[i % len(KINDS)], rng) for i in range(count)]) if count else np.empty((0, SIDE, SIDE), np.uint8)


def doodles_as_served(method: str, count: int, seed: int) -> np.ndarray:
    """`count` drawings (seed `seed`) and half as many symbols (seed `seed` + 1) sent as PNG uploads through the
    service's `method` preprocessing: float32 [n, 1, 28, 28] (one it refuses, a 422, is left out). Cached under
    data/trust-photos/, keyed by this module's code and the preprocessing's."""
    from training.photo_mix import preprocessing_hash
    from training.trust import PHOTO_CACHE, model_inputs, uploads_as_served

    code = hashlib.sha256((inspect.getsource(doodle) + inspect.getsource(symbol) + SYMBOLS).encode()).hexdigest()[:8]
    path = PHOTO_CACHE / f"doodles-{method}-{count}-seed{seed}-{code}-{preprocessing_hash()}.npz"
    if path.exists():
        return model_inputs(np.load(path)["pictures"])
    served = uploads_as_served(np.concatenate([doodles(count, seed), symbols(count // 2, seed + 1)]), method)
    pictures = np.clip(np.rint(served[:, 0] * 255), 0, 255).astype(np.uint8)
    PHOTO_CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, pictures=pictures)
    return model_inputs(pictures)
