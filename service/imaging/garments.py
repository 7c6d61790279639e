"""A garment separated from what it lies on, and measured as Fashion-MNIST measured its items: how dark the
product is (Fashion-MNIST is the negative of product photos on white), 0 around it.

  * a product shot (a plain light or transparent backdrop, which the border shows): the backdrop is fitted
    as a smooth surface (robust to the item) and the item is what departs from it, as before;
  * a natural photo (bedding, carpet, parquet, a door): OpenCV's GrabCut separates the item from the
    surface, seeded with the picture's border as surface and all within it as probable item, on a reduced
    copy (the outline needs no more detail than the 28x28 result); the largest piece and those of a fair
    size are kept, holes filled.
    The item's darkness is its luminance against the brightest part of the picture (the light the
    photo was taken in), with a floor so that a white shirt still shows its silhouette.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from service.imaging.paper import ink_against_paper

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
BORDER = 0.03  # the border ring, as a share of the short side, taken as backdrop or surface
PLAIN_SPREAD = 0.04  # a backdrop whose border varies less than this (robust spread) is plain: a product shot
PLAIN_LIGHT = 0.6  # a product's backdrop is white or light grey
BLANK_RANGE = 8 / 255  # a picture whose grey levels span less than this holds nothing at all
MAX_TILT = 25.0  # a garment lying tilted by less than this (degrees) is turned upright, as Fashion-MNIST's are
SMALL_PICTURE = 64  # a thumbnail this small is a product shot (or a 28x28 item): no surface to separate
SEGMENT_SIDE = 120  # GrabCut runs on a copy this large a side (an outline for 28x28 needs no more)
GRABCUT_ROUNDS = 3
RNG_SEED = 18  # k-means and GrabCut draw from OpenCV's per-thread RNG: seeded per picture, a picture gets one answer
BORDER_COLOURS = 6  # the surface's colours, as k-means centres of the border's
PIECE_SHARE = 0.25  # pieces smaller than this share of the largest are surface, not item (a pair of shoes: both)
SILHOUETTE = 0.1  # the least darkness inside the outline: a white item keeps its shape
LOW_CONTRAST = 0.08  # item and surface closer than this in colour: a doubtful outline
FAINT_ON_BACKDROP = 0.06  # an item departing less than this from a plain backdrop is faint


@dataclass
class Garment:
    ink: np.ndarray  # float32 [H, W] in [0, 1]: the item's darkness, 0 off the item
    doubts: list[str] = field(default_factory=list)  # "low_contrast", "unclear_object"


def find_garment(rgb: np.ndarray) -> Garment | None:
    """The item in an RGB picture in [0, 1] (transparency already on white), or None where the picture
    is blank."""
    gray = rgb @ LUMA
    ring = _border(gray.shape)
    level = float(np.median(gray[ring]))
    spread = 1.4826 * float(np.median(np.abs(gray[ring] - level)))
    if min(gray.shape) < SMALL_PICTURE:  # a thumbnail or a 28x28 item: its backdrop is plain
        return _on_backdrop(gray)
    if spread < PLAIN_SPREAD and level > PLAIN_LIGHT:  # a product shot's white or grey backdrop
        found = _on_backdrop(gray)
        if found is not None or float(np.ptp(gray)) < BLANK_RANGE:
            return found
        return _faint(_on_surface(rgb, gray, ring))  # something is there, too faint for the backdrop's fit
    if float(np.ptp(gray)) < BLANK_RANGE:  # one flat colour: nothing to find
        return None
    return _on_surface(rgb, gray, ring)


def _faint(garment: Garment) -> Garment:
    if "low_contrast" not in garment.doubts:
        garment.doubts.append("low_contrast")
    return garment


def _border(shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    band = max(1, int(BORDER * min(height, width)))
    ring = np.ones(shape, dtype=bool)
    ring[band:-band, band:-band] = False
    return ring


def _on_backdrop(gray: np.ndarray) -> Garment | None:
    found = ink_against_paper(gray)
    if found is None:
        return None
    ink, contrast = found
    return Garment(ink=ink, doubts=["low_contrast"] if contrast < FAINT_ON_BACKDROP else [])


def _on_surface(rgb: np.ndarray, gray: np.ndarray, ring: np.ndarray) -> Garment:
    height, width = gray.shape
    ratio = min(1.0, SEGMENT_SIDE / max(height, width))
    small = cv2.resize(rgb, (max(1, round(width * ratio)), max(1, round(height * ratio))), interpolation=cv2.INTER_AREA)
    doubts: list[str] = []
    cv2.setRNGSeed(RNG_SEED)  # once per picture, before its k-means and GrabCut draw from the stream
    item = _grabcut(small)
    if item is None:
        doubts.append("unclear_object")
        item = _unlike_border(small)
    item = cv2.resize(item.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    if not item.any():  # no outline at all: the whole picture stands in for the item, and the answer says so
        if "unclear_object" not in doubts:
            doubts.append("unclear_object")
        item = np.ones_like(item)
    surface_colour = np.median(rgb[ring], axis=0)
    item_colour = np.median(rgb[item], axis=0) if item.any() else surface_colour
    if float(np.abs(item_colour - surface_colour).max()) < LOW_CONTRAST:
        doubts.append("low_contrast")
    white = max(float(np.percentile(gray, 99)), 0.05)
    darkness = np.clip(1.0 - gray / white, SILHOUETTE, 1.0)
    return Garment(ink=_upright(np.where(item, darkness, 0.0).astype(np.float32), item), doubts=doubts)


def _upright(ink: np.ndarray, item: np.ndarray) -> np.ndarray:
    """The item turned upright when it lies slightly tilted (its outline's smallest enclosing rectangle
    says by how much): Fashion-MNIST's items stand straight, a garment on a bed rarely does."""
    contours, _ = cv2.findContours(item.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return ink
    (centre_x, centre_y), _, angle = cv2.minAreaRect(max(contours, key=cv2.contourArea))
    tilt = (angle + 45.0) % 90.0 - 45.0  # the rectangle's angle, folded into [-45, 45)
    if not 2.0 <= abs(tilt) <= MAX_TILT:
        return ink
    height, width = ink.shape
    margin = int(0.3 * max(height, width))  # room for the corners that turn out of the frame
    padded = cv2.copyMakeBorder(ink, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=0)
    matrix = cv2.getRotationMatrix2D((centre_x + margin, centre_y + margin), tilt, 1.0)
    return cv2.warpAffine(padded, matrix, padded.shape[::-1], flags=cv2.INTER_LINEAR)


def _grabcut(small: np.ndarray) -> np.ndarray | None:
    """The item's pixels by GrabCut, seeded with the border as surface; None when it finds no item or
    takes nearly everything."""
    pixels = np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)
    ring = _border(small.shape[:2])
    # Everything inside the border may be item, as GrabCut's own rectangle start has it. Starting the item's
    # colours from only the pixels unlike the border lost a patterned item's other colours (a flowered dress
    # kept as specks): fashion-convnet 3 answered 45.4% -> 59.0% of 2,551 real photos right (docs/photos.md).
    seeds = np.full(small.shape[:2], cv2.GC_PR_FGD, np.uint8)
    seeds[ring] = cv2.GC_BGD
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(pixels, seeds, None, background, foreground, GRABCUT_ROUNDS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a single-coloured picture: no colour model to fit
        return None
    item = _kept_pieces((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD))
    share = float(item.mean())
    return item if 0.01 <= share <= 0.9 else None


def _unlike_border(small: np.ndarray) -> np.ndarray:
    """Pixels whose colour is far from every colour of the border (k-means centres of its colours; Otsu
    on the distance to the nearest): the item where GrabCut finds none."""
    samples = small[_border(small.shape[:2])].astype(np.float32)
    samples = samples[:: max(1, len(samples) // 2000)]
    clusters = min(BORDER_COLOURS, len(samples))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 10, 0.01)
    _, _, centres = cv2.kmeans(samples, clusters, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    pixels = small.reshape(-1, 1, 3)
    distance = np.sqrt(((pixels - centres[None]) ** 2).sum(axis=-1).min(axis=1)).reshape(small.shape[:2])
    scaled = np.clip(distance / max(float(distance.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
    level, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return _kept_pieces((scaled > level) & (distance > 0.06))


def _kept_pieces(mask: np.ndarray) -> np.ndarray:
    """The largest piece and those of a fair size, smoothed and with their holes filled."""
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = np.isin(labels, np.flatnonzero(areas >= PIECE_SHARE * areas.max()) + 1).astype(np.uint8)
    contours, _ = cv2.findContours(kept, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(kept)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)
