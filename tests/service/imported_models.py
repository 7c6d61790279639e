"""Imported-model fixtures: small colour ONNX classifiers, the configs they come with, photos, and an independent
reference pipeline (Pillow and numpy only, written from the configs' own documentation, not from service code)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from PIL import Image, ImageDraw, ImageOps

from tests.onnx_models import make_photo_classifier

MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass
class Recipe:
    """How a model's pictures are made, as its config says: what the reference pipeline follows."""

    resize: tuple  # ("shorter", S) | ("size", (h, w)) | ("letterbox", (h, w), pad)
    crop: tuple[int, int] | None
    crop_floor: bool  # Hugging Face floors an odd margin, torchvision rounds it
    resample: int
    scale: float  # pixel * scale before mean/std
    mean: list[float] | None
    std: list[float] | None
    layout: str
    channels: int = 3
    dtype: type = np.float32
    logits: bool = True
    transparency: str = "drop"  # "drop": Pillow's convert, the colour under it kept (as the libraries do); "white": on white


@dataclass
class Imported:
    name: str
    onnx_path: Path
    input_name: str
    recipe: Recipe
    args: list[str] = field(default_factory=list)  # the import command's arguments after the file name


def photo(width: int = 640, height: int = 480, *, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A photo-like picture: smooth colour fields, shapes, texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / 41 + y / 57 + seed), 128 + 90 * np.cos(x / 23 - seed), 128 + 80 * np.sin(y / 19)], -1)
    image = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        draw.ellipse((x0, y0, x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 200))), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image.convert(mode)


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def jpeg_turned(image: Image.Image) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 (a phone held upright): upright, it is `image`."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=exif)


def reference_pixels(data: bytes, recipe: Recipe) -> np.ndarray:
    """PIL decode, EXIF transpose, RGB (or L), the config's resize and crop: float64 [H, W, C] 0..255."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if recipe.transparency == "white" and image.mode in ("RGBA", "LA", "P"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    image = image.convert("L" if recipe.channels == 1 else "RGB")
    width, height = image.size
    kind = recipe.resize[0]
    if kind == "shorter":
        short = recipe.resize[1]
        size = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
        image = image.resize(size, recipe.resample)
    elif kind == "size":
        h, w = recipe.resize[1]
        image = image.resize((w, h), recipe.resample)
    else:
        (h, w), pad = recipe.resize[1], recipe.resize[2]
        ratio = min(w / width, h / height)
        inner = (round(width * ratio), round(height * ratio))
        canvas = Image.new(image.mode, (w, h), pad)
        canvas.paste(image.resize(inner, recipe.resample), ((w - inner[0]) // 2, (h - inner[1]) // 2))
        image = canvas
    if recipe.crop is not None:
        ch, cw = recipe.crop
        if recipe.crop_floor:
            top, left = (image.height - ch) // 2, (image.width - cw) // 2
        else:
            top, left = int(round((image.height - ch) / 2.0)), int(round((image.width - cw) / 2.0))
        image = image.crop((left, top, left + cw, top + ch))
    pixels = np.asarray(image, dtype=np.float64)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def reference_tensor(data: bytes, recipe: Recipe) -> np.ndarray:
    """The model's input for one picture, [1, ...] in its layout and dtype: scale, normalise, transpose."""
    x = reference_pixels(data, recipe) * recipe.scale
    if recipe.mean is not None:
        x = (x - np.asarray(recipe.mean)) / np.asarray(recipe.std)
    if recipe.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return x[np.newaxis].astype(recipe.dtype)


def reference_run(model: Imported, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime on the original file, then a softmax where the model answers logits: float64 [N, C]."""
    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    answers = [session.run(None, {model.input_name: x[i : i + 1]})[0] for i in range(len(x))]  # batch 1 fits every graph
    scores = np.concatenate(answers).astype(np.float64)
    if not model.recipe.logits:
        return scores
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def build_models(directory: Path) -> list[Imported]:
    """The ONNX files, labels and configs of four models, and how each is imported."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "labels5.txt").write_text("\n".join(["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]) + "\n")
    (directory / "labels4.txt").write_text("cat\ndog\nbird\nfish\n")
    models = []

    # Hugging Face, CLIP style: shorter side then a (non-square) centre crop, bicubic, CLIP's mean/std; logits.
    onnx.save(make_photo_classifier(seed=1, layout="NCHW", height=24, width=32, output_name="logits"), directory / "clip.onnx")
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 24, "width": 32}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": MEAN, "image_processor_type": "CLIPImageProcessor",
        "image_std": STD, "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 40},
    }))
    models.append(Imported("hf-clip", directory / "clip.onnx", "pixel_values",
                           Recipe(("shorter", 40), (24, 32), True, Image.Resampling.BICUBIC, 1 / 255, MEAN, STD, "NCHW"),
                           ["--labels", str(directory / "labels5.txt"), "--config", str(directory / "preprocessor_config.json")]))

    # timm: NHWC, a Softmax already inside, crop_pct 0.9, bilinear; its config.json holds pretrained_cfg.
    onnx.save(make_photo_classifier(seed=2, layout="NHWC", height=32, width=32, num_classes=4, softmax=True,
                                    input_name="input", output_name="probs"), directory / "timm.onnx")
    (directory / "config.json").write_text(json.dumps({
        "architecture": "resnet18", "num_classes": 4, "num_features": 512, "global_pool": "avg",
        "pretrained_cfg": {"tag": "a1_in1k", "custom_load": False, "input_size": [3, 32, 32], "fixed_input_size": False,
                           "interpolation": "bilinear", "crop_pct": 0.9, "crop_mode": "center", "mean": [0.485, 0.456, 0.406],
                           "std": [0.229, 0.224, 0.225], "num_classes": 4, "pool_size": [1, 1], "first_conv": "conv1",
                           "classifier": "fc", "license": "apache-2.0"},
    }))
    models.append(Imported("timm-nhwc", directory / "timm.onnx", "input",
                           Recipe(("shorter", 35), (32, 32), False, Image.Resampling.BILINEAR, 1 / 255,
                                  [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "NHWC", logits=False),
                           ["--labels", str(directory / "labels4.txt"), "--config", str(directory / "config.json")]))

    # Flags only: float16 input, plain resize with Lanczos, pixels in [0, 1] with no normalisation; logits.
    onnx.save(make_photo_classifier(seed=3, height=16, width=16, dtype=TensorProto.FLOAT16, output_name="scores",
                                    input_name="images"), directory / "fp16.onnx")
    models.append(Imported("flags-fp16", directory / "fp16.onnx", "images",
                           Recipe(("size", (16, 16)), None, False, Image.Resampling.LANCZOS, 1 / 255, None, None, "NCHW", dtype=np.float16),
                           ["--labels", str(directory / "labels5.txt"), "--method", "resize", "--interpolation", "lanczos"]))

    # Grey, letterboxed, exported with a fixed batch of 1 and a dynamic picture size: the size comes from a flag;
    # transparency composited on white, by the flag.
    onnx.save(make_photo_classifier(seed=4, channels=1, height=20, width=30, batch=1, dynamic_size=True, output_name="logits"),
              directory / "grey.onnx")
    models.append(Imported("grey-letterbox", directory / "grey.onnx", "pixel_values",
                           Recipe(("letterbox", (20, 30), 0), None, False, Image.Resampling.BILINEAR, 1 / 127.5, [1.0], [1.0], "NCHW", channels=1,
                                  transparency="white"),
                           ["--labels", str(directory / "labels5.txt"), "--method", "letterbox", "--size", "20x30", "--pad-color", "0",
                            "--range=-1,1", "--transparency", "white"]))
    return models


COLOURS = ("red", "green", "blue")  # the colour classifier's labels, one per channel


def colour_classifier(scale: float, *, side: int = 16, batch: object = "batch") -> onnx.ModelProto:
    """Logits = scale x (each channel's mean - 0.5): a classifier of which colour dominates a picture. A large
    `scale` makes it over-confident on pictures whose colours overlap (see colour_picture)."""
    from onnx import helper, numpy_helper

    weights = (np.eye(3) * scale).astype(np.float32)
    bias = np.full(3, -0.5 * scale, np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["colour"], axis=1),
         helper.make_node("Gemm", ["colour", "weights", "bias"], ["logits"])],
        "colour-classifier",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [batch, 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        initializer=[numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def colour_picture(label: int, rng: np.random.Generator, size: tuple[int, int] = (40, 30)) -> Image.Image:
    """A picture of class `label`: its channel raised, the others random, so that about one in five is
    dominated by another channel (the label is then a hard case the classifier gets wrong), with pixel noise."""
    colour = rng.uniform(0.1, 0.55, 3)
    colour[label] += 0.3
    pixels = np.clip(colour * 255 + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def colour_folder(root: Path, counts: dict[str, int], *, seed: int = 0, labels: tuple[str, ...] = COLOURS) -> Path:
    """root/<label>/<i>.png (or .jpg every third picture): `counts[label]` pictures of each."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            picture = colour_picture(labels.index(name) if name in labels else 0, rng)
            picture.save(root / name / (f"{i}.jpg" if i % 3 == 2 else f"{i}.png"), quality=95)
    return root
