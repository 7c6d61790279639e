"""Pen strokes on paper, found the way a person finds them: thin marks darker (or lighter) than the paper
right around them, whatever the light does across the page.

  1. the side the ink lies on: light ink only on a dark background where thin bright marks hold most of
     what stands out (a canvas drawing, chalk), never a bright sheet lying on a dark table;
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
NOISE_LEVELS = 6.0  # ink stands this many robust spreads above the paper's marks
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
    light_ink = _light_ink(gray)
    strength = _flattened(gray, light_ink)
    return _select(strength)


def _light_ink(gray: np.ndarray) -> bool:
    """True for light ink on a dark background: the background is dark and thin bright marks (what an
    opening removes) hold most of the brightness above it, unlike a bright sheet on a dark table."""
    background = float(np.median(gray))
    if background >= 0.5:
        return False
    above = np.clip(gray - background, 0, None)
    total = float(above.sum())
    if total <= 0:
        return False
    thin = float(np.clip(gray - _envelope(gray, light_ink=True), 0, None).sum())
    return thin >= 0.5 * total


def _window(gray: np.ndarray) -> int:
    return max(3, int(WINDOW * min(gray.shape)) | 1)


def _envelope(gray: np.ndarray, light_ink: bool) -> np.ndarray:
    """The paper's brightness at each pixel with marks thinner than the window removed."""
    if min(gray.shape) < SMALL_PICTURE:  # a small picture has a flat background: its median
        return np.full_like(gray, float(np.median(gray)))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (_window(gray),) * 2)
    operation = cv2.MORPH_OPEN if light_ink else cv2.MORPH_CLOSE
    envelope = cv2.morphologyEx(gray, operation, kernel, borderType=cv2.BORDER_REPLICATE)
    return envelope


def _flattened(gray: np.ndarray, light_ink: bool) -> np.ndarray:
    """How much each pixel departs from its paper on the ink's side: as a share of the paper's light for
    dark ink (light falls on both), absolute for light ink on a dark ground."""
    if min(gray.shape) >= SMALL_PICTURE:
        gray = cv2.GaussianBlur(gray, (0, 0), 0.7)  # sensor noise and JPEG blocks are finer than any stroke
    paper = _envelope(gray, light_ink)
    if light_ink:
        return np.clip(gray - paper, 0, 1)
    return np.clip((paper - gray) / np.maximum(paper, 0.05), 0, 1)


def _select(strength: np.ndarray) -> Strokes | None:
    """Threshold above the paper's noise, then keep the connected pieces that make up the digit."""
    median = float(np.median(strength))
    spread = 1.4826 * float(np.median(np.abs(strength - median)))
    floor = max(median + NOISE_LEVELS * spread, MIN_INK)
    if float(strength.max()) <= floor:
        return None
    above = strength[strength > floor]
    # Pieces are what is above the paper's noise and connected (hysteresis: a stroke's faint parts and
    # antialiased edges belong to it); a piece counts only where it holds a stroke's core, above half the
    # level of the strongest marks (show-through and smudges stay below it).
    level = max(floor, 0.5 * float(np.percentile(above, 99)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats((strength > floor).astype(np.uint8), connectivity=8)
    cored = np.bincount(labels.ravel(), weights=(strength > level).ravel(), minlength=count)[1:] > 0
    masses = np.bincount(labels.ravel(), weights=strength.ravel(), minlength=count)[1:] * cored
    if not cored.any():
        return None
    height, width = strength.shape
    if min(height, width) < SMALL_PICTURE:  # a small clean picture has no specks: every marked piece counts
        keep = [int(i) for i in np.flatnonzero(cored)]
    else:
        keep = _digit_pieces(stats[1:], masses, height, width)
    mask = np.isin(labels, np.asarray(keep) + 1)
    # A stray antialiased pixel right beside a stroke (not touching it) is part of it too.
    mask |= cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & (strength > floor)
    ink = np.where(mask, strength, 0).astype(np.float32)
    contrast = float(np.percentile(strength[mask & (strength > level)], 90))
    return Strokes(ink=ink, mask=mask, contrast=contrast, pieces=len(keep))


def _is_edge(stat: np.ndarray, height: int, width: int) -> bool:
    """A piece lying along the picture's border and running most of its length: a sheet's or a shadow's edge."""
    left, top, box_w, box_h, _ = stat
    touches = left == 0 or top == 0 or left + box_w >= width or top + box_h >= height
    return bool(touches and (box_w >= 0.6 * width or box_h >= 0.6 * height))


def _digit_pieces(stats: np.ndarray, masses: np.ndarray, height: int, width: int) -> list[int]:
    """Indices of the pieces that form the digit: the one with most ink that is no edge, and the pieces
    with a fair share of ink close to the growing digit."""
    order = [int(i) for i in np.argsort(masses)[::-1] if masses[i] > 0]  # pieces with a stroke's core
    candidates = [i for i in order if not _is_edge(stats[i], height, width)] or order
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
