"""An object on a plain backdrop (a product shot's white or grey, a 28x28 item on black): the backdrop fitted
as a smooth quadratic surface, robust to the object, and the object measured against it, so uneven light
goes away; the side the object lies on (darker or lighter than the backdrop) sets the polarity."""

from __future__ import annotations

import numpy as np

NOISE_LEVELS = 4.0  # the object must stand this many noise standard deviations away from the backdrop
DARKEST_PAPER = 0.05  # dark objects are measured as a share of the backdrop's brightness, never below this
GREY_LEVEL = 1 / 255  # an 8-bit picture cannot tell differences under half of this from noise
WHITE_PERCENTILE = 99.0  # of the strongly marked pixels: the level that becomes full white (shading kept)


def robust_sigma(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation: blind to the object's outliers."""
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _surface(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """The backdrop's brightness as a smooth (quadratic) surface, and the noise on it: fitted first to the
    picture's border, then refitted to every pixel that agrees with the surface."""
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
    sigma = robust_sigma(values[border])
    agrees = border & (np.abs(values - np.median(values[border])) <= 3.0 * max(sigma, GREY_LEVEL / 2))
    for _ in range(4):
        trusted = terms[agrees]  # least squares through the 6x6 normal equations: fast, and well posed on [-1, 1]
        coefficients = np.linalg.lstsq(trusted.T @ trusted, trusted.T @ values[agrees], rcond=None)[0]
        residual = values - terms @ coefficients
        sigma = robust_sigma(residual[agrees])
        # Half a grey level at least: a clean synthetic picture has exactly zero noise.
        agrees = np.abs(residual) <= 3.0 * max(sigma, GREY_LEVEL / 2)
        if not agrees.any():
            break
    surface = sum(c * t for c, t in zip(coefficients, quadratic(np.arange(height), np.arange(width)), strict=True))
    return np.broadcast_to(surface, (height, width)).astype(np.float32), sigma


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


def ink_against_paper(gray: np.ndarray) -> tuple[np.ndarray, float] | None:
    """How far each pixel stands from the backdrop on the object's side, scaled so the object's level is 1
    (clipped), 0 within the backdrop's noise; and the object's contrast against the backdrop (dark
    objects: a share of its light) above that noise. None where nothing stands clear of the noise."""
    surface, sigma = _surface(gray)
    residual = gray - surface
    significant = 3.0 * max(sigma, GREY_LEVEL / 2)
    darker = -residual[residual < -significant].sum()
    lighter = residual[residual > significant].sum()
    if lighter >= darker:
        ink = np.clip(residual, 0.0, None)
    else:
        # Dark on light: light falls on both, so what the object takes away is measured as a share of the
        # backdrop's own brightness, which evens out a picture lit more on one side than the other.
        lit = np.maximum(surface, DARKEST_PAPER)
        ink, sigma = np.clip(-residual / lit, 0.0, None), sigma / float(np.median(lit))
    floor = max(NOISE_LEVELS * sigma, GREY_LEVEL / 2)
    above = ink[ink > floor]
    if above.size == 0:
        return None
    strong = above[above > _otsu(above)] if np.ptp(above) > 0 else above
    white = float(np.percentile(strong if strong.size else above, WHITE_PERCENTILE))
    if white < 2 * floor:  # nothing stands clear of the noise: a blank picture
        return None
    return np.where(ink > floor, np.minimum(ink / white, 1.0), 0.0).astype(np.float32), white - floor
