"""The ink methods, `mnist-digit` and `fashion-fit`: a decoded picture -> float32 [1, 28, 28] in [0, 1], white on
black, framed as MNIST and Fashion-MNIST were made, with the doubts met on the way:
  1. grey (a digit) or colour (a garment) at a working size, transparency flattened onto a backdrop;
  2. the object found as a person finds it: a digit's pen strokes against the paper right around them
     (strokes.py), a garment against its plain backdrop or the bed, carpet or floor it lies on
     (garments.py); a faint or unclear object still gives an input, with a warning;
  3. framed: "mnist-digit" crops to the digit's strokes, widens strokes far thinner than MNIST's (a
     ballpoint), fits it into 20x20 keeping its aspect and places it in 28x28 with its center of mass at
     (14, 14), as MNIST was made; "fashion-fit" crops to the item and scales its longest side to 28,
     centred, as Fashion-MNIST was made.
A 28x28 picture already in the MNIST convention passes through unchanged (up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from service.errors import InvalidImage
from service.imaging.garments import find_garment
from service.imaging.strokes import FAINT, find_strokes

METHODS = ("mnist-digit", "fashion-fit")

SIDE = 28  # the model's input is SIDE x SIDE
DIGIT_BOX = 20  # MNIST digits fill a 20x20 box inside the 28x28 field
METHOD_SIDE = {"mnist-digit": 1024, "fashion-fit": 512}  # larger pictures are reduced to this first
WORK_SIDE = max(METHOD_SIDE.values())  # the largest side a picture is decoded at for the ink methods
# Pen strokes thinner than THIN_STROKE of the digit's size (a ballpoint on paper, say) are thickened to
# STROKE: MNIST's strokes are 10-20 % of its 20-pixel box, and a model trained on them expects as much.
THIN_STROKE, STROKE = 0.08, 0.12
# Where the box around a fashion item ends: where it stands clear of the background (Fashion-MNIST
# trimmed its pictures' edges close to the background colour), faint parts included.
ITEM_EDGE = 0.15

WARNINGS = {
    "low_contrast": "the object stands out only faintly from its background; the answer may be unreliable",
    "unclear_object": "no clear outline of a single object was found; the answer may be unreliable",
}


@dataclass(frozen=True)
class ImageWarning:
    code: str
    message: str


def preprocess_image(image: Image.Image, method: str) -> np.ndarray:
    """A decoded picture -> float32 [1, 28, 28] in [0, 1], white on black, prepared as `method` says."""
    return prepare(image, method)[0]


def prepare(image: Image.Image, method: str) -> tuple[np.ndarray, list[ImageWarning]]:
    """The model input, and what was doubtful about the picture (an empty list when nothing was)."""
    if method == "mnist-digit":
        framed, doubts = _digit(image)
    else:
        framed, doubts = _item(image)
    return framed[np.newaxis].astype(np.float32), [ImageWarning(code, WARNINGS[code]) for code in doubts]


def _no_ink() -> InvalidImage:
    return InvalidImage("no ink found: the picture is blank; send a digit or object that stands out from its background")


def _digit(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    strokes = find_strokes(_grayscale(image, METHOD_SIDE["mnist-digit"]))
    if strokes is None:
        raise _no_ink()
    ink = np.minimum(strokes.ink / strokes.contrast, 1.0)  # saturated through the strokes' cores, as MNIST is
    # The box ends where a stroke is half as bright as its core, plus the partly inked pixels right next
    # to that (as MNIST's 20x20 box holds its antialiased edge); a faint halo or blur does not count.
    top, bottom, left, right = _box((ink > 0) & _dilated(ink > 0.5))
    framed = _place_by_mass(_fit(_thickened(ink[top:bottom, left:right]), DIGIT_BOX))
    return framed, ["low_contrast"] if strokes.contrast < FAINT else []


def _item(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    garment = find_garment(_colour(image, METHOD_SIDE["fashion-fit"]))
    if garment is None:
        raise _no_ink()
    clear = garment.ink > ITEM_EDGE  # and the partly marked pixels right next to it (its antialiased edge)
    top, bottom, left, right = _box((garment.ink > 0) & _dilated(clear) if clear.any() else garment.ink > 0)
    return _place_centred(_fit(garment.ink[top:bottom, left:right], SIDE)), garment.doubts


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right; exclusive ends) of a mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _dilated(mask: np.ndarray) -> np.ndarray:
    """True where any pixel of the 3x3 neighbourhood is True (binary dilation)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.logical_or.reduce([padded[r : r + height, c : c + width] for r in range(3) for c in range(3)])


def _reduced(image: Image.Image, work_side: int) -> Image.Image:
    """The picture shrunk (area-averaged, which also averages out noise) to at most `work_side` a side."""
    longest = max(image.size)
    if longest <= work_side:
        return image
    ratio = work_side / longest
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    return image.resize(size, Image.Resampling.BOX)


def _high_depth(image: Image.Image, work_side: int) -> np.ndarray | None:
    """A 16-bit, 32-bit or float grey picture as intensity in [0, 1]; None for 8-bit modes."""
    if image.mode.startswith("I;16"):
        return np.asarray(_reduced(image.convert("F"), work_side), dtype=np.float32) / 65535.0
    if image.mode in ("I", "F"):  # the smallest usual range that holds the values
        values = np.asarray(_reduced(image.convert("F"), work_side), dtype=np.float32)
        peak = next((r for r in (1.0, 255.0, 65535.0) if values.max() <= r), float(values.max()))
        return np.clip(values / peak, 0.0, 1.0)
    return None


def _transparent(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _grayscale(image: Image.Image, work_side: int) -> np.ndarray:
    """Intensity in [0, 1] (float32, working size), transparency flattened onto a contrasting backdrop."""
    if image.mode == "LAB":  # CIELab TIFF: its lightness is the gray picture
        image = image.getchannel("L")
    deep = _high_depth(image, work_side)
    if deep is not None:
        return deep
    if image.mode == "La":  # premultiplied alpha, which Pillow converts only to its plain form
        image = image.convert("LA")
    if not _transparent(image):
        return np.asarray(_reduced(_as_mode(image, "L"), work_side), dtype=np.float32) / 255.0
    rgba = _reduced(_as_mode(image, "RGBA"), work_side)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    gray = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
    # What is drawn is what is opaque (a canvas exports strokes on a transparent background): put it on
    # paper of the opposite brightness, so black strokes read as ink on white and white ones on black.
    drawn = float((gray * alpha).sum() / alpha.sum()) if alpha.sum() > 0 else 0.0
    backdrop = 1.0 if drawn < 0.5 else 0.0
    return gray * alpha + backdrop * (1.0 - alpha)


def _colour(image: Image.Image, work_side: int) -> np.ndarray:
    """RGB in [0, 1] (float32 [H, W, 3], working size); transparency on white, as a product is shown."""
    if image.mode == "LAB":
        image = image.getchannel("L")
    deep = _high_depth(image, work_side)
    if deep is not None:
        return np.repeat(deep[..., None], 3, axis=-1)
    if image.mode == "La":
        image = image.convert("LA")
    if not _transparent(image):
        return np.asarray(_reduced(_as_mode(image, "RGB"), work_side), dtype=np.float32) / 255.0
    rgba = np.asarray(_reduced(_as_mode(image, "RGBA"), work_side), dtype=np.float32) / 255.0
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)


def _as_mode(image: Image.Image, mode: str) -> Image.Image:
    """The picture in `mode`; as it is when already so (convert() would copy it whole: a large picture's memory twice)."""
    return image if image.mode == mode else image.convert(mode)


def _stroke_width(core: np.ndarray) -> float:
    """Mean width of the strokes in a mask: twice the area over the boundary (a stroke has two sides)."""
    padded = np.pad(core, 1)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return 2.0 * core.sum() / max(int((core & ~inner).sum()), 1)


def _thickened(patch: np.ndarray) -> np.ndarray:
    """The digit with strokes widened to STROKE of its size when they are thinner than THIN_STROKE."""
    size = max(patch.shape)
    width = _stroke_width(patch > 0.5)
    grow = round((STROKE * size - width) / 2)
    if width >= THIN_STROKE * size or grow < 1:
        return patch
    window = 2 * grow + 1  # a grey-level dilation, one axis at a time; the patch grows by `grow` a side
    widened = sliding_window_view(np.pad(patch, grow), window, axis=0).max(axis=-1)
    return sliding_window_view(widened, window, axis=1).max(axis=-1)


def _fit(patch: np.ndarray, box: int) -> np.ndarray:
    """Scale so the longest side is `box` pixels, keeping the aspect ratio (antialiased)."""
    height, width = patch.shape
    ratio = box / max(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    if size == (width, height):
        return patch
    resized = Image.fromarray(patch.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _place_by_mass(patch: np.ndarray) -> np.ndarray:
    """Paste into SIDE x SIDE so the center of mass lands on pixel (14, 14), as MNIST did; never off the edge."""
    height, width = patch.shape
    total = float(patch.sum())
    if total > 0:
        centre_row = float((patch.sum(axis=1) * np.arange(height)).sum() / total)
        centre_col = float((patch.sum(axis=0) * np.arange(width)).sum() / total)
    else:
        centre_row, centre_col = (height - 1) / 2, (width - 1) / 2
    top = min(max(round(SIDE / 2 - centre_row), 0), SIDE - height)
    left = min(max(round(SIDE / 2 - centre_col), 0), SIDE - width)
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = patch
    return canvas


def _place_centred(patch: np.ndarray) -> np.ndarray:
    """Paste into the middle of a SIDE x SIDE black field."""
    height, width = patch.shape
    top, left = (SIDE - height) // 2, (SIDE - width) // 2
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = patch
    return canvas
