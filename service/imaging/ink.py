"""The ink methods, `mnist-digit` and `fashion-fit`: a decoded picture -> float32 [1, 28, 28] in [0, 1], white on
black, framed as MNIST and Fashion-MNIST were made:
  1. grayscale, reduced to a working size, transparency flattened onto a backdrop that contrasts with
     what is drawn;
  2. fit the paper (a smooth surface, robust to the ink) and measure the ink against it, so uneven
     light goes away; the side the ink lies on (darker or lighter than the paper) sets the polarity;
  3. stretch contrast above the paper's noise level so the ink reads as full white on black;
  4. frame it: "mnist-digit" crops to the ink, widens strokes far thinner than MNIST's (a ballpoint),
     fits it into 20x20 keeping its aspect and places it in 28x28 with its center of mass at (14, 14),
     as MNIST was made; "fashion-fit" crops to the object and scales its longest side to 28, centred,
     as Fashion-MNIST was made.
A 28x28 picture already in the MNIST convention passes through unchanged (up to rounding).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from service.errors import InvalidImage

METHODS = ("mnist-digit", "fashion-fit")

SIDE = 28  # the model's input is SIDE x SIDE
DIGIT_BOX = 20  # MNIST digits fill a 20x20 box inside the 28x28 field
WORK_SIDE = 512  # larger pictures are reduced to this first: ample detail for a 28x28 result, bounded cost
NOISE_LEVELS = 4.0  # ink must stand this many noise standard deviations away from the paper
MIN_CONTRAST = 0.06  # ink fainter than this against the paper (dark ink: as a share of it) is nothing drawn
DARKEST_PAPER = 0.05  # dark ink is measured as a share of the paper's brightness, which never reads below this
GREY_LEVEL = 1 / 255  # an 8-bit picture cannot tell differences under half of this from noise
# Pen strokes thinner than THIN_STROKE of the digit's size (a ballpoint on paper, say) are thickened to
# STROKE: MNIST's strokes are 10-20 % of its 20-pixel box, and a model trained on them expects as much.
THIN_STROKE, STROKE = 0.08, 0.12
SPECK_FREE_SIDE = 4 * SIDE  # in pictures at least this big, specks under 3 pixels are noise, not ink
# Which ink level becomes full white (a percentile of the strongly inked pixels): digits are pen strokes,
# saturated through their core as in MNIST; fashion items keep their shading, only their brightest part saturates.
WHITE_PERCENTILE = {"mnist-digit": 90.0, "fashion-fit": 99.0}
# Where the box around the ink ends: a pen stroke where it is half as bright as its core (blur and halo
# do not count); a fashion item where it stands clear of the background (Fashion-MNIST trimmed its
# pictures' edges close to the background colour), faint parts included.
EDGE_LEVEL = {"mnist-digit": 0.5, "fashion-fit": 0.15}


def preprocess_image(image: Image.Image, method: str) -> np.ndarray:
    """A decoded picture -> float32 [1, 28, 28] in [0, 1], white on black, prepared as `method` says."""
    ink = _stretch(*_ink_on_black(_grayscale(image)), method)
    top, bottom, left, right = _ink_box(ink, EDGE_LEVEL[method])
    patch = ink[top:bottom, left:right]
    if method == "mnist-digit":
        framed = _place_by_mass(_fit(_thickened(patch), DIGIT_BOX))
    else:
        framed = _place_centred(_fit(patch, SIDE))
    return framed[np.newaxis].astype(np.float32)


def _reduced(image: Image.Image) -> Image.Image:
    """The picture shrunk (area-averaged, which also averages out noise) to at most WORK_SIDE a side."""
    longest = max(image.size)
    if longest <= WORK_SIDE:
        return image
    ratio = WORK_SIDE / longest
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    return image.resize(size, Image.Resampling.BOX)


def _grayscale(image: Image.Image) -> np.ndarray:
    """Intensity in [0, 1] (float32, working size), transparency flattened onto a contrasting backdrop."""
    if image.mode == "LAB":  # CIELab TIFF: its lightness is the gray picture
        image = image.getchannel("L")
    if image.mode.startswith("I;16"):
        return np.asarray(_reduced(image.convert("F")), dtype=np.float32) / 65535.0
    if image.mode in ("I", "F"):  # 32-bit integer or float: the smallest usual range that holds the values
        values = np.asarray(_reduced(image.convert("F")), dtype=np.float32)
        peak = next((r for r in (1.0, 255.0, 65535.0) if values.max() <= r), float(values.max()))
        return np.clip(values / peak, 0.0, 1.0)
    if image.mode == "La":  # premultiplied alpha, which Pillow converts only to its plain form
        image = image.convert("LA")
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not transparent:
        return np.asarray(_reduced(_as_mode(image, "L")), dtype=np.float32) / 255.0
    rgba = _reduced(_as_mode(image, "RGBA"))
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    gray = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
    # What is drawn is what is opaque (a canvas exports strokes on a transparent background): put it on
    # paper of the opposite brightness, so black strokes read as ink on white and white ones on black.
    drawn = float((gray * alpha).sum() / alpha.sum()) if alpha.sum() > 0 else 0.0
    backdrop = 1.0 if drawn < 0.5 else 0.0
    return gray * alpha + backdrop * (1.0 - alpha)


def _as_mode(image: Image.Image, mode: str) -> Image.Image:
    """The picture in `mode`; as it is when already so (convert() would copy it whole: a large picture's memory twice)."""
    return image if image.mode == mode else image.convert(mode)


def _robust_sigma(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation: blind to the ink's outliers."""
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _paper(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """The paper's brightness as a smooth (quadratic) surface, and the noise on it.

    Fitted first to the picture's border, then refitted to every pixel that agrees with the surface,
    so ink (which deviates strongly) never pulls it, and gradual uneven lighting is captured.
    """
    height, width = gray.shape
    step = max(1, int(np.sqrt(height * width / 4096)))  # a subsample is plenty for six coefficients
    rows = np.arange(0, height, step)
    cols = np.arange(0, width, step)

    def quadratic(r: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
        y = r[:, None] / max(height - 1, 1) * 2 - 1.0  # coordinates in [-1, 1]
        x = c[None, :] / max(width - 1, 1) * 2 - 1.0
        return [np.ones((1, 1)), x, y, x * x, x * y, y * y]

    terms = np.stack([np.broadcast_to(t, (rows.size, cols.size)).ravel() for t in quadratic(rows, cols)], axis=-1)
    values = gray[np.ix_(rows, cols)].ravel().astype(np.float64)
    ring = max(1, min(rows.size, cols.size) // 20)
    border = np.ones((rows.size, cols.size), dtype=bool)
    border[ring:-ring, ring:-ring] = False
    border = border.ravel()
    # Start from the border pixels close to its median: an object touching the edge does not count.
    sigma = _robust_sigma(values[border])
    agrees = border & (np.abs(values - np.median(values[border])) <= 3.0 * max(sigma, GREY_LEVEL / 2))
    for _ in range(4):
        trusted = terms[agrees]  # least squares through the 6x6 normal equations: fast, and well posed on [-1, 1]
        coefficients = np.linalg.lstsq(trusted.T @ trusted, trusted.T @ values[agrees], rcond=None)[0]
        residual = values - terms @ coefficients
        sigma = _robust_sigma(residual[agrees])
        # Half a grey level at least: a clean synthetic picture has exactly zero noise.
        agrees = np.abs(residual) <= 3.0 * max(sigma, GREY_LEVEL / 2)
        if not agrees.any():
            break
    surface = sum(c * t for c, t in zip(coefficients, quadratic(np.arange(height), np.arange(width)), strict=True))
    return np.broadcast_to(surface, (height, width)).astype(np.float32), sigma


def _ink_on_black(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """How far each pixel stands from the paper on the ink's side (so ink is bright), and the paper noise."""
    surface, sigma = _paper(gray)
    residual = gray - surface
    significant = 3.0 * max(sigma, GREY_LEVEL / 2)
    darker = -residual[residual < -significant].sum()
    lighter = residual[residual > significant].sum()
    if lighter >= darker:
        return np.clip(residual, 0.0, None), sigma
    # Dark ink on light paper: light falls on both, so what the ink takes away is measured as a share
    # of the paper's own brightness, which evens out a picture lit more on one side than the other.
    lit = np.maximum(surface, DARKEST_PAPER)
    return np.clip(-residual / lit, 0.0, None), sigma / float(np.median(lit))


def _otsu(values: np.ndarray) -> float:
    """The level that best splits `values` into two classes (Otsu's method on a 256-bin histogram)."""
    counts, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(counts * centres)
    mean_low = mass_low / np.maximum(weight_low, 1)
    mean_high = (mass_low[-1] - mass_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _stretch(ink: np.ndarray, sigma: float, method: str) -> np.ndarray:
    """Silence the paper's noise and scale so the ink's level is 1 (clipped); faint edges keep their share."""
    floor = max(NOISE_LEVELS * sigma, GREY_LEVEL / 2)
    above = ink[ink > floor]
    if above.size == 0:
        raise InvalidImage(
            "no ink found: the picture is blank; send a digit or object that stands out from its background"
        )
    strong = above[above > _otsu(above)] if np.ptp(above) > 0 else above
    white = float(np.percentile(strong if strong.size else above, WHITE_PERCENTILE[method]))
    if white < max(floor + MIN_CONTRAST, 2 * floor):  # the ink must stand clear of the noise, too
        raise InvalidImage(
            "no ink found: the picture has too little contrast; send a digit or object that stands out "
            "from its background"
        )
    return np.where(ink > floor, np.minimum(ink / white, 1.0), 0.0)


def _dilated(mask: np.ndarray) -> np.ndarray:
    """True where any pixel of the 3x3 neighbourhood is True (binary dilation)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.logical_or.reduce([padded[r : r + height, c : c + width] for r in range(3) for c in range(3)])


def _ink_box(ink: np.ndarray, edge_level: float) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right; exclusive ends) of the ink: where it exceeds `edge_level`,
    plus the partially inked pixels right next to that (as MNIST's 20x20 box holds its antialiased edge).
    """
    core = ink > edge_level
    if min(ink.shape) >= SPECK_FREE_SIDE:
        opened = _dilated(~_dilated(~core))  # erosion then dilation drops anything under 3 px wide
        if opened.any():
            core = opened
    mask = (ink > 0) & _dilated(core)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


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

