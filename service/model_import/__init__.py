"""`python -m service import MODEL.onnx --name NAME --labels LABELS.txt [--config CONFIG.json]
[--calibration-data FOLDER]`: an ONNX image classifier, its labels and its preprocessing -> the next version of
models/NAME/, published atomically.

The graph is checked (service.model_import.graph), the preprocessing read from a Hugging Face or timm
configuration (service.model_import.configs) or from flags, a Softmax appended when the model answers
logits, the card built and checked as the server will check it, and the model run on a synthetic photo
through the server's own preprocessing before anything is written. With labelled pictures
(service.model_import.calibrate), the temperature and the typicality score are fitted and folded in, as for the
shipped models' calibrated versions, and run on the photo again. Any refusal (ImportRefused) says what
is wrong and what is accepted, and publishes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.inference.card import CardError, parse_card
from service.model_import.calibrate import calibrate
from service.model_import.calibration_data import CalibrationDataError
from service.model_import.configs import ConfigError, read_config
from service.model_import.graph import append_softmax, facts, layout_of, read_model
from service.model_import.publish import publish
from service.model_import.trial import TrialFailed, try_on_a_photo

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
    calibration_data: Path | None = None  # labelled pictures: fit the trust sections (see calibration_data.py)
    max_image_pixels: int | None = None  # the largest calibration picture (default: the server's setting)


def import_model(options: ImportOptions) -> Path:
    """Check, convert and publish; returns the new version's directory. Raises ImportRefused."""
    try:
        return _import(options)
    except (ConfigError, CardError, TrialFailed, CalibrationDataError) as error:
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
    if options.output_kind is None and kind == "logits":
        _refuse_probabilities_taken_for_logits(model, graph, labels, spec, preprocessing)
    # Logits that are not float32 (a float16 export) stay the graph's output and the server takes their softmax in
    # float32: given a Softmax or a Cast after them, ONNX Runtime drops its float16 rounding of them (the CPU runs float16
    # Gemm and MatMul in float32), and the answers would move 4e-4 from the exported model's own. With calibration the
    # temperature is folded into the graph as for every model.
    keep_logits = kind == "logits" and graph.output_dtype != "float32" and options.calibration_data is None
    output_name = append_softmax(model, graph) if kind == "logits" and not keep_logits else graph.output_name

    card = {
        "name": options.name,
        "version": 1,  # set to the version's number when published
        "task": options.task,
        "classes": labels,
        "architecture": {"arch": model.graph.name or "imported", "parameters": graph.parameters,
                         "description": f"imported from {options.model.name}" + (f" ({graph.producer})" if graph.producer else "")},
        "input": spec,
        "output": {"name": output_name, "kind": "logits" if keep_logits else "probabilities", "shape": ["N", len(labels)], "dtype": "float32"},
        "preprocessing": preprocessing,
        "source": {
            "file": options.model.name,
            "sha256": hashlib.sha256(original).hexdigest(),
            "config": options.config.name if options.config else None,
            "config_kind": config_kind,
            "config_sha256": hashlib.sha256(options.config.read_bytes()).hexdigest() if options.config else None,
            "producer": graph.producer or None,
            "original_output": graph.output_name,
            "softmax_appended": kind == "logits" and not keep_logits,
            "flags": {k: v for k, v in options.flags.items() if v is not None},
        },
        "onnx": {"file": "model.onnx", "opset": graph.opset, "sha256": "0" * 64},
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    parse_card(card)  # the server's own check of the card, before anything runs
    try_on_a_photo(_serialised(model), card)
    extras = None  # writes files beside the model
    if options.calibration_data is not None:
        max_pixels = options.max_image_pixels
        if max_pixels is None:
            from service.config import Settings

            max_pixels = Settings().max_image_pixels
        model, card, reliability = calibrate(model, card, options.calibration_data, max_pixels=max_pixels)
        card["source"] = {**card["source"], "calibration_data": options.calibration_data.resolve().name}
        parse_card(card)
        try_on_a_photo(_serialised(model), card)  # the graph as served, with the temperature and typicality in
        from service.trust.reliability_diagram import reliability_png

        diagram = reliability_png(reliability, title=options.name)

        def extras(directory: Path) -> None:
            (directory / "reliability.png").write_bytes(diagram)
    return publish(options.repository, options.name, model, card, extras)


def _refuse_probabilities_taken_for_logits(model, graph, labels: list, spec: dict, preprocessing: dict) -> None:
    """An output that no Softmax node makes may still hold probabilities (a softmax written as Exp, ReduceSum and
    Div): a Softmax appended to it would serve flattened answers without a word. Its answers on the synthetic photo
    tell: logits do not all lie in [0, 1] summing to 1."""
    card = {"name": "trial", "version": 1, "classes": labels, "input": spec, "preprocessing": preprocessing,
            "output": {"name": graph.output_name, "kind": "probabilities"},
            "onnx": {"file": "model.onnx", "opset": graph.opset, "sha256": "0" * 64}}
    try:
        try_on_a_photo(_serialised(model), card)
    except (TrialFailed, CardError):
        return  # not probabilities (or a failure the trial of the model as served will report)
    raise ImportRefused(
        f"the output {graph.output_name!r} is made by no Softmax node, but its answers are probabilities (each row lies in "
        "[0, 1] and sums to 1): pass --output-kind probabilities to serve them as they are (or --output-kind logits to "
        "take a softmax of them anyway)"
    )


def _serialised(model) -> bytes:
    try:
        return model.SerializeToString()
    except ValueError as error:  # protobuf refuses messages of 2 GB and more
        raise ImportRefused(f"the model cannot be written as one file ({error}); the repository takes models under 2 GB") from None


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
    if len(labels) < 2 or not all(isinstance(label, str) and label.strip() for label in labels):
        empty = [i + 1 for i, label in enumerate(labels) if not label]
        why = f"empty lines {empty}" if empty else f"{len(labels)} label(s)"
        raise ImportRefused(f"{path.name} must list two or more non-empty labels, one a line, in output order ({why})")
    return distinct(labels)


def distinct(labels: list[str]) -> list[str]:
    """The labels, a repeated one told apart by its output column: the usual ImageNet list names 'crane' and
    'maillot' twice, and answers map each label to its probability."""
    seen: set[str] = set()
    result = []
    for column, label in enumerate(labels):
        name = label
        if name in seen:
            name = f"{label} ({column})"
        seen.add(name)
        result.append(name)
    return result


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ImportRefused(f"cannot read {path} as JSON: {error}") from None


def input_and_preprocessing(graph, fields: dict) -> tuple[dict, dict]:
    """The card's input and preprocessing sections from the graph and the config / flag fields."""
    dims = graph.input_dims
    layout = layout_of(dims, fields.get("layout"), fields.get("layout_hint"))
    channel_dim, height_dim, width_dim = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    channels = fields.get("channels") or channel_dim or fields.get("channels_hint")
    if channels is None:
        raise ImportRefused(f"the input {_dims(dims)} has a dynamic number of channels; pass --channels 1 or --channels 3")
    if channels not in (1, 3) or (channel_dim is not None and channel_dim != channels):
        raise ImportRefused(f"the input has {channel_dim} channels and the config / flags say {fields.get('channels')}; accepted: 1 or 3, agreeing with the graph")
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
    # Transparent pixels as the libraries such models come from make them: torchvision's ImageFolder, timm and
    # Hugging Face's load_image and convert_to_rgb (do_convert_rgb) all call Pillow's convert("RGB"), which
    # drops the alpha channel and keeps the colour under it.
    preprocessing["transparency"] = fields.get("transparency") or "drop"
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
    return f"{_geometry(preprocessing, size)}; {TRANSPARENCY_SAID[preprocessing['transparency']]}"


TRANSPARENCY_SAID = {"drop": "transparency dropped (the colour under it kept)", "white": "transparency composited on white"}


def _geometry(preprocessing: dict, size: list) -> str:
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
