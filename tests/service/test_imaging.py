"""Picture preprocessing: formats, orientation, transparency, polarity, hostile files, and photos of digits
and clothes against the clean 28x28 originals (tensor similarity, and the shipped models' labels)."""

from __future__ import annotations

import base64
import gzip
import io
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter

from service import imaging
from service.errors import ImageTooLarge, InvalidImage, InvalidInput
from service.inference.card import parse_card
from service.inference.model_input import ModelInput
from tests.onnx_models import make_card
from training.data import DATASETS, TEST_IMAGES, verified_file

PROJECT = Path(__file__).resolve().parents[2]
# The vendored MNIST test split (sha256-checked) and Debian's dataset-fashion-mnist (make test installs it).
MNIST_IMAGES = verified_file("mnist", TEST_IMAGES)
FASHION_IMAGES = DATASETS["fashion-mnist"].default_dir / TEST_IMAGES
MAX_PIXELS = 40_000_000


# ---------------------------------------------------------------- test data


def read_idx_images(path: Path, count: int, start: int = 0) -> np.ndarray:
    with gzip.open(path) as stream:
        stream.read(16 + start * 784)  # IDX header: magic, count, rows, cols
        data = stream.read(count * 784)
    return np.frombuffer(data, dtype=np.uint8).reshape(count, 28, 28)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return read_idx_images(MNIST_IMAGES, 300, start=8000)  # the held-out end of the file


def read_idx_labels(images: Path, count: int, start: int = 0) -> np.ndarray:
    with gzip.open(images.with_name(images.name.replace("images-idx3", "labels-idx1"))) as stream:
        stream.read(8 + start)  # IDX header: magic, count
        return np.frombuffer(stream.read(count), dtype=np.uint8)


@pytest.fixture(scope="module")
def clothes() -> np.ndarray:
    return read_idx_images(FASHION_IMAGES, 100)


def encode(image: Image.Image | np.ndarray, format: str = "PNG", **options) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def prepare(data: bytes, method: str = "mnist-digit") -> np.ndarray:
    x = imaging.to_model_input(data, method, max_pixels=MAX_PIXELS)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
    return x[0]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def aligned_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over shifts of at most one pixel: centring by mass rounds to whole pixels."""
    return max(correlation(np.roll(a, (dy, dx), axis=(0, 1)), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def drawn_seven(size: int = 280, *, ink: int | tuple = 255, paper: int | tuple = 0, mode: str = "L") -> Image.Image:
    """A '7' drawn with a thick brush, as on the web page's canvas."""
    image = Image.new(mode, (size, size), paper)
    draw = ImageDraw.Draw(image)
    s = size / 28
    draw.line([(7 * s, 7 * s), (20 * s, 7 * s), (12 * s, 22 * s)], fill=ink, width=round(2.5 * s), joint="curve")
    return image


def photograph(item: np.ndarray, rng: np.random.Generator, *, size=(600, 800), scale=420, blur=5.0) -> bytes:
    """The 28x28 image written dark on light paper and photographed: enlarged, blurred, lit from one side,
    tinted, noisy, and JPEG-compressed."""
    width, height = size
    enlarged = Image.fromarray(item).resize((scale, scale), Image.Resampling.BICUBIC)
    sheet = Image.new("L", size, 0)
    sheet.paste(enlarged, (int(rng.integers(20, width - scale - 20)), int(rng.integers(20, height - scale - 20))))
    ink = np.asarray(sheet.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32) / 255
    rows, cols = np.mgrid[0:height, 0:width]
    light = 0.55 + 0.4 * cols / width + 0.1 * rows / height
    paper, pen = 0.9 * light, 0.2 * light
    gray = paper - (paper - pen) * ink + rng.normal(0.0, 0.04, ink.shape)
    rgb = np.stack([gray, gray * 0.95, gray * 0.85], axis=-1)
    return encode(np.clip(rgb * 255, 0, 255).astype(np.uint8), "JPEG", quality=70)


def product_shot(item: np.ndarray, rng: np.random.Generator, format: str = "JPEG") -> bytes:
    """A Fashion-MNIST item as a catalogue photo: enlarged, dark on a white backdrop (its noise clipped
    at pure white), JPEG-compressed."""
    enlarged = np.asarray(Image.fromarray(item).resize((280, 280), Image.Resampling.BICUBIC), np.float32) / 255
    backdrop = np.ones((400, 360), np.float32)
    backdrop[60:340, 40:320] = 1 - 0.9 * enlarged
    backdrop += rng.normal(0.0, 0.02, backdrop.shape)
    picture = Image.fromarray(np.clip(backdrop * 255, 0, 255).astype(np.uint8)).convert("RGB")
    return encode(picture, format, **({"quality": 80} if format == "JPEG" else {}))


def png_declaring(width: int, height: int, pixels: bytes = b"") -> bytes:
    """A PNG whose header declares width x height 8-bit gray pixels, whatever its data holds."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- formats and decoding


@pytest.mark.parametrize(
    ("format", "options"),
    [("PNG", {}), ("JPEG", {"quality": 85}), ("GIF", {}), ("BMP", {}), ("WEBP", {"quality": 90}), ("TIFF", {})],
)
def test_every_accepted_format_gives_the_same_input(format, options):
    reference = prepare(encode(drawn_seven()))
    seen = prepare(encode(drawn_seven(mode="RGB", ink=(20, 20, 30), paper=(240, 235, 220)), format, **options))
    assert correlation(seen, reference) > 0.98


def test_a_multi_frame_gif_is_read_from_its_first_frame():
    first, second = drawn_seven(), Image.new("L", (280, 280), 0)
    ImageDraw.Draw(second).ellipse((60, 60, 220, 220), outline=255, width=25)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert correlation(prepare(data), prepare(encode(first))) > 0.99


def test_exif_orientation_is_applied():
    upright = drawn_seven(ink=0, paper=255).crop((0, 0, 280, 200))  # not square: the rotation shows in the size
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())

    assert imaging.decode_picture(data, max_pixels=MAX_PIXELS).size == upright.size
    assert correlation(prepare(data), prepare(encode(upright))) > 0.98
    assert correlation(prepare(encode(stored, "JPEG", quality=95)), prepare(encode(upright))) < 0.5


def test_sixteen_bit_pictures_read_like_eight_bit_ones(digits):
    eight = digits[0]
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    np.testing.assert_allclose(prepare(encode(sixteen)), prepare(encode(eight)), atol=0.02)


@pytest.mark.parametrize(
    ("mode", "format"),
    [("1", "PNG"), ("1", "BMP"), ("CMYK", "JPEG"), ("LAB", "TIFF"), ("F", "TIFF"), ("I", "TIFF"), ("P", "GIF")],
)
def test_the_colour_modes_pictures_arrive_in(mode, format):
    paper_and_ink = drawn_seven(mode="RGB", ink=(0, 0, 0), paper=(255, 255, 255))
    if mode == "1":
        picture = paper_and_ink.convert("1", dither=Image.Dither.NONE)
    elif mode == "F":  # floating-point intensities in [0, 1]
        picture = Image.fromarray(np.asarray(paper_and_ink.convert("L"), dtype=np.float32) / 255)
    else:
        picture = paper_and_ink.convert(mode)
    data = encode(picture, format)
    assert Image.open(io.BytesIO(data)).mode == mode
    assert correlation(prepare(data), prepare(encode(drawn_seven()))) > 0.98


def test_preprocess_image_matches_to_model_input():
    data = encode(drawn_seven(ink=0, paper=255))
    picture = imaging.decode_picture(data, max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(imaging.preprocess_image(picture, "mnist-digit")[0], prepare(data))


# ---------------------------------------------------------------- transparency and polarity


def test_transparent_canvas_with_black_strokes_reads_as_ink_on_paper():
    canvas = drawn_seven(ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA")  # how a browser canvas exports
    reference = prepare(encode(drawn_seven()))
    assert correlation(prepare(encode(canvas)), reference) > 0.99


def test_transparent_canvas_with_white_strokes_reads_as_ink_on_black():
    canvas = drawn_seven(ink=(255, 255, 255, 255), paper=(255, 255, 255, 0), mode="RGBA")
    assert correlation(prepare(encode(canvas)), prepare(encode(drawn_seven()))) > 0.99


def test_transparency_in_gray_and_palette_pictures_is_flattened():
    reference = prepare(encode(drawn_seven()))
    gray_alpha = drawn_seven(ink=(0, 255), paper=(0, 0), mode="LA")
    palette = drawn_seven(ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA").convert("P")
    assert "transparency" in Image.open(io.BytesIO(encode(palette))).info
    assert correlation(prepare(encode(gray_alpha)), reference) > 0.99
    assert correlation(prepare(encode(palette)), reference) > 0.99


def test_polarity_is_detected_both_ways(digits):
    for digit in digits[:20]:
        white_on_black = prepare(encode(digit))
        black_on_white = prepare(encode(255 - digit))
        np.testing.assert_allclose(black_on_white, white_on_black, atol=0.01)


def test_coloured_ink_on_coloured_paper():
    blue_on_yellow = drawn_seven(mode="RGB", ink=(30, 40, 160), paper=(250, 240, 150))
    yellow_on_blue = drawn_seven(mode="RGB", ink=(250, 240, 150), paper=(30, 40, 160))
    reference = prepare(encode(drawn_seven()))
    assert correlation(prepare(encode(blue_on_yellow)), reference) > 0.99
    assert correlation(prepare(encode(yellow_on_blue)), reference) > 0.99


# ---------------------------------------------------------------- bad pictures


def test_a_header_declaring_huge_dimensions_is_refused_before_decoding():
    # No pixel data follows the header: decoding it would fail as truncated, not as too large.
    with pytest.raises(ImageTooLarge, match="8000x8000 = 64000000 pixels; at most 40000000"):
        imaging.decode_picture(png_declaring(8000, 8000), max_pixels=MAX_PIXELS)


def test_pillows_own_bomb_guard_is_reported_as_too_large():
    # Far over Pillow's decompression-bomb limit, and under a (silly) limit of ours.
    with pytest.raises(ImageTooLarge):
        imaging.decode_picture(png_declaring(100_000, 100_000), max_pixels=2**63)


def test_a_deflate_bomb_is_refused_by_its_declared_size():
    bomb = png_declaring(5000, 5000, bytes(5001 * 5000))  # 25 million pixels in about 25 KB
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge, match="at most 1000000"):
        imaging.to_model_input(bomb, "mnist-digit", max_pixels=1_000_000)


def test_a_gif_declaring_a_huge_screen_is_refused():
    gif = bytearray(encode(drawn_seven(), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen size
    with pytest.raises(ImageTooLarge):
        imaging.decode_picture(bytes(gif), max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_pictures_are_invalid(format):
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8))
    data = encode(noisy, format)
    with pytest.raises(InvalidImage, match="PNG, JPEG"):
        imaging.to_model_input(data[: len(data) // 2], "mnist-digit", max_pixels=MAX_PIXELS)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(1).bytes(2000),
        b"%PDF-1.7 not a picture at all",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # a PNG signature with a broken header
    ],
    ids=["random-bytes", "pdf", "svg", "broken-png-header"],
)
def test_bytes_that_are_no_picture_are_invalid_and_the_message_names_the_formats(data):
    with pytest.raises(InvalidImage) as raised:
        imaging.decode_picture(data, max_pixels=MAX_PIXELS)
    assert "PNG, JPEG, GIF, BMP, WebP" in raised.value.message
    assert raised.value.status_code == 415


def test_an_empty_upload_is_invalid():
    with pytest.raises(InvalidImage, match="empty"):
        imaging.to_model_input(b"", "mnist-digit", max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("format", ["ICO", "PPM", "TGA"])
def test_formats_pillow_knows_but_we_do_not_accept_are_invalid(format):
    with pytest.raises(InvalidImage, match="WebP"):
        imaging.decode_picture(encode(drawn_seven().resize((64, 64)), format), max_pixels=MAX_PIXELS)


def test_an_unknown_method_is_invalid_input_not_a_bad_picture():
    with pytest.raises(InvalidInput, match="mnist-digit, fashion-fit") as raised:
        imaging.to_model_input(b"not even a picture", "sharpen", max_pixels=MAX_PIXELS)
    assert type(raised.value) is InvalidInput
    with pytest.raises(InvalidInput):
        imaging.preprocess_image(drawn_seven(), "sharpen")


@pytest.mark.parametrize(
    "picture",
    [
        Image.new("L", (300, 300), 255),
        Image.new("RGB", (64, 48), (128, 90, 200)),
        Image.new("RGBA", (100, 100), (0, 0, 0, 0)),
        Image.fromarray(np.clip(np.random.default_rng(2).normal(200, 6, (400, 300)), 0, 255).astype(np.uint8)),
    ],
    ids=["white", "flat-colour", "fully-transparent", "blank-noisy-paper"],
)
def test_a_blank_picture_says_no_ink_found(picture):
    with pytest.raises(InvalidImage, match="no ink found"):
        imaging.to_model_input(encode(picture), "mnist-digit", max_pixels=MAX_PIXELS)


# ---------------------------------------------------------------- the MNIST and Fashion-MNIST framing


def test_mnist_digits_pass_through_unchanged(digits):
    seen = np.stack([prepare(encode(digit)) for digit in digits])
    raw = digits.astype(np.float32) / 255
    unchanged = np.abs(seen - raw).max(axis=(1, 2)) < 0.02
    assert unchanged.mean() >= 0.97, f"only {unchanged.sum()} of {len(digits)} digits pass through unchanged"
    assert min(aligned_correlation(s, r) for s, r in zip(seen, raw, strict=True)) > 0.9


def test_the_digit_is_framed_as_mnist_frames_it():
    x = prepare(encode(drawn_seven(ink=0, paper=255).resize((900, 900))))  # drawn large, filling the frame
    rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) in (20, 21)  # 20 plus at most an antialiased edge
    mass = x.sum()
    centre = ((x.sum(axis=1) * np.arange(28)).sum() / mass, (x.sum(axis=0) * np.arange(28)).sum() / mass)
    assert np.abs(np.subtract(centre, 14)).max() <= 0.5 + 1e-6


def test_a_small_digit_in_a_corner_is_found_and_centred():
    sheet = Image.new("L", (1000, 700), 235)
    sheet.paste(drawn_seven(ink=20, paper=235).resize((90, 90)), (880, 40))
    assert aligned_correlation(prepare(encode(sheet)), prepare(encode(drawn_seven()))) > 0.9


def test_thin_pen_strokes_are_widened_to_mnist_strokes():
    sheet = Image.new("L", (1000, 1000), 255)
    s = 1000 / 28
    ImageDraw.Draw(sheet).line([(7 * s, 7 * s), (20 * s, 7 * s), (12 * s, 22 * s)], fill=0, width=4)  # a ballpoint
    x = prepare(encode(sheet))
    assert imaging.ink._stroke_width(x > 0.5) >= 2.0  # as MNIST's thinnest; unwidened, no pixel reaches 0.5
    assert x.max() == 1.0


def test_fashion_items_fill_the_frame(clothes):
    for item in clothes[:10]:
        x = prepare(encode(255 - item), "fashion-fit")
        rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
        assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == 28
        assert aligned_correlation(x, item.astype(np.float32) / 255) > 0.9


def test_a_photographed_digit_gives_the_clean_digits_input(digits):
    rng = np.random.default_rng(0)
    for digit in digits[:25]:
        clean, photo = prepare(encode(digit)), prepare(photograph(digit, rng))
        assert aligned_correlation(photo, clean) > 0.85


def test_a_photographed_fashion_item_gives_the_clean_items_input(clothes):
    rng = np.random.default_rng(0)
    similarity = [
        aligned_correlation(prepare(product_shot(item, rng), "fashion-fit"), prepare(encode(item), "fashion-fit"))
        for item in clothes[:25]
    ]
    assert min(similarity) > 0.8 and np.mean(similarity) > 0.9


def test_a_garment_on_a_surface_always_gets_the_same_input(clothes):
    # GrabCut and k-means start from OpenCV's per-thread RNG: unseeded, one photo got different answers.
    from training.synthetic_photos import photo

    rng = np.random.default_rng(4)
    for item in clothes[:4]:
        data = photo("natural-clothes", item, rng, label=0)
        first = prepare(data, "fashion-fit")
        for _ in range(3):
            assert np.array_equal(prepare(data, "fashion-fit"), first)


def patterned_dress_on_carpet(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A dress's outline printed with red flowers on a ground only a little darker than the carpet it lies on (RGB in
    [0, 1]), and where the dress is."""
    rng = np.random.default_rng(seed)
    side = 240
    carpet = np.array([0.62, 0.55, 0.45]) + rng.uniform(-0.05, 0.05, 3)
    picture = carpet + rng.normal(0, 0.025, (side, side, 3))
    outline = Image.new("L", (side, side), 0)
    ImageDraw.Draw(outline).polygon([(95, 30), (145, 30), (155, 80), (195, 215), (45, 215), (85, 80)], fill=255)
    dress = np.asarray(outline) > 0
    flowers = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(flowers)
    for _ in range(60):
        x, y, r = rng.integers(40, 200), rng.integers(25, 220), rng.integers(4, 9)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    petals = (np.asarray(flowers) > 0) & dress
    ground = dress & ~petals
    picture[ground] = carpet * 0.9 + rng.normal(0, 0.02, (ground.sum(), 3))
    picture[petals] = np.array([0.75, 0.1, 0.2]) + rng.normal(0, 0.02, (petals.sum(), 3))
    return np.clip(picture, 0, 1).astype(np.float32), dress


def test_a_patterned_garment_is_found_whole_not_as_its_print():
    # GrabCut seeded with only the colours unlike the carpet as item kept the red flowers, 9-21% of the dress; started
    # from everything inside the border, it finds the dress (docs/photos.md, "GrabCut started from the whole item").
    from service.imaging.garments import find_garment

    for seed in range(6):
        rgb, dress = patterned_dress_on_carpet(seed)
        found = find_garment(rgb).ink > 0
        assert found.shape == dress.shape  # upright already: not turned
        assert (found & dress).sum() >= 0.9 * dress.sum()
        assert (found & ~dress).sum() <= 0.1 * dress.sum()


def test_noise_on_a_backdrop_clipped_at_pure_white_is_not_taken_for_the_item(clothes):
    # Half the backdrop's pixels sit at 255 exactly: the noise shows on the dark side only.
    rng = np.random.default_rng(2)
    for item in clothes[:10]:
        shot = prepare(product_shot(item, rng, format="PNG"), "fashion-fit")
        assert aligned_correlation(shot, prepare(encode(item), "fashion-fit")) > 0.8


# ---------------------------------------------------------------- the shipped models agree


def shipped_model(name: str):
    """An ONNX Runtime session on the highest version of models/<name>, run directly (no service)."""
    import onnxruntime as ort

    versions = [p for p in (PROJECT / "models" / name).glob("*/model.onnx") if p.parent.name.isdigit()]
    assert versions, f"models/{name} ships no version: scripts/train-shipped-models.sh {name} produces it"
    path = max(versions, key=lambda p: int(p.parent.name))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {session.get_inputs()[0].name: x})[0].argmax(axis=1)


def test_the_digit_model_labels_photos_like_clean_digits(digits):
    classify = shipped_model("mnist-convnet")
    rng = np.random.default_rng(1)
    chosen = digits[:50]
    clean = np.stack([imaging.to_model_input(encode(d), "mnist-digit", max_pixels=MAX_PIXELS) for d in chosen])
    photos = np.stack(
        [imaging.to_model_input(photograph(d, rng), "mnist-digit", max_pixels=MAX_PIXELS) for d in chosen]
    )
    raw = chosen[:, None].astype(np.float32) / 255
    assert (classify(clean) == classify(raw)).all(), "clean pictures must be served exactly as raw pixel arrays"
    disagreements = int((classify(photos) != classify(clean)).sum())
    assert disagreements <= 1, f"{disagreements} of 50 photographed digits were labelled unlike their clean picture"


def test_the_fashion_model_classifies_product_shots_as_well_as_clean_items(clothes):
    classify = shipped_model("fashion-convnet")
    labels = read_idx_labels(FASHION_IMAGES, len(clothes))
    rng = np.random.default_rng(1)
    clean = np.stack([imaging.to_model_input(encode(c), "fashion-fit", max_pixels=MAX_PIXELS) for c in clothes])
    shots = np.stack(
        [imaging.to_model_input(product_shot(c, rng), "fashion-fit", max_pixels=MAX_PIXELS) for c in clothes]
    )
    clean_labels, shot_labels = classify(clean), classify(shots)
    # Shirt, T-shirt, pullover and coat are close calls: a one-pixel shift alone flips a few percent of
    # Fashion-MNIST labels, so the shots must be classified about as well as the originals, not identically
    # (on 500 items: 95.2 % clean, 94.2 % shots; these 100 are a harder draw).
    assert (shot_labels == labels).mean() >= (clean_labels == labels).mean() - 0.05
    assert (shot_labels == clean_labels).mean() >= 0.9


def test_pixels_png_shows_the_input_exactly():
    x = np.random.default_rng(3).random((28, 28, 1), dtype=np.float32)
    shown = np.asarray(Image.open(io.BytesIO(imaging.pixels_png(x, 1.0, "L"))))
    np.testing.assert_array_equal(shown, np.rint(x[:, :, 0] * 255).astype(np.uint8))
    assert Image.open(io.BytesIO(imaging.pixels_png(x, 1.0, "L", scale=10))).size == (280, 280)
    colour = np.random.default_rng(4).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(imaging.pixels_png(colour, 255.0, "RGB")))), colour)
    # A BGR model's pixels are shown in their true colours.
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(imaging.pixels_png(colour[:, :, ::-1], 255.0, "BGR")))), colour)


# ---------------------------------------------------------------- anything at all: never a crash

FORMATS_FOR_MODE = {"PNG": "RGBA", "JPEG": "RGB", "GIF": "P", "BMP": "RGB", "WEBP": "RGBA", "TIFF": "RGBA"}


@st.composite
def random_pictures(draw):
    width, height = draw(st.integers(1, 160)), draw(st.integers(1, 160))
    colour = st.tuples(*[st.integers(0, 255)] * 4)
    picture = Image.new("RGBA", (width, height), draw(colour))
    pen = ImageDraw.Draw(picture)
    for _ in range(draw(st.integers(0, 4))):
        xs = sorted(draw(st.tuples(st.integers(0, width), st.integers(0, width))))
        ys = sorted(draw(st.tuples(st.integers(0, height), st.integers(0, height))))
        shape = draw(st.sampled_from(["rectangle", "line", "ellipse"]))
        corners = [xs[0], ys[0], xs[1], ys[1]]
        getattr(pen, shape)(corners, fill=draw(colour), width=draw(st.integers(1, 12)))
    format = draw(st.sampled_from(sorted(FORMATS_FOR_MODE)))
    return encode(picture.convert(FORMATS_FOR_MODE[format]), format)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=random_pictures(), method=st.sampled_from(imaging.METHODS))
def test_any_picture_gives_a_valid_input_or_says_why_not(data, method):
    try:
        x = imaging.to_model_input(data, method, max_pixels=MAX_PIXELS)
    except InvalidImage as error:
        assert "no ink found" in error.message
        return
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.0


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_the_page_gets_the_apis_input_and_a_picture_to_show(format):
    from service.api.web import DISPLAY_SIZE, prepare_picture

    photo = drawn_seven(3000, ink=(30, 40, 160), paper=(235, 225, 200), mode="RGB")  # blue ink on cream paper
    data = encode(photo, format, **({"quality": 90} if format == "JPEG" else {}))
    x, picture = imaging.to_model_input_and_picture(data, "mnist-digit", max_pixels=MAX_PIXELS, picture_side=DISPLAY_SIZE)

    np.testing.assert_array_equal(x, imaging.to_model_input(data, "mnist-digit", max_pixels=MAX_PIXELS))
    assert picture.mode == "RGB" and picture.getpixel((5, 5))[2] < 215  # still in colour: cream, not grey
    # A JPEG is decoded at a reduced scale (1/8 here: 375 >= 280 pixels a side); other formats whole.
    assert picture.size == ((375, 375) if format == "JPEG" else (3000, 3000))
    card = parse_card(make_card("digits", 1, b"any"))
    page_x, seen, page_picture, _ = prepare_picture(data, SimpleNamespace(spec=card, input=ModelInput(card.input)), MAX_PIXELS)
    np.testing.assert_array_equal(page_x, x[np.newaxis])
    assert Image.open(io.BytesIO(base64.b64decode(seen.partition(",")[2]))).size == (28, 28)  # what the model saw
    shown = Image.open(io.BytesIO(base64.b64decode(page_picture.partition(",")[2])))
    assert max(shown.size) == DISPLAY_SIZE


@pytest.mark.parametrize("side", [140, 280])
@pytest.mark.parametrize("light_on_dark", [True, False])
def test_a_clean_digit_enlarged_is_read_as_the_digit(side, light_on_dark):
    """A digit drawn or enlarged to fill a larger picture (a canvas export, MNIST scaled up): its background is one
    grey level, so it is read as a small clean picture is. Flattening took its strokes, a seventh of the picture
    wide, for paper, and a big white digit's bright share for a sheet in view: 44-64% right, light on dark."""
    import onnxruntime as ort

    root = Path(__file__).resolve().parents[2]
    with gzip.open(root / "datasets" / "mnist" / "t10k-images-idx3-ubyte.gz") as file:
        digits = np.frombuffer(file.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:60]
    with gzip.open(root / "datasets" / "mnist" / "t10k-labels-idx1-ubyte.gz") as file:
        labels = np.frombuffer(file.read(), np.uint8, offset=8)[:60]
    session = ort.InferenceSession(str(root / "models" / "mnist-convnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = []
    for digit in digits:
        picture = Image.fromarray(digit if light_on_dark else 255 - digit).resize((side, side), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        inputs.append(imaging.to_model_input(buffer.getvalue(), "mnist-digit", max_pixels=10**8))
    answers = session.run(None, {"input": np.stack(inputs)})[0].argmax(axis=1)
    assert (answers == labels).mean() >= 0.97
