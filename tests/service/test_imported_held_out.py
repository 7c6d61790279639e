"""Issue 17's judging, played on models and pictures the other import tests do not have: configs as they are
published (DeiT's legacy integer size, MobileViT's unnormalised BGR), a uint8 NHWC model, a grey model, 1,000
classes; EXIF orientations 1-8, CMYK, grey JPEG, palette GIF, WebP, 16-bit PNG, transparent PNGs (RGBA with black under the
transparency, a keyed palette), a photo big enough for the reduced JPEG decode. Each model is imported with `python -m service import`, served by `python -m service`, and compared
with a reference written here from the libraries' own rules (transformers' DeiT / MobileViT image processors,
torchvision's Resize + CenterCrop): uploads within 0.01, v2 through tritonclient (binary and JSON) within 1e-4."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw, ImageOps

from tests.service.conftest import PROJECT_ROOT, ServerProcess

UPLOAD_TOLERANCE, TENSOR_TOLERANCE = 0.01, 1e-4
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BICUBIC, BILINEAR = Image.Resampling.BICUBIC, Image.Resampling.BILINEAR
ELEMENT = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "uint8": TensorProto.UINT8}
V2_TYPE = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}

# name: (graph, config file or None, import flags, how the reference makes the model's input)
MODELS = {
    # facebook/deit-*-224's preprocessor_config.json: DeiTImageProcessor reads "size": 256 as 256x256, then crops 224.
    "deit": (dict(side=(224, 224), classes=1000),
             {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "DeiTFeatureExtractor", "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
              "resample": 3, "size": 256}, [],
             dict(resize=("square", 256), crop=(224, 224), floor=True, resample=BICUBIC, scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD)),
    # apple/mobilevit-small's: shorter side 288, centre 256, channels flipped to BGR, no normalisation; Softmax inside.
    "mobilevit": (dict(side=(256, 256), softmax=True),
                  {"crop_size": 256, "do_center_crop": True, "do_flip_channel_order": True, "do_resize": True,
                   "feature_extractor_type": "MobileViTFeatureExtractor", "resample": 2, "size": 288}, [],
                  dict(resize=("shorter", 288), crop=(256, 256), floor=True, resample=BILINEAR, scale=1 / 255, bgr=True)),
    # A TFLite-style export: NHWC uint8 pixels, normalised inside the graph.
    "uint8-nhwc": (dict(side=(96, 128), layout="NHWC", dtype="uint8"), None, ["--method", "resize"],
                   dict(resize=("size", (96, 128)), resample=BILINEAR, scale=1.0)),
    # A float16 export (model.half()): every weight and the logits float16. Their softmax must be that of the logits the
    # exported model answers (ONNX Runtime computes them unrounded when a Softmax is appended after them).
    "float16": (dict(side=(48, 48), dtype="float16"), None, ["--method", "resize", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"],
                dict(resize=("size", (48, 48)), resample=BILINEAR, scale=1 / 255, mean=[0.5] * 3, std=[0.5] * 3)),
    # One grey channel, torchvision's Resize(73) + CenterCrop(64) (a rounded crop offset), mean/std from flags.
    "grey": (dict(side=(64, 64), channels=1), None, ["--resize-shorter", "73", "--mean", "0.5", "--std", "0.25"],
             dict(resize=("shorter", 73), crop=(64, 64), floor=False, resample=BILINEAR, scale=1 / 255, mean=[0.5], std=[0.25])),
}


def classifier(seed: int, *, side: tuple[int, int], channels: int = 3, layout: str = "NCHW", dtype: str = "float32",
               classes: int = 10, softmax: bool = False) -> onnx.ModelProto:
    """Two strided convolutions, the mean of each quarter of the picture, a linear layer: answers that depend on where
    things are in the picture (a wrong turn or crop shows), logits or probabilities."""
    rng = np.random.default_rng(seed)
    height, width = side
    dims = ["N", channels, height, width] if layout == "NCHW" else ["N", height, width, channels]
    nodes, weights, x = [], [], "pixel_values"
    element = np.float16 if dtype == "float16" else np.float32  # a float16 graph computes in float16 throughout
    if dtype == "uint8":  # pixels 0..255 -> [-1, 1] inside the graph
        weights += [numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale"), numpy_helper.from_array(np.array(-1.0, np.float32), "offset")]
        nodes += [helper.make_node("Cast", [x], ["float"], to=TensorProto.FLOAT), helper.make_node("Mul", ["float", "scale"], ["scaled"]),
                  helper.make_node("Add", ["scaled", "offset"], ["shifted"])]
        x = "shifted"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    weights += [numpy_helper.from_array(rng.normal(0, 0.5, (8, channels, 3, 3)).astype(element), "k1"),
                numpy_helper.from_array(rng.normal(0, 0.2, (16, 8, 3, 3)).astype(element), "k2")]
    nodes += [helper.make_node("Conv", [x, "k1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
              helper.make_node("Conv", ["r1", "k2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"])]
    rows, columns = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)  # after the two convolutions
    kernel = [rows // 2, columns // 2]
    nodes += [helper.make_node("AveragePool", ["r2"], ["quarters"], kernel_shape=kernel, strides=kernel),
              helper.make_node("Flatten", ["quarters"], ["features"], axis=1)]
    features = 16 * (rows // kernel[0]) * (columns // kernel[1])
    weights += [numpy_helper.from_array(rng.normal(0, 1, (features, classes)).astype(element), "w"),
                numpy_helper.from_array(np.zeros(classes, element), "b")]
    nodes.append(helper.make_node("Gemm", ["features", "w", "b"], ["logits"]))
    output = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        output = "probs"
    graph = helper.make_graph(nodes, "held-out", [helper.make_tensor_value_info("pixel_values", ELEMENT[dtype], dims)],
                              [helper.make_tensor_value_info(output, ELEMENT[element.__name__], ["N", classes])], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    return model


def spread(model: onnx.ModelProto, inputs: np.ndarray) -> None:
    """Scale the last layer so that the most probable class averages ~0.55 on `inputs`: answers neither flat nor certain,
    where a preprocessing mistake shows in the probabilities."""
    w = next(i for i in model.graph.initializer if i.name == "w")
    session = ort.InferenceSession(_logits_of(model).SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"pixel_values": inputs})[0].astype(np.float64)
    low, high = 1e-4, 1e4
    for _ in range(50):
        factor = (low * high) ** 0.5
        top = softmax(logits * factor).max(axis=1).mean()
        low, high = (factor, high) if top < 0.55 else (low, factor)
    weights = numpy_helper.to_array(w)
    w.CopyFrom(numpy_helper.from_array((weights * factor).astype(weights.dtype), "w"))


def _logits_of(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if copy.graph.node[-1].op_type == "Softmax":
        copy.graph.node.pop()
        copy.graph.output[0].name = "logits"
    return copy


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- pictures ---------------------------------------------------------------------------------------------------------

def scene(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour, noise and shapes, with a red block in the top left corner: a wrong turn changes the answer."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height) * 640
    base = np.stack([128 + 100 * np.sin(x / 41 + y / 57 + seed), 128 + 90 * np.cos(x / 23), 128 + 80 * np.sin(y / 19)], -1)
    image = Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width * 0.8)), int(rng.integers(0, height * 0.8))
        draw.ellipse((x0, y0, x0 + width // 4, y0 + height // 5), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw.rectangle((0, 0, width // 5, height // 6), fill=(250, 20, 20))
    return image


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


# The transpose that stores an upright picture so that EXIF orientation n (with exif_transpose) shows it upright.
STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def pictures() -> dict[str, bytes]:
    upright = scene(400, 300, 1)
    files = {}
    for orientation, transpose in STORED.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = upright if transpose is None else upright.transpose(transpose)
        files[f"exif{orientation}.jpg"] = encode(stored, "JPEG", quality=92, exif=exif)
    files["cmyk.jpg"] = encode(scene(300, 400, 2).convert("CMYK"), "JPEG", quality=90)
    files["grey.jpg"] = encode(scene(320, 240, 3).convert("L"), "JPEG", quality=90)
    files["palette.gif"] = encode(scene(300, 200, 4).convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "GIF")
    files["photo.webp"] = encode(scene(320, 240, 5), "WEBP", quality=90)
    grey16 = np.asarray(scene(200, 150, 6).convert("L"), np.uint16) * 257 + np.random.default_rng(0).integers(0, 200, (150, 200), dtype=np.uint16)
    files["grey16.png"] = encode(Image.fromarray(grey16), "PNG")
    files["large.jpg"] = encode(scene(2000, 1500, 7), "JPEG", quality=90)  # decoded at a reduced scale for every model here
    # Transparency as product shots have it: black (or another colour) under the transparent pixels, which a
    # plain convert("RGB") keeps.
    cutout = np.asarray(scene(360, 270, 8).convert("RGBA")).copy()
    y, x = np.mgrid[0:270, 0:360]
    cutout[..., 3] = np.clip(255 - np.hypot(x - 180, y - 135) * 2.2, 0, 255).astype(np.uint8)
    cutout[cutout[..., 3] == 0, :3] = 0
    files["cutout.png"] = encode(Image.fromarray(cutout), "PNG")
    keyed = scene(240, 180, 9).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    files["keyed.png"] = encode(keyed, "PNG", transparency=3)  # one palette entry transparent
    return files


SPREAD_ON = ("exif1.jpg", "cmyk.jpg", "grey.jpg", "palette.gif", "photo.webp", "large.jpg")


# --- the reference ----------------------------------------------------------------------------------------------------

def reference_tensor(data: bytes, graph: dict, recipe: dict) -> np.ndarray:
    """PIL decode, EXIF transpose, RGB or L as Pillow's convert makes it (transparency dropped, the colour under it
    kept: the importer's default, as torchvision, timm and transformers' load_image do; a 16-bit picture brought to 8 bits, as the model card documents: Pillow's
    own conversion clips it to white), the config's resize and crop, scale, normalise, colour order, layout, dtype."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode == "I;16":
        image = Image.fromarray(np.rint(np.asarray(image, np.float64) / 65535 * 255).astype(np.uint8))
    image = image.convert("L" if graph.get("channels", 3) == 1 else "RGB")
    kind, size = recipe["resize"]
    if kind == "shorter":  # torchvision / transformers: the shorter side to `size`, the longer truncated
        width, height = image.size
        image = image.resize((size, int(size * height / width)) if width <= height else (int(size * width / height), size), recipe["resample"])
    else:
        height, width = (size, size) if kind == "square" else size
        image = image.resize((width, height), recipe["resample"])
    if "crop" in recipe:  # transformers' center_crop floors an odd margin, torchvision's CenterCrop rounds it
        height, width = recipe["crop"]
        if recipe["floor"]:
            top, left = (image.height - height) // 2, (image.width - width) // 2
        else:
            top, left = int(round((image.height - height) / 2.0)), int(round((image.width - width) / 2.0))
        image = image.crop((left, top, left + width, top + height))
    x = np.asarray(image, np.float64)
    x = x[:, :, None] if x.ndim == 2 else x
    if recipe.get("bgr"):
        x = x[:, :, ::-1]
    x = x * recipe["scale"]
    if "mean" in recipe:
        x = (x - np.asarray(recipe["mean"])) / np.asarray(recipe["std"])
    if graph.get("layout", "NCHW") == "NCHW":
        x = x.transpose(2, 0, 1)
    return x[np.newaxis].astype(graph.get("dtype", "float32"))


def reference_probabilities(path: Path, x: np.ndarray, answers_logits: bool) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = np.concatenate([session.run(None, {"pixel_values": x[i : i + 1]})[0] for i in range(len(x))]).astype(np.float64)
    return softmax(scores) if answers_logits else scores


# --- the run ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Every model imported with the command line into one repository, then `python -m service` serving it."""
    base = tmp_path_factory.mktemp("held-out")
    repository, files = base / "models", pictures()
    for seed, (name, (graph, config, flags, recipe)) in enumerate(MODELS.items()):
        model = classifier(seed, **graph)
        spread(model, np.concatenate([reference_tensor(files[file], graph, recipe) for file in SPREAD_ON]))
        onnx.save(model, base / f"{name}.onnx")
        (base / f"{name}.txt").write_text("".join(f"class {i}\n" for i in range(graph.get("classes", 10))))
        command = [sys.executable, "-m", "service", "import", str(base / f"{name}.onnx"), "--name", name,
                   "--labels", str(base / f"{name}.txt"), "--model-repository", str(repository), *flags]
        if config is not None:
            (base / f"{name}.json").write_text(json.dumps(config))
            command += ["--config", str(base / f"{name}.json")]
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    server = ServerProcess(repository)
    try:
        server.wait_ready()
        yield server, base, files
    finally:
        server.stop()


@pytest.mark.parametrize("name", MODELS)
def test_uploads_and_v2_answer_the_reference(served, name):
    server, base, files = served
    graph, _, _, recipe = MODELS[name]
    x = np.concatenate([reference_tensor(data, graph, recipe) for data in files.values()])
    expected = reference_probabilities(base / f"{name}.onnx", x, answers_logits=not graph.get("softmax"))
    top = expected.max(axis=1)
    assert top.min() < 0.5 and top.max() > 0.6, top  # answers spread: a preprocessing mistake would show

    upload = [("files", (file, data, "application/octet-stream")) for file, data in files.items()]
    response = httpx.post(f"{server.url}/v1/models/{name}/predict/image", files=upload, timeout=120)
    assert response.status_code == 200, response.text
    classes = expected.shape[1]
    served_upload = np.array([[p["probabilities"][f"class {i}"] for i in range(classes)] for p in response.json()["predictions"]])
    difference = dict(zip(files, np.abs(served_upload - expected).max(axis=1).round(5)))
    print(f"{name}: largest difference per picture {difference}")
    assert max(difference.values()) <= UPLOAD_TOLERANCE, difference

    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    try:
        metadata = client.get_model_metadata(name)
        (tensor,), (output,) = metadata["inputs"], metadata["outputs"]
        assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("pixel_values", V2_TYPE[graph.get("dtype", "float32")], [-1, *x.shape[1:]])
        assert output["shape"] == [-1, classes]
        for binary in (True, False):
            request = triton.InferInput("pixel_values", list(x.shape), tensor["datatype"])
            request.set_data_from_numpy(x, binary_data=binary)
            result = client.infer(name, [request], outputs=[triton.InferRequestedOutput(output["name"], binary_data=binary)])
            np.testing.assert_allclose(result.as_numpy(output["name"]), expected, atol=TENSOR_TOLERANCE, err_msg=f"binary={binary}")
    finally:
        client.close()
