"""Pen strokes on paper, found the way a person finds them: thin marks darker (or lighter) than the paper
right around them, whatever the light does across the page.

  1. the side the ink lies on: dark on a light background or a bright sheet that fills much of the view;
     else the side whose thin marks stand out more (a canvas drawing or chalk: light);
  2. illumination flattened at the scale of the digit: a morphological closing (opening for light ink)
     with a window wider than any pen stroke gives the paper's own brightness at each pixel, so a
     gradient, a soft shadow or the sharp edge of a shadow or of the sheet (all monotone steps, which
     the closing reproduces) cancel out, and only marks thinner than the window remain (black-hat);
  3. marks measured against the paper's local brightness and kept above the noise of the paper;
  4. connected components (OpenCV) kept that belong to the digit: the one holding most ink, and the
     pieces near it with a fair share of ink; specks, show-through, paper and table edges dropped.

OpenCV does the morphology and the components: its rectangular windows cost the same at any size, so a
1,024-pixel photo is searched in a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WINDOW = 0.25  # the flattening window, as a share of the picture's short side: wider than a marker's stroke
SMALL_PICTURE = 112  # below this (a 28x28 digit, a small crop) the background is flat: no flattening needed
FLAT_SHARE = 0.4  # one grey level this much of the picture: a drawn or enlarged picture, flat: no flattening needed
NOISE_LEVELS = 6.0  # ink stands this many robust spreads above the paper's marks
LIGHT_INK_SHARE = 0.15  # light strokes cover less than this share of a picture; a bright sheet more
SAMPLE = 3  # medians of large pictures are taken over every third pixel each way
TILES = 6  # the paper's marks are measured in tiles this many to the short side
FAINT = 0.12  # ink taking less than this share of the paper's light is faint: predicted, with a warning
MIN_INK = 0.5 / 255  # half a grey level: an 8-bit picture cannot tell less from nothing
PIECE_SHARE = 0.03  # a piece with less ink than this share of the main stroke's is a speck
NEAR = 0.6  # pieces farther than this many digit sizes from the main stroke are not part of it


@dataclass
class Strokes:
    ink: np.ndarray  # float32 [H, W] in [0, 1]: how strongly each pixel is inked, 0 off the digit
    mask: np.ndarray  # bool [H, W]: the digit's pixels
    contrast: float  # the strokes' typical strength (90th percentile of their cores), as a share of the paper's light
    pieces: int  # connected pieces kept


def find_strokes(gray: np.ndarray) -> Strokes | None:
    """The digit's strokes in a grayscale picture in [0, 1], or None where nothing is drawn."""
    if min(gray.shape) < SMALL_PICTURE or _flat_background(gray):
        # A small clean picture (a 28x28 digit) or a drawn one (a digit enlarged, a canvas export): its background
        # is one level, which says the ink's side; flattening would take a stroke a seventh of the picture wide
        # for paper, and the share of bright pixels of a big light digit for a sheet in view.
        return _select(_flattened(gray, light_ink=float(np.median(gray)) < 0.5, flat=True))
    gray = cv2.GaussianBlur(gray, (0, 0), 0.7)  # sensor noise and JPEG blocks are finer than any stroke
    dark = _flattened(gray, light_ink=False)
    if float(np.median(gray)) >= 0.5 or _bright_share(gray) > LIGHT_INK_SHARE:
        return _select(dark)  # a light background, or a bright sheet in view: the ink is dark
    # A dark background: light ink (a canvas drawing, chalk), or dark ink on a small sheet lying on a dark
    # table. The side whose thin marks stand out more is the ink's; a texture marks both sides alike.
    light = _flattened(gray, light_ink=True)
    return _select(light if _marked(light) > _marked(dark) else dark)


def _flat_background(gray: np.ndarray) -> bool:
    """Whether one grey level covers FLAT_SHARE of the picture: a drawn or enlarged picture, never a photo (the
    sensor's noise spreads a photo's paper over many levels)."""
    levels = np.bincount(np.clip(gray[::SAMPLE, ::SAMPLE] * 255 + 0.5, 0, 255).astype(np.uint8).ravel(), minlength=256)
    return float(levels.max()) >= FLAT_SHARE * float(levels.sum())


def _bright_share(gray: np.ndarray) -> float:
    """The share of the picture in its brighter half (Otsu's split): light ink covers little of it."""
    pixels = np.clip(gray * 255 + 0.5, 0, 255).astype(np.uint8)
    level, _ = cv2.threshold(pixels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float((pixels > level).mean())


def _marked(strength: np.ndarray) -> float:
    """How much stands out of the picture's typical marks (above their noise level, tile by tile), in all."""
    return float(np.clip(strength - _noise_floor(strength), 0, None).sum())


def _window(gray: np.ndarray) -> int:
    return max(3, int(WINDOW * min(gray.shape)) | 1)


def _envelope(gray: np.ndarray, light_ink: bool, flat: bool) -> np.ndarray:
    """The paper's brightness at each pixel with marks thinner than the window removed; `flat` (a small or drawn
    picture, find_strokes): one level, its median."""
    if flat:
        return np.full_like(gray, float(np.median(gray)))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (_window(gray),) * 2)
    operation = cv2.MORPH_OPEN if light_ink else cv2.MORPH_CLOSE
    envelope = cv2.morphologyEx(gray, operation, kernel, borderType=cv2.BORDER_REPLICATE)
    return envelope


def _flattened(gray: np.ndarray, light_ink: bool, flat: bool = False) -> np.ndarray:
    """How much each pixel departs from its paper on the ink's side: as a share of the paper's light for
    dark ink (light falls on both), absolute for light ink on a dark ground."""
    paper = _envelope(gray, light_ink, flat)
    if light_ink:
        return np.clip(gray - paper, 0, 1)
    return np.clip((paper - gray) / np.maximum(paper, 0.05), 0, 1)


def _noise_floor(strength: np.ndarray) -> np.ndarray | float:
    """The level each pixel's strength must pass to be ink: the paper's marks (texture, noise) measured
    robustly in tiles, so a textured table does not lower the bar on a smooth sheet; never above half the
    strongest marks' level (or the whole picture's), so a tile filled by a marker's stroke keeps it."""
    sample = strength[::SAMPLE, ::SAMPLE] if min(strength.shape) >= SMALL_PICTURE else strength
    median = float(np.median(sample))  # of every SAMPLE-th pixel each way: plenty for a median, far cheaper
    whole = max(median + NOISE_LEVELS * 1.4826 * float(np.median(np.abs(sample - median))), MIN_INK)
    height, width = strength.shape
    side = min(height, width) // TILES // SAMPLE * SAMPLE
    if side < SMALL_PICTURE // 4:
        return whole
    rows, cols = height // side, width // side
    tiles = strength[: rows * side : SAMPLE, : cols * side : SAMPLE]
    tiles = tiles.reshape(rows, side // SAMPLE, cols, -1).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    centre = np.median(tiles, axis=-1)
    spread = 1.4826 * np.median(np.abs(tiles - centre[..., None]), axis=-1)
    local = cv2.resize((centre + NOISE_LEVELS * spread).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(local, MIN_INK, max(whole, 0.5 * float(np.percentile(strength, 99.9))))


def _select(strength: np.ndarray) -> Strokes | None:
    """Threshold above the paper's noise, then keep the connected pieces that make up the digit."""
    floor = _noise_floor(strength)
    excess = strength - floor
    if float(excess.max()) <= 0:
        return None
    # Pieces are what is above the paper's noise and connected (hysteresis: a stroke's faint parts and
    # antialiased edges belong to it); a piece counts only where it holds a stroke's core, above half the
    # level of the strongest marks (show-through and smudges stay below it).
    level = 0.5 * float(np.percentile(excess[excess > 0], 99))
    count, labels, stats, _ = cv2.connectedComponentsWithStats((excess > 0).astype(np.uint8), connectivity=8)
    cored = np.bincount(labels.ravel(), weights=(excess > level).ravel(), minlength=count)[1:] > 0
    masses = np.bincount(labels.ravel(), weights=excess.ravel(), minlength=count)[1:] * cored
    if not cored.any():
        return None
    height, width = strength.shape
    if min(height, width) < SMALL_PICTURE:  # a small clean picture has no specks: every marked piece counts
        keep = [int(i) for i in np.flatnonzero(cored)]
    else:
        keep = _digit_pieces(stats[1:], masses, height, width)
    mask = np.isin(labels, np.asarray(keep) + 1)
    # A stray antialiased pixel right beside a stroke (not touching it) is part of it too.
    mask |= cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & (excess > 0)
    ink = np.where(mask, strength, 0).astype(np.float32)
    contrast = float(np.percentile(strength[mask & (excess > level)], 90))
    return Strokes(ink=ink, mask=mask, contrast=contrast, pieces=len(keep))


def _touches_border(stat: np.ndarray, height: int, width: int) -> bool:
    """A piece reaching the picture's edge: the table in view beside a sheet, a shadow, the sheet's edge
    (a digit someone photographs lies inside the frame)."""
    left, top, box_w, box_h, _ = stat
    return bool(left == 0 or top == 0 or left + box_w >= width or top + box_h >= height)


def _digit_pieces(stats: np.ndarray, masses: np.ndarray, height: int, width: int) -> list[int]:
    """Indices of the pieces that form the digit: the one with most ink inside the frame, and the pieces
    with a fair share of ink close to the growing digit."""
    order = [int(i) for i in np.argsort(masses)[::-1] if masses[i] > 0]  # pieces with a stroke's core
    candidates = [i for i in order if not _touches_border(stats[i], height, width)] or order
    main = candidates[0]
    keep = [main]
    left, top, box_w, box_h, _ = stats[main]
    box = [left, top, left + box_w, top + box_h]
    for i in candidates[1:]:
        if masses[i] < PIECE_SHARE * masses[main]:
            break  # sorted by mass: the rest are specks
        size = max(box[2] - box[0], box[3] - box[1])
        l, t, w, h, _ = stats[i]
        gap_x = max(box[0] - (l + w), l - box[2], 0)
        gap_y = max(box[1] - (t + h), t - box[3], 0)
        if max(gap_x, gap_y) <= NEAR * size:
            keep.append(i)
            box = [min(box[0], l), min(box[1], t), max(box[2], l + w), max(box[3], t + h)]
    return keep
