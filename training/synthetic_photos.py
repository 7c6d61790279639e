"""Synthetic phone photos of MNIST digits and Fashion-MNIST items, for the conditions of issue 18:

  digit-photo      a digit re-drawn as a pen stroke (ballpoint to marker; blue, black or red) on paper
                   filling the frame: uneven light, big soft shadows and shadow edges, show-through from
                   the back of the page, specks, sometimes a tiny digit in a large photo, perspective, blur,
                   noise, JPEG, EXIF orientation;
  digit-card       the same digit on a sheet that does not fill the frame, a little brighter than the
                   table around it, the sheet's edges in view;
  product-shot     a garment enlarged, coloured and textured on a white, grey or transparent background
                   (RGBA, black under the transparency), 80 to 2,700 pixels, JPEG, PNG or WEBP;
  natural-clothes  a garment laid on bedding, carpet, parquet, foil, tiles or cloth, sometimes hung on a
                   hanger, shoes as pairs, lit unevenly, photographed at an angle.

`photo(condition, image, rng)` gives the encoded file's bytes, as a person would upload it."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize

from training.textures import surface

CONDITIONS = ("digit-photo", "digit-card", "product-shot", "natural-clothes")
DIGIT_CONDITIONS, CLOTHES_CONDITIONS = CONDITIONS[:2], CONDITIONS[2:]
INKS = {"blue": (0.12, 0.2, 0.6), "black": (0.1, 0.1, 0.12), "red": (0.7, 0.12, 0.15)}
SHOES = (5, 7, 9)  # sandal, sneaker, ankle boot: photographed as pairs
COMPOSE_SIDE = 1000  # scenes are composed at most this large, then enlarged: a photo's detail is not finer
EXIF_ORIENTATION = 0x0112
# Pixel data stored so that applying the EXIF orientation turns it upright (what a phone writes).
STORED_FOR_ORIENTATION = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


# ---------------------------------------------------------------- the objects


def pen_strokes(digit: np.ndarray, size: int, width: float) -> np.ndarray:
    """Coverage in [0, 1] of the digit re-drawn along its centre line with a pen `width` pixels wide."""
    big = cv2.resize(digit.astype(np.float32) / 255, (size, size), interpolation=cv2.INTER_CUBIC)
    skeleton = skeletonize(big > 0.45)
    if not skeleton.any():
        return np.clip(big, 0, 1)
    distance = cv2.distanceTransform((~skeleton).astype(np.uint8), cv2.DIST_L2, 5)
    return np.clip(width / 2 - distance + 0.5, 0.0, 1.0).astype(np.float32)  # antialiased edge


def pen_width(rng: np.random.Generator, size: int) -> float:
    """A ballpoint (thin), a felt-tip, or a marker (thick), in pixels for a digit `size` pixels tall."""
    kind = rng.choice(["ballpoint", "felt", "marker"], p=[0.4, 0.3, 0.3])
    share = {"ballpoint": (0.012, 0.03), "felt": (0.04, 0.07), "marker": (0.08, 0.15)}[kind]
    return max(1.0, float(rng.uniform(*share)) * size)


def garment(item: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The item enlarged to `size` as a coloured, textured RGB picture and its opacity (the item's shape)."""
    # Fashion-MNIST's edge pixels blend the item with the white backdrop: the item is opaque inside its
    # outline and where it is clearly dark, and its own darkness at the edge is the blend over that opacity.
    inside = ndimage.binary_erosion(ndimage.binary_fill_holes(item > 0))
    opacity = np.maximum(np.clip(item / 64.0, 0, 1), inside).astype(np.float32)
    smooth = max(0.5, 0.4 * size / 28)  # hide the 28-pixel grid, as a real photo has none

    def enlarged(values: np.ndarray) -> np.ndarray:
        return np.clip(soft_blur(cv2.resize(values.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC), smooth), 0, 1)

    alpha = enlarged(opacity)
    darkness = np.clip(enlarged(item / 255.0) / np.maximum(alpha, 0.05), 0, 1)
    colour = rng.uniform(0.15, 1.0, 3).astype(np.float32)
    colour /= max(float(colour @ np.array([0.299, 0.587, 0.114], np.float32)), 0.05)  # unit luminance
    lightness = 1.0 - darkness * rng.uniform(0.75, 1.0)  # Fashion-MNIST is the product's darkness
    texture = 1.0 + 0.04 * cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), max(0.6, size / 300))
    rgb = np.clip(lightness[..., None] * colour[None, None] * texture[..., None], 0.0, 1.0)
    return rgb.astype(np.float32), np.clip(alpha, 0, 1)


# ---------------------------------------------------------------- light, camera, file


def soft_blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur; a wide one is done on a reduced copy (cheap, and a soft shadow loses nothing)."""
    shrink = max(1, int(sigma // 4))
    if shrink == 1:
        return cv2.GaussianBlur(mask, (0, 0), sigma)
    height, width = mask.shape[:2]
    small = cv2.resize(mask, (max(1, width // shrink), max(1, height // shrink)), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / shrink), (width, height), interpolation=cv2.INTER_LINEAR)


def lighting(rng: np.random.Generator, height: int, width: int, *, shadows: bool = True) -> np.ndarray:
    """A multiplicative light field: a gradient, vignetting, a big soft shadow and sometimes a shadow edge."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.cos(angle) * cols / width + np.sin(angle) * rows / height)
    light = 1.0 - rng.uniform(0.0, 0.35) * (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    radius = np.hypot(rows / height - 0.5, cols / width - 0.5)
    light *= 1.0 - rng.uniform(0.0, 0.25) * radius ** 2 * 2
    side = min(height, width)
    if shadows and rng.random() < 0.5:  # a big soft shadow (the phone, a hand)
        shrink = max(1, side // 128)  # drawn and blurred small: a soft shadow has no detail to lose
        mask = np.zeros((height // shrink + 1, width // shrink + 1), np.float32)
        centre = (int(rng.uniform(0, width) / shrink), int(rng.uniform(0, height) / shrink))
        axes = (int(rng.uniform(0.2, 0.6) * side / shrink), int(rng.uniform(0.2, 0.6) * side / shrink))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.04, 0.12) * side / shrink)
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
        light *= 1.0 - rng.uniform(0.2, 0.5) * mask
    if shadows and rng.random() < 0.35:  # a shadow edge across the picture
        angle = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(-0.35, 0.35)
        signed = np.cos(angle) * (cols / width - 0.5) + np.sin(angle) * (rows / height - 0.5) - offset
        sharpness = rng.uniform(0.004, 0.03)
        light *= 1.0 - rng.uniform(0.2, 0.45) * (1 / (1 + np.exp(-signed / sharpness)))
    return light.astype(np.float32)


def perspective(picture: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """The picture seen slightly off-axis: each corner moved by up to `amount` of the side."""
    height, width = picture.shape[:2]
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    moved = (corners + rng.uniform(-amount, amount, (4, 2)) * [width, height]).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(corners, moved)
    return cv2.warpPerspective(picture, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def composed(final: tuple[int, int]) -> tuple[int, int]:
    """The size a scene is composed at: at most COMPOSE_SIDE a side (the camera enlarges it to `final`)."""
    ratio = min(1.0, COMPOSE_SIDE / max(final))
    return max(1, round(final[0] * ratio)), max(1, round(final[1] * ratio))


def camera(picture: np.ndarray, rng: np.random.Generator, final: tuple[int, int] | None = None) -> np.ndarray:
    """Enlarged to the `final` (height, width) where composed smaller, lens blur and sensor noise, then 8 bits."""
    if final is not None and final != picture.shape[:2]:
        picture = cv2.resize(picture, (final[1], final[0]), interpolation=cv2.INTER_LINEAR)
    side = min(picture.shape[:2])
    sigma = rng.uniform(0.0, 1.5) * side / 1000
    if sigma > 0.3:
        picture = cv2.GaussianBlur(picture, (0, 0), sigma)
    picture = picture + rng.normal(0.0, rng.uniform(0.005, 0.035), picture.shape).astype(np.float32)
    return np.clip(picture * 255 + 0.5, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, rng: np.random.Generator, formats: tuple[str, ...] = ("JPEG",), exif: bool = False) -> bytes:
    """The picture as a file: JPEG, PNG or WEBP, sometimes stored rotated with an EXIF orientation tag."""
    image = Image.fromarray(pixels)
    format = str(rng.choice(formats))
    if format == "JPEG" and image.mode == "RGBA":
        format = "PNG"
    options: dict = {"quality": int(rng.integers(60, 96))} if format in ("JPEG", "WEBP") else {}
    if exif and format == "JPEG" and rng.random() < 0.3:
        orientation = int(rng.choice(list(STORED_FOR_ORIENTATION)))
        image = image.transpose(STORED_FOR_ORIENTATION[orientation])
        tags = Image.Exif()
        tags[EXIF_ORIENTATION] = orientation
        options["exif"] = tags.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def photo_size(rng: np.random.Generator, low: int, high: int) -> tuple[int, int]:
    """(height, width) of a phone photo, portrait or landscape, long side in [low, high]."""
    long = int(rng.uniform(low, high))
    short = int(long * rng.choice([0.75, 0.5625, 1.0], p=[0.6, 0.25, 0.15]))
    return (long, short) if rng.random() < 0.5 else (short, long)


# ---------------------------------------------------------------- the scenes


def _draw_digit(scene: np.ndarray, digit: np.ndarray, rng: np.random.Generator, size: int, top: int, left: int) -> None:
    """Pen strokes of the digit (ink colour, uneven pressure) written into `scene` in place."""
    coverage = pen_strokes(digit, size, pen_width(rng, size))
    pressure = 0.75 + 0.25 * rng.random((size, size)).astype(np.float32)
    coverage = (coverage * cv2.GaussianBlur(pressure, (0, 0), 2))[..., None]
    ink = np.asarray(INKS[str(rng.choice(list(INKS)))], np.float32) * rng.uniform(0.8, 1.2)
    region = scene[top : top + size, left : left + size]
    region[:] = region * (1 - coverage) + np.clip(ink, 0, 1) * region * coverage * 1.6


def _show_through(scene: np.ndarray, digit: np.ndarray, rng: np.random.Generator, size: int, top: int, left: int) -> None:
    """Writing on the back of the page, seen mirrored, faint and blurred."""
    size = min(size, scene.shape[0] - top, scene.shape[1] - left)
    coverage = pen_strokes(digit[:, ::-1], size, pen_width(rng, size) * 1.5)
    coverage = soft_blur(coverage, max(1.0, size / 120)) * rng.uniform(0.05, 0.15)
    scene[top : top + size, left : left + size] *= (1 - coverage)[..., None]


def _specks(scene: np.ndarray, rng: np.random.Generator) -> None:
    height, width = scene.shape[:2]
    for _ in range(int(rng.integers(0, 7))):
        radius = int(rng.integers(1, max(2, min(height, width) // 250)))
        cv2.circle(scene, (int(rng.integers(width)), int(rng.integers(height))), radius, tuple(float(v) for v in rng.uniform(0.1, 0.5, 3)), -1)


def digit_photo(digit: np.ndarray, rng: np.random.Generator, back: np.ndarray | None = None, max_side: int = 2000) -> bytes:
    """A digit on paper that fills the frame."""
    tiny = rng.random() < 0.12 and max_side >= 1600
    final = photo_size(rng, 1600, max_side) if tiny else photo_size(rng, 700, max(700, max_side * 0.7))
    height, width = composed(final)
    scene = surface("paper", rng, height, width)
    size = int(min(height, width) * (rng.uniform(0.05, 0.09) if tiny else rng.uniform(0.25, 0.7)))
    top, left = int(rng.uniform(0.1, 0.9) * (height - size)), int(rng.uniform(0.1, 0.9) * (width - size))
    if back is not None and rng.random() < 0.4:
        _show_through(scene, back, rng, int(size * rng.uniform(0.8, 1.3)), int(rng.uniform(0, 0.5) * height), int(rng.uniform(0, 0.5) * width))
    _draw_digit(scene, digit, rng, size, top, left)
    _specks(scene, rng)
    scene *= lighting(rng, height, width)[..., None]
    scene = perspective(scene, rng, 0.04)
    return encode(camera(scene, rng, final), rng, ("JPEG",), exif=True)


def digit_card(digit: np.ndarray, rng: np.random.Generator, max_side: int = 1600) -> bytes:
    """A digit on a sheet that does not fill the frame: the table and the sheet's edges in view."""
    final = photo_size(rng, 700, max(700, max_side))
    height, width = composed(final)
    table_light = rng.uniform(0.45, 0.75)
    scene = surface("table", rng, height, width)
    scene *= table_light / max(float(scene.mean()), 1e-3)
    sheet_h, sheet_w = int(height * rng.uniform(0.45, 0.8)), int(width * rng.uniform(0.45, 0.8))
    sheet = surface("paper", rng, sheet_h, sheet_w)
    sheet *= min(1.0, table_light + rng.uniform(0.1, 0.3)) / max(float(sheet.mean()), 1e-3)  # a little brighter
    size = int(min(sheet_h, sheet_w) * rng.uniform(0.3, 0.7))
    _draw_digit(sheet, digit, rng, size, int(rng.uniform(0.15, 0.85) * (sheet_h - size)), int(rng.uniform(0.15, 0.85) * (sheet_w - size)))
    # The sheet, turned a little, somewhere on the table.
    angle = rng.uniform(-20, 20)
    centre = (width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65))
    matrix = cv2.getRotationMatrix2D((sheet_w / 2, sheet_h / 2), angle, 1.0)
    matrix[:, 2] += np.array(centre) - (sheet_w / 2, sheet_h / 2)
    placed = cv2.warpAffine(np.clip(sheet, 0, 1), matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    mask = cv2.warpAffine(np.ones((sheet_h, sheet_w), np.float32), matrix, (width, height), flags=cv2.INTER_LINEAR)
    scene = scene * (1 - mask[..., None]) + placed
    _specks(scene, rng)
    scene *= lighting(rng, height, width)[..., None]
    scene = perspective(scene, rng, 0.05)
    return encode(camera(scene, rng, final), rng, ("JPEG",), exif=True)


def product_shot(item: np.ndarray, rng: np.random.Generator, max_side: int = 2700) -> bytes:
    """A catalogue photo: white, grey or transparent background, thumbnail to 2,700 pixels."""
    band = rng.choice(["thumbnail", "medium", "large"], p=[0.25, 0.5, 0.25])
    low, high = {"thumbnail": (80, 250), "medium": (400, 1200), "large": (1500, 2700)}[band]
    side = int(rng.uniform(min(low, max_side), min(high, max_side)))
    height, width = side, int(side * rng.uniform(0.75, 1.0))
    if rng.random() < 0.5:
        height, width = width, height
    final = (height, width)
    height, width = composed(final)
    size = int(min(height, width) * rng.uniform(0.7, 0.95))
    rgb, alpha = garment(item, size, rng)
    top, left = (height - size) // 2, (width - size) // 2
    background = rng.choice(["white", "grey", "transparent"], p=[0.5, 0.25, 0.25])
    if background == "transparent":  # black under the transparency, as many exporters leave it
        pixels = np.zeros((height, width, 4), np.float32)
        pixels[top : top + size, left : left + size, :3] = rgb * alpha[..., None]
        pixels[top : top + size, left : left + size, 3] = alpha
        pixels = cv2.resize(pixels, (final[1], final[0]), interpolation=cv2.INTER_LINEAR) if final != (height, width) else pixels
        return encode(np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8), rng, ("PNG", "WEBP"))
    level = 1.0 if background == "white" else rng.uniform(0.82, 0.95)
    scene = np.full((height, width, 3), level, np.float32)
    if rng.random() < 0.3:  # a soft drop shadow under the item
        shadow = np.zeros((height, width), np.float32)
        shadow[top : top + size, left : left + size] = alpha
        shadow = soft_blur(np.roll(shadow, size // 40, axis=0), size / 60)
        scene *= (1 - 0.2 * shadow)[..., None]
    region = scene[top : top + size, left : left + size]
    region[:] = region * (1 - alpha[..., None]) + rgb * alpha[..., None]
    if final != (height, width):
        scene = cv2.resize(scene, (final[1], final[0]), interpolation=cv2.INTER_LINEAR)
    scene = scene + rng.normal(0, 0.01, scene.shape).astype(np.float32)
    return encode(np.clip(scene * 255 + 0.5, 0, 255).astype(np.uint8), rng, ("JPEG", "PNG", "WEBP"))


def _pair(rgb: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two shoes side by side (the second a little behind), in one picture as wide as the first."""
    size = rgb.shape[0]
    shift = int(size * rng.uniform(0.12, 0.3))
    canvas_rgb = np.ones((size + shift, size + shift, 3), np.float32)
    canvas_alpha = np.zeros((size + shift, size + shift), np.float32)
    for dy, dx in ((0, shift), (shift, 0)):
        region = (slice(dy, dy + size), slice(dx, dx + size))
        canvas_rgb[region] = canvas_rgb[region] * (1 - alpha[..., None]) + rgb * alpha[..., None]
        canvas_alpha[region] = np.maximum(canvas_alpha[region], alpha)
    canvas_rgb = cv2.resize(canvas_rgb, (size, size), interpolation=cv2.INTER_AREA)
    return canvas_rgb, cv2.resize(canvas_alpha, (size, size), interpolation=cv2.INTER_AREA)


def natural_clothes(item: np.ndarray, label: int, rng: np.random.Generator, max_side: int = 1600) -> bytes:
    """A garment laid on a bed, carpet or floor (or hung on a door), photographed with a phone."""
    final = photo_size(rng, 600, max(600, max_side))
    height, width = composed(final)
    kind = str(rng.choice(["bedding", "carpet", "parquet", "foil", "tiles", "fabric"]))
    scene = surface(kind, rng, height, width)
    size = int(min(height, width) * rng.uniform(0.5, 0.85))
    rgb, alpha = garment(item, size, rng)
    if label in SHOES and rng.random() < 0.7:
        rgb, alpha = _pair(rgb, alpha, rng)
    angle = rng.uniform(-15, 15)
    top, left = int(rng.uniform(0.2, 0.8) * (height - size)), int(rng.uniform(0.2, 0.8) * (width - size))
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    matrix[:, 2] += (left, top)
    placed = cv2.warpAffine(rgb * alpha[..., None], matrix, (width, height))
    mask = cv2.warpAffine(alpha, matrix, (width, height))[..., None]
    if label not in SHOES and rng.random() < 0.15:  # hung on a hanger: its hook above the collar
        ys, xs = np.nonzero(mask[..., 0] > 0.5)
        if ys.size:
            hook = (int(xs.mean()), int(ys.min()))
            thick = max(2, size // 80)
            cv2.line(scene, (hook[0] - size // 3, hook[1] + size // 20), (hook[0], hook[1] - size // 10), (0.2, 0.2, 0.2), thick)
            cv2.line(scene, (hook[0] + size // 3, hook[1] + size // 20), (hook[0], hook[1] - size // 10), (0.2, 0.2, 0.2), thick)
    contact = soft_blur(np.roll(mask[..., 0], size // 50, axis=(0, 1)), size / 40)[..., None]
    scene = scene * (1 - rng.uniform(0.1, 0.35) * contact)
    scene = scene * (1 - mask) + placed
    scene *= lighting(rng, height, width)[..., None]
    scene = perspective(scene, rng, 0.05)
    return encode(camera(scene, rng, final), rng, ("JPEG",), exif=True)


def photo(condition: str, image: np.ndarray, rng: np.random.Generator, *, label: int = 0, back: np.ndarray | None = None,
          max_side: int | None = None) -> bytes:
    """One synthetic photo of the 28x28 `image` (uint8, white on black) under `condition`, as file bytes."""
    sizes = {} if max_side is None else {"max_side": max_side}
    if condition == "digit-photo":
        return digit_photo(image, rng, back, **sizes)
    if condition == "digit-card":
        return digit_card(image, rng, **sizes)
    if condition == "product-shot":
        return product_shot(image, rng, **sizes)
    if condition == "natural-clothes":
        return natural_clothes(image, label, rng, **sizes)
    raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
