"""The photo methods against Pillow done by hand, the reduced JPEG decode within its tolerance, orientation,
transparency and unusual modes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.imaging import photo
from service.imaging.decode import decode_sized
from service.inference.card import CardError, parse_card
from tests.service.imported_models import Recipe, encode, jpeg_turned, photo as make_photo, reference_pixels

MAX_PIXELS = 40_000_000


def card(channels: int = 3, height: int = 24, width: int = 32, order: str | None = None, **preprocessing) -> object:
    return parse_card({
        "name": "m", "version": 1, "classes": ["a", "b"], "onnx": {"sha256": "0" * 64},
        "input": {"name": "x", "channels": channels, "height": height, "width": width, "color_order": order},
        "output": {"name": "y"}, "preprocessing": preprocessing,
    })


CASES = {
    "shorter side, rounded crop": (card(method="resize-crop", resize_shorter=41, interpolation="bicubic"),
                                   Recipe(("shorter", 41), (24, 32), False, Image.Resampling.BICUBIC, 1, None, None, "NHWC")),
    "shorter side, floored crop": (card(method="resize-crop", resize_shorter=41, interpolation="bicubic", crop_rounding="floor"),
                                   Recipe(("shorter", 41), (24, 32), True, Image.Resampling.BICUBIC, 1, None, None, "NHWC")),
    "squash then crop": (card(method="resize-crop", resize_size=[30, 37], interpolation="hamming"),
                         Recipe(("size", (30, 37)), (24, 32), False, Image.Resampling.HAMMING, 1, None, None, "NHWC")),
    "plain resize": (card(method="resize", interpolation="lanczos"),
                     Recipe(("size", (24, 32)), None, False, Image.Resampling.LANCZOS, 1, None, None, "NHWC")),
    "letterbox": (card(method="letterbox", interpolation="box", pad_color=[1, 2, 3]),
                  Recipe(("letterbox", (24, 32), (1, 2, 3)), None, False, Image.Resampling.BOX, 1, None, None, "NHWC")),
    "grey, nearest": (card(channels=1, method="resize", interpolation="nearest"),
                      Recipe(("size", (24, 32)), None, False, Image.Resampling.NEAREST, 1, None, None, "NHWC", channels=1)),
}


@pytest.mark.parametrize(("spec", "recipe"), CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("size", [(640, 480), (300, 517)], ids=["landscape", "portrait"])
def test_each_method_makes_what_pillow_makes(spec, recipe, size):
    """Exactly, but for resize-crop, which resizes only the kept region (Pillow's box, given in single-precision
    floats): there a few values may be one grey level off."""
    data = encode(make_photo(*size, seed=2), "PNG")
    pixels = photo.picture_pixels(data, spec, max_pixels=MAX_PIXELS)
    assert pixels.dtype == np.uint8 and pixels.shape == (24, 32, spec.input.channels)
    expected = reference_pixels(data, recipe)
    if spec.preprocessing.method != "resize-crop":
        np.testing.assert_array_equal(pixels, expected)
        return
    difference = np.abs(pixels.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.005, (difference.max(), (difference > 0).mean())


def test_resize_crop_of_a_real_photo_is_pillows_resize_then_crop_within_one_level():
    """The benchmark's case: a 640x480 JPEG to 224x224 through 341x256 (bilinear)."""
    spec = card(height=224, width=224, method="resize-crop", resize_shorter=256, interpolation="bilinear")
    recipe = Recipe(("shorter", 256), (224, 224), False, Image.Resampling.BILINEAR, 1, None, None, "NHWC")
    data = encode(make_photo(640, 480, seed=5), "JPEG")
    difference = np.abs(photo.picture_pixels(data, spec, max_pixels=MAX_PIXELS).astype(int) - reference_pixels(data, recipe).astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.001, (difference.max(), (difference > 0).mean())


def test_bgr_models_get_their_channels_reversed():
    data = encode(make_photo(200, 150), "PNG")
    rgb = photo.picture_pixels(data, card(method="resize"), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(photo.picture_pixels(data, card(order="BGR", method="resize"), max_pixels=MAX_PIXELS), rgb[:, :, ::-1])


@pytest.mark.parametrize(("size", "reduced_to"), [((1280, 960), (1280, 960)), ((2400, 1800), (1200, 900)), ((4000, 3000), (1000, 750))])
def test_a_reduced_jpeg_decode_stays_within_a_few_grey_levels(size, reduced_to, monkeypatch):
    spec = card(height=224, width=224, method="resize-crop", resize_shorter=256)
    data = encode(make_photo(*size, seed=3), "JPEG", quality=90)
    reduced = photo.picture_pixels(data, spec, max_pixels=MAX_PIXELS)
    image, full_size = decode_sized(data, max_pixels=MAX_PIXELS, draft=lambda w, h: photo.draft_size(spec, w, h))
    # Reduced while at least twice the 256 pixels of the shorter side remain (1280x960: not at all).
    assert full_size == size and image.size == reduced_to
    monkeypatch.setattr(photo, "DRAFT_MARGIN", 1e9)  # no reduction: a full decode
    full = photo.picture_pixels(data, spec, max_pixels=MAX_PIXELS).astype(int)
    difference = np.abs(reduced.astype(int) - full)
    assert difference.max() <= 4 and difference.mean() < 0.5, (difference.max(), difference.mean())


def test_exif_orientation_is_applied_and_sizes_come_from_the_upright_picture():
    upright = make_photo(300, 400, seed=4)
    spec = card(method="resize-crop", resize_shorter=40)
    turned = photo.picture_pixels(jpeg_turned(upright), spec, max_pixels=MAX_PIXELS).astype(int)
    straight = photo.picture_pixels(encode(upright, "JPEG", quality=92), spec, max_pixels=MAX_PIXELS).astype(int)
    assert np.abs(turned - straight).mean() < 3  # the same picture, up to JPEG's own losses


def cutout_png() -> tuple[bytes, Image.Image]:
    """A product-shot cut-out: RGBA with an alpha ramp and black under the nearly transparent pixels."""
    rgba = np.asarray(make_photo(160, 120, seed=4).convert("RGBA")).copy()
    rgba[..., 3] = np.tile(np.linspace(0, 255, 160).astype(np.uint8), (120, 1))
    rgba[rgba[..., 3] < 64, :3] = 0
    return encode(Image.fromarray(rgba), "PNG"), Image.fromarray(rgba)


@pytest.mark.parametrize("transparency", ["white", "drop"])
def test_transparency_follows_the_card(transparency):
    """"white" composites on white; "drop" is Pillow's convert("RGB"), as torchvision, timm and transformers'
    load_image make it: the colour under a transparent pixel is kept."""
    data, rgba = cutout_png()
    spec = card(method="resize", interpolation="bilinear", transparency=transparency)
    pixels = photo.picture_pixels(data, spec, max_pixels=MAX_PIXELS)
    recipe = Recipe(("size", (24, 32)), None, False, Image.Resampling.BILINEAR, 1, None, None, "NHWC", transparency=transparency)
    np.testing.assert_array_equal(pixels, reference_pixels(data, recipe))
    dropped = np.asarray(rgba.convert("RGB").resize((32, 24), Image.Resampling.BILINEAR))
    assert (np.array_equal(pixels, dropped)) == (transparency == "drop")
    assert pixels[:, 0].mean() > 200 if transparency == "white" else pixels[:, 0].mean() < 60  # the clear edge


def test_an_ink_method_takes_no_transparency_setting():
    with pytest.raises(CardError, match="transparency"):
        parse_card({"name": "m", "version": 1, "classes": ["a", "b"], "onnx": {"sha256": "0" * 64},
                    "input": {"name": "x", "shape": ["N", 1, 28, 28]}, "output": {"name": "y"},
                    "preprocessing": {"method": "mnist-digit", "transparency": "drop"}})


def test_transparency_is_composited_on_white_and_odd_modes_are_read():
    clear = Image.new("RGBA", (64, 48), (255, 0, 0, 0))
    pixels = photo.picture_pixels(encode(clear, "PNG"), card(method="resize"), max_pixels=MAX_PIXELS)
    assert (pixels == 255).all()
    deep = Image.fromarray(np.full((48, 64), 65535 // 2, dtype=np.uint16))  # a 16-bit grey PNG
    grey = photo.picture_pixels(encode(deep, "PNG"), card(channels=1, method="resize"), max_pixels=MAX_PIXELS)
    assert abs(int(grey.mean()) - 127) <= 1
    palette = make_photo(200, 150).convert("P")
    assert photo.picture_pixels(encode(palette, "GIF"), card(method="letterbox"), max_pixels=MAX_PIXELS).shape == (24, 32, 3)
