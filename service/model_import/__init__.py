"""`python -m service import MODEL.onnx --name NAME --labels LABELS.txt [--config CONFIG.json]`: an ONNX image
classifier, its labels and its preprocessing -> the next version of models/NAME/, published atomically.

The graph is checked (service.model_import.graph), the preprocessing read from a Hugging Face or timm
configuration (service.model_import.configs) or from flags, a Softmax appended when the model answers
logits, the card built and checked as the server will check it, and the model run on a synthetic photo
through the server's own preprocessing before anything is written. Any refusal (ImportRefused) says what
is wrong and what is accepted, and publishes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.card import CardError, check_graph, fixed_batch, parse_card
from service.model_import.configs import ConfigError, read_config
from service.model_import.graph import append_softmax, facts, layout_of, read_model

CARD_METADATA_KEY = "model_card"  # where training puts the card in the ONNX metadata, too
DEFAULT_TASK = "image-classification"


class ImportRefused(Exception):
    """The model cannot be imported as asked; nothing was published."""


@dataclass
class ImportOptions:
    model: Path
    name: str
    labels: Path
    repository: Path
    config: Path | None = None
    task: str = DEFAULT_TASK
    output_kind: str | None = None  # "logits" | "probabilities"; None: read from the graph
    # Preprocessing flags: each given one overrides what the config says.
    flags: dict[str, Any] = field(default_factory=dict)


def import_model(options: ImportOptions) -> Path:
    """Check, convert and publish; returns the new version's directory. Raises ImportRefused."""
    try:
        return _import(options)
    except (ConfigError, CardError) as error:
        raise ImportRefused(str(error)) from None


def _import(options: ImportOptions) -> Path:
    from service.inference.registry import MODEL_NAME, NAME_RULE

    if not MODEL_NAME.fullmatch(options.name) or ".." in options.name:
        raise ImportRefused(f"{options.name!r} is not a valid model name: {NAME_RULE}")
    labels = read_labels(options.labels)
    if not options.model.is_file():
        raise ImportRefused(f"{options.model} is not a file")
    original = options.model.read_bytes()
    model = read_model(options.model)
    graph = facts(model)

    width = graph.output_dims[1]
    if width is not None and width != len(labels):
        raise ImportRefused(f"the model answers {width} classes but {options.labels.name} lists {len(labels)} labels; give one label per output column, in order")

    config_kind, fields = None, {}
    if options.config is not None:
        config_kind, fields = read_config(_read_json(options.config), options.config.name)
    flags = {k: v for k, v in options.flags.items() if v is not None}
    if "crop_pct" in flags and "resize_shorter" not in flags:  # the flag's crop replaces the config's resize
        fields.pop("resize_shorter", None)
        fields.pop("resize_size", None)
    fields.update(flags)
    spec, preprocessing = input_and_preprocessing(graph, fields)

    kind = options.output_kind or graph.answers
    if kind == "sigmoid":
        raise ImportRefused(
            f"the output {graph.output_name!r} comes from a Sigmoid (independent per-class scores, multi-label); the server "
            "serves softmax probabilities over the labels: pass --output-kind logits to apply a softmax to its input anyway"
        )
    output_name = append_softmax(model, graph) if kind == "logits" else graph.output_name

    card = {
        "name": options.name,
        "version": 1,  # set to the version's number when published
        "task": options.task,
        "classes": labels,
        "architecture": {"arch": model.graph.name or "imported", "parameters": graph.parameters,
                         "description": f"imported from {options.model.name}" + (f" ({graph.producer})" if graph.producer else "")},
        "input": spec,
        "output": {"name": output_name, "kind": "probabilities", "shape": ["N", len(labels)], "dtype": "float32"},
        "preprocessing": preprocessing,
        "source": {
            "file": options.model.name,
            "sha256": hashlib.sha256(original).hexdigest(),
            "config": options.config.name if options.config else None,
            "config_kind": config_kind,
            "config_sha256": hashlib.sha256(options.config.read_bytes()).hexdigest() if options.config else None,
            "producer": graph.producer or None,
            "original_output": graph.output_name,
            "softmax_appended": kind == "logits",
            "flags": {k: v for k, v in options.flags.items() if v is not None},
        },
        "onnx": {"file": "model.onnx", "opset": graph.opset, "sha256": "0" * 64},
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    parse_card(card)  # the server's own check of the card, before anything runs
    try:
        model_bytes = model.SerializeToString()
    except ValueError as error:  # protobuf refuses messages of 2 GB and more
        raise ImportRefused(f"the model cannot be written as one file ({error}); the repository takes models under 2 GB") from None
    try_on_a_photo(model_bytes, card)
    return publish(options.repository, options.name, model, card)


def read_labels(path: Path) -> list[str]:
    """Labels, one a line (a .json file: a list, or {"0": label, ...} as Hugging Face's id2label)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ImportRefused(f"cannot read the labels from {path}: {error}") from None
    if path.suffix == ".json":
        value = _read_json(path)
        if isinstance(value, dict):
            value = value.get("id2label", value)
            try:
                labels = [value[k] for k in sorted(value, key=int)]
            except (ValueError, TypeError):
                raise ImportRefused(f"{path.name}: a labels object must map 0, 1, 2, ... to labels") from None
        else:
            labels = value
        if not (isinstance(labels, list) and all(isinstance(label, str) for label in labels)):
            raise ImportRefused(f"{path.name} must hold a list of label strings or an id2label object")
    else:
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
    if len(labels) < 2 or not all(labels) or len(set(labels)) != len(labels):
        empty = [i + 1 for i, label in enumerate(labels) if not label]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        why = f"empty lines {empty}" if empty else f"repeated labels {repeated[:5]}" if repeated else f"{len(labels)} label(s)"
        raise ImportRefused(f"{path.name} must list two or more distinct, non-empty labels, one a line, in output order ({why})")
    return labels


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ImportRefused(f"cannot read {path} as JSON: {error}") from None


def input_and_preprocessing(graph, fields: dict) -> tuple[dict, dict]:
    """The card's input and preprocessing sections from the graph and the config / flag fields."""
    dims = graph.input_dims
    layout = layout_of(dims, fields.get("layout"))
    channel_dim, height_dim, width_dim = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    channels = fields.get("channels") or channel_dim
    if channels not in (1, 3) or (channel_dim is not None and channel_dim != channels):
        raise ImportRefused(f"the input has {channel_dim or 'a dynamic number of'} channels and the config / flags say {fields.get('channels')}; accepted: 1 or 3, agreeing with the graph")
    size = fields.get("size")
    if size is None:
        if height_dim is None or width_dim is None:
            raise ImportRefused(f"the input's height and width are dynamic ({_dims(dims)}); give the size pictures are made at: --size HxW or a config")
        size = [height_dim, width_dim]
    if (height_dim is not None and height_dim != size[0]) or (width_dim is not None and width_dim != size[1]):
        raise ImportRefused(f"the graph takes {height_dim}x{width_dim} pictures but the config / flags say {size[0]}x{size[1]}")
    method = fields.get("method") or "resize-crop"
    preprocessing = {"method": method, "interpolation": fields.get("interpolation") or "bilinear"}
    if method == "resize-crop":
        if fields.get("crop_rounding"):
            preprocessing["crop_rounding"] = fields["crop_rounding"]
        if fields.get("resize_size"):
            preprocessing["resize_size"] = list(fields["resize_size"])
        elif fields.get("resize_shorter"):
            preprocessing["resize_shorter"] = fields["resize_shorter"]
        else:  # torchvision's and timm's usual evaluation crop: 87.5 % of the shorter side
            crop_pct = fields.get("crop_pct") or 0.875
            preprocessing["resize_shorter"] = int(max(size) / crop_pct)
    elif method == "letterbox":
        preprocessing["pad_color"] = list(fields.get("pad_color") or [114] * channels)
    elif method != "resize":
        raise ImportRefused(f"--method {method!r} is not accepted; accepted: resize-crop, resize, letterbox")
    if height_dim is None or width_dim is None:
        preprocessing["size"] = list(size)
    preprocessing["description"] = describe(preprocessing, size)
    spec = {
        "name": graph.input_name,
        "layout": layout,
        "channels": channels,
        "color_order": fields.get("color_order") or ("L" if channels == 1 else "RGB"),
        "height": size[0],
        "width": size[1],
        "dtype": graph.dtype,
        "range": list(fields.get("range") or ([0.0, 255.0] if graph.dtype == "uint8" else [0.0, 1.0])),
        "mean": fields.get("mean"),
        "std": fields.get("std"),
    }
    instance = [channels, size[0], size[1]] if layout == "NCHW" else [size[0], size[1], channels]
    spec["shape"] = ["N", *instance]  # for readers of the cards written before layout, channels, height and width
    return spec, preprocessing


def describe(preprocessing: dict, size: list) -> str:
    h, w = size
    how = preprocessing["interpolation"]
    if preprocessing["method"] == "resize":
        return f"resized to {h}x{w} ({how}), the aspect not kept"
    if preprocessing["method"] == "letterbox":
        return f"fitted inside {h}x{w} keeping its aspect ({how}), padded with {preprocessing['pad_color']}"
    if "resize_size" in preprocessing:
        return f"resized to {preprocessing['resize_size'][0]}x{preprocessing['resize_size'][1]} ({how}), then the centre {h}x{w} cropped"
    return f"shorter side resized to {preprocessing['resize_shorter']} ({how}), then the centre {h}x{w} cropped"


def _dims(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def synthetic_photo(width: int = 640, height: int = 480) -> bytes:
    """A JPEG photo-like picture (gradients and a disc), made here: the model's first run needs no download."""
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(200, 40, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def try_on_a_photo(model_bytes: bytes, card: dict) -> np.ndarray:
    """Run the model on a synthetic photo (twice in one batch) through the server's own preprocessing, input checks
    and runtime; it must answer one probability per label, summing to 1."""
    import onnxruntime as ort

    from service.imaging import picture_pixels
    from service.inference import runtime
    from service.inference.model_input import ModelInput

    spec = parse_card(card)
    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ImportRefused(f"ONNX Runtime cannot load the model: {error}") from None
    check_graph(session.get_inputs(), session.get_outputs(), spec)
    model_input = ModelInput(spec.input)
    pixels, full_scale = picture_pixels(synthetic_photo(), spec, max_pixels=10_000_000)
    batch = model_input.from_pixels(np.stack([pixels, pixels]), full_scale)
    infer = runtime.make_infer_fn(session, spec.input.name, spec.output.name, fixed_batch=fixed_batch(session.get_inputs()))
    try:
        probabilities = np.asarray(infer(batch), dtype=np.float64)
    except Exception as error:
        raise ImportRefused(f"the model failed on a {'x'.join(map(str, batch.shape))} {batch.dtype} batch made as the card says: {error}") from None
    if probabilities.shape != (2, len(spec.classes)):
        raise ImportRefused(f"the model answered shape {list(probabilities.shape)} for 2 pictures; [2, {len(spec.classes)}] was expected")
    if not np.isfinite(probabilities).all() or np.abs(probabilities.sum(axis=1) - 1).max() > 1e-3 or probabilities.min() < 0:
        raise ImportRefused(
            "the model's answers are not probabilities (they do not sum to 1): it answers logits; "
            "pass --output-kind logits so that a Softmax is appended"
        )
    return probabilities


def publish(repository: Path, name: str, model, card: dict) -> Path:
    """Write model.onnx + model.json into a hidden temporary directory beside the versions, then rename it to
    the next free version number, so the version appears complete or not at all (as training publishes)."""
    model_root = Path(repository) / name
    created_root = not model_root.exists()
    model_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_root))
    try:
        while True:
            version = max((int(p.name) for p in model_root.iterdir() if p.name.isdigit() and int(p.name) > 0), default=0) + 1
            card = {**card, "version": version, "onnx": {k: v for k, v in card["onnx"].items() if k != "sha256"}}
            del model.metadata_props[:]
            entry = model.metadata_props.add()
            entry.key, entry.value = CARD_METADATA_KEY, json.dumps(card)  # the file's own sha256 cannot be inside it
            model_bytes = model.SerializeToString()
            (staging / "model.onnx").write_bytes(model_bytes)
            card["onnx"]["sha256"] = hashlib.sha256(model_bytes).hexdigest()
            (staging / "model.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
            os.chmod(staging, 0o755)  # mkdtemp makes it private; the published version is for everyone
            try:
                os.rename(staging, model_root / str(version))
                return model_root / str(version)
            except OSError:
                if not (model_root / str(version)).exists():
                    raise
                # Another publisher took this number meanwhile: take the next one.
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_root:
            try:
                model_root.rmdir()
            except OSError:
                pass
        raise
