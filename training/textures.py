"""Procedural surfaces for the synthetic photos (training/synthetic_photos.py): paper, table, parquet, carpet, bedding,
fabric and foil, as float32 RGB in [0, 1]. Each is cheap (a few milliseconds at 1,000 pixels) and random
enough that a model cannot learn the surface instead of the object on it."""

from __future__ import annotations

import cv2
import numpy as np

SURFACES = ("paper", "table", "parquet", "carpet", "bedding", "fabric", "foil", "tiles")


def smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-spread noise varying over about `scale` pixels (white noise blurred at a coarse grid)."""
    step = max(1.0, scale / 2)
    small = rng.standard_normal((max(2, int(height / step) + 2), max(2, int(width / step) + 2))).astype(np.float32)
    field = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _tint(rng: np.random.Generator, base: tuple[float, float, float], spread: float) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-spread, spread, 3), 0.02, 1.0).astype(np.float32)


def _shade(height: int, width: int, colour: np.ndarray, field: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(colour[None, None, :] * (1.0 + amount * field[..., None]), 0.0, 1.0).astype(np.float32)


def paper(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """White, cream or grey paper with faint fibres."""
    kind = rng.choice(["white", "cream", "grey"])
    base = {"white": (0.93, 0.93, 0.92), "cream": (0.93, 0.89, 0.78), "grey": (0.78, 0.78, 0.77)}[kind]
    colour = _tint(rng, base, 0.03)
    field = 0.5 * smooth_noise(rng, height, width, 40) + 0.5 * smooth_noise(rng, height, width, 2)
    return _shade(height, width, colour, field, 0.015)


def table(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A darker desk: wood-brown, grey laminate or dark plastic, slightly mottled."""
    base = [(0.45, 0.33, 0.22), (0.5, 0.5, 0.5), (0.25, 0.25, 0.27), (0.62, 0.52, 0.4)][int(rng.integers(4))]
    field = smooth_noise(rng, height, width, 60) + 0.3 * smooth_noise(rng, height, width, 3)
    return _shade(height, width, _tint(rng, base, 0.06), field, 0.06)


def parquet(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Wooden planks: parallel boards of slightly different tone, grain along them, dark joints."""
    plank = int(rng.uniform(0.06, 0.16) * max(height, width))
    colour = _tint(rng, (0.6, 0.42, 0.25), 0.1)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    across = rows if rng.random() < 0.5 else cols
    along = cols if across is rows else rows
    board = (across // plank).astype(np.int32)
    tones = rng.uniform(0.8, 1.15, board.max() + 2).astype(np.float32)
    grain = np.sin(along / rng.uniform(3, 9) + 4 * smooth_noise(rng, height, width, 30)) * 0.05
    joint = (across % plank) < max(1, plank // 40)
    shade = tones[board] * (1 + grain) * np.where(joint, 0.6, 1.0)
    return np.clip(colour[None, None] * shade[..., None], 0, 1).astype(np.float32)


def carpet(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Pile: strong fine-grained noise over a colour, with a faint pattern."""
    base = [(0.55, 0.5, 0.45), (0.3, 0.3, 0.35), (0.6, 0.25, 0.2), (0.75, 0.72, 0.65), (0.2, 0.3, 0.45)][int(rng.integers(5))]
    field = smooth_noise(rng, height, width, 1.5) + 0.5 * smooth_noise(rng, height, width, 80)
    return _shade(height, width, _tint(rng, base, 0.08), field, 0.12)


def bedding(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A duvet or sheet: pale or coloured cloth with large soft folds and sometimes stripes."""
    base = [(0.9, 0.9, 0.9), (0.75, 0.8, 0.88), (0.85, 0.78, 0.7), (0.55, 0.6, 0.55), (0.4, 0.4, 0.5)][int(rng.integers(5))]
    folds = smooth_noise(rng, height, width, 150) + 0.5 * smooth_noise(rng, height, width, 50)
    picture = _shade(height, width, _tint(rng, base, 0.05), folds, 0.08)
    if rng.random() < 0.3:
        cols = np.arange(width, dtype=np.float32)
        stripes = (np.sin(cols / rng.uniform(8, 30)) > 0.6).astype(np.float32)[None, :, None]
        picture = picture * (1 - 0.15 * stripes)
    return picture


def fabric(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Woven cloth: a fine crossing weave over a colour."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(2.5, 6)
    weave = np.sin(rows / period) * np.sin(cols / period)
    field = weave + 0.5 * smooth_noise(rng, height, width, 60)
    base = tuple(rng.uniform(0.2, 0.9, 3))
    return _shade(height, width, _tint(rng, base, 0.0), field, 0.07)


def foil(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Crumpled foil or a shiny floor: grey with bright and dark patches."""
    field = smooth_noise(rng, height, width, 25) + 0.5 * smooth_noise(rng, height, width, 6)
    return _shade(height, width, _tint(rng, (0.7, 0.7, 0.72), 0.05), np.tanh(field), 0.3)


def tiles(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A tiled floor: squares with grout lines."""
    size = int(rng.uniform(0.15, 0.4) * max(height, width))
    rows, cols = np.mgrid[0:height, 0:width]
    grout = ((rows % size) < max(2, size // 30)) | ((cols % size) < max(2, size // 30))
    colour = _tint(rng, (0.75, 0.73, 0.7), 0.15)
    field = 0.6 * smooth_noise(rng, height, width, 20)
    picture = _shade(height, width, colour, field, 0.04)
    picture[grout] *= 0.75
    return picture


def surface(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    makers = {"paper": paper, "table": table, "parquet": parquet, "carpet": carpet, "bedding": bedding,
              "fabric": fabric, "foil": foil, "tiles": tiles}
    return makers[kind](rng, height, width)
