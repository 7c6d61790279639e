"""Picture bytes -> a decoded Pillow image, safely: accepted formats only, the pixel count checked from the
header before anything is decoded, the first frame of an animation, EXIF orientation applied."""

from __future__ import annotations

import io

from collections.abc import Callable

from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage

ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG includes MPO, which phone cameras write
ACCEPTED_DESCRIPTION = "PNG, JPEG, GIF, BMP, WebP or TIFF"
JPEG_START = b"\xff\xd8\xff"  # the first bytes of every JPEG (and MPO) file
# Peak memory of decoding and preparing a picture, in bytes per decoded pixel, by its mode (Pillow keeps 1 byte a
# pixel for 1, L and P, 2 for I;16, 4 for the rest), measured with /proc/self/status's VmHWM on 4000x4000 PNGs
# (L 1.7, I;16 6.6, RGB 5.4, RGBA 8.5 bytes a pixel: the picture, its gray or RGBA copy, the reduced one), with a
# margin; plus a fixed part for the decoder. Modes not listed: the most.
PEAK_BYTES_PER_PIXEL = {"1": 3, "L": 3, "P": 3, "I;16": 8, "I;16B": 8, "I;16L": 8, "RGB": 7, "YCbCr": 7, "CMYK": 7}
TRANSPARENT_BYTES_PER_PIXEL = 10  # converted to RGBA (4 bytes) besides itself
DECODER_BYTES = 8 << 20


def decode_cost(data: bytes, *, reduce_to: int | None) -> tuple[int, int]:
    """(pixels, bytes of memory at the peak) that decoding `data` as `decode` does will take, from its header
    alone; (0, 0) for bytes that `decode` will refuse anyway (it says why)."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Exception:  # not a picture, a bomb, a corrupt header: decode() answers it
        return 0, 0
    with image:
        if reduce_to is not None and image.format in ("JPEG", "MPO"):
            image.draft("L", (reduce_to, reduce_to))  # sets the scale only; size is now the reduced one
        pixels = image.width * image.height
        per_pixel = TRANSPARENT_BYTES_PER_PIXEL if "transparency" in image.info else PEAK_BYTES_PER_PIXEL.get(image.mode, 10)
    return pixels, pixels * per_pixel + DECODER_BYTES


def decode_picture(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an uploaded picture (first frame, EXIF orientation applied), refusing bombs and non-pictures."""
    return decode(data, max_pixels=max_pixels, reduce_to=None)


EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)  # EXIF orientations that turn the picture a quarter: width and height swap


def decode(data: bytes, *, max_pixels: int, reduce_to: int | None, draft_mode: str = "L") -> Image.Image:
    """Decode `data`; a JPEG larger than `reduce_to` a side is decoded at a reduced scale (Pillow's draft)."""
    draft = (lambda width, height: (reduce_to, reduce_to)) if reduce_to is not None else None
    return decode_sized(data, max_pixels=max_pixels, draft=draft, draft_mode=draft_mode)[0]


def decode_sized(
    data: bytes,
    *,
    max_pixels: int,
    draft: Callable[[int, int], tuple[int, int]] | None,
    draft_mode: str | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode `data`, and say how large the picture is at full scale, upright. A JPEG is decoded at a reduced
    scale (Pillow's draft) no smaller than `draft(width, height)` of its stored size asks for."""
    if not data:
        raise InvalidImage(f"the upload is empty; send a picture: {ACCEPTED_DESCRIPTION}")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the picture declares too many pixels; at most {max_pixels} are accepted") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"not a picture in an accepted format; send {ACCEPTED_DESCRIPTION}") from exc
    except Exception as exc:  # Pillow's format plugins raise many types on a malformed header
        raise InvalidImage(f"the picture's header is corrupt; send a valid {ACCEPTED_DESCRIPTION} file") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the picture is {width}x{height} = {width * height} pixels; at most {max_pixels} are accepted"
        )
    if width < 1 or height < 1:
        raise InvalidImage(f"the picture is {width}x{height}: it has no pixels")
    try:
        turned = image.getexif().get(EXIF_ORIENTATION, 1) in TURNED
        if draft is not None and image.format in ("JPEG", "MPO"):
            image.draft(draft_mode, draft(width, height))  # decode JPEG at a reduced scale: much faster for photos
        image.load()  # the first frame of an animation
        # In place: otherwise a picture with no orientation to undo is copied whole, doubling its memory.
        ImageOps.exif_transpose(image, in_place=True)
        return image, ((height, width) if turned else (width, height))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the picture decodes to too many pixels; at most {max_pixels} are accepted") from exc
    except Exception as exc:  # truncated or corrupt data surfaces as any of several exception types
        raise InvalidImage(
            f"the {image.format} picture could not be decoded (truncated or corrupt); "
            f"send a valid {ACCEPTED_DESCRIPTION} file"
        ) from exc

