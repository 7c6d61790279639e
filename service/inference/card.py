"""The model card (model.json): parsed and checked once, with pydantic, into what serving reads.

The card declares the model; the server assumes nothing (docs/models.md restates the contract). Cards
written before the card was generalised (the shipped digit and clothing models: `input.shape
[N,1,28,28]`, `range [0,1]`, `output.activation softmax`, an ink preprocessing method) keep working:
every field they lack takes the value that describes them. `check_graph` then holds the ONNX graph to
what the card promises: input name, rank, fixed dimensions and element type, output name and width.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

INK_METHODS = ("mnist-digit", "fashion-fit")
PHOTO_METHODS = ("resize-crop", "resize", "letterbox")
METHODS = INK_METHODS + PHOTO_METHODS
INK_SIDE = 28  # the ink methods frame pictures as MNIST's 28x28
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")  # Pillow's filters
LAYOUTS = ("NCHW", "NHWC")
# ONNX Runtime's type names of the element types a card may declare.
ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)"}


class CardError(ValueError):
    """The card is not a valid model card; the message says which fields and why."""


class _Section(BaseModel):
    # Unknown keys are kept (a card carries more than serving reads: calibration, notes, ...).
    model_config = ConfigDict(extra="allow", frozen=True)


class InputSpec(_Section):
    name: str = Field(min_length=1)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channels: Literal[1, 3] = 1
    color_order: Literal["RGB", "BGR", "L"] | None = None
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    polarity: str | None = None
    shape: list | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_legacy_shape(cls, data: Any) -> Any:
        """A card that gives only `shape` (the cards written before this contract) describes its input by it."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        shape = data.get("shape")
        if isinstance(shape, list) and len(shape) == 4:
            channels_at, height_at, width_at = (1, 2, 3) if data.get("layout", "NCHW") == "NCHW" else (3, 1, 2)
            for key, at in (("channels", channels_at), ("height", height_at), ("width", width_at)):
                if data.get(key) is None and isinstance(shape[at], int):
                    data[key] = shape[at]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        order = self.color_order or ("L" if self.channels == 1 else "RGB")
        if (self.channels == 1) != (order == "L"):
            raise ValueError(f"color_order {order!r} does not fit {self.channels} channel(s): 'L' for 1, 'RGB' or 'BGR' for 3")
        object.__setattr__(self, "color_order", order)
        low, high = self.range
        if not low < high:
            raise ValueError(f"range {list(self.range)} must be [low, high] with low < high")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"{key} has {len(values)} values; one per channel ({self.channels}) is required")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std {list(self.std)} must be positive")
        if self.dtype == "uint8" and (self.range != (0.0, 255.0) or self.mean is not None):
            raise ValueError("a uint8 input takes raw pixels: range [0, 255] and no mean/std")
        object.__setattr__(self, "shape", ["N", *self.instance_shape])
        return self

    @property
    def instance_shape(self) -> tuple:
        """One picture in the model's layout; a dynamic height or width is None."""
        if self.layout == "NCHW":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)


class OutputSpec(_Section):
    name: str = Field(min_length=1)
    kind: Literal["probabilities", "logits"] = "probabilities"
    shape: list | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_legacy_activation(cls, data: Any) -> Any:
        """Cards before this contract say `"activation": "softmax"`: probabilities; no softmax means logits."""
        if isinstance(data, dict) and "kind" not in data and data.get("activation") not in (None, "softmax"):
            return {**data, "kind": "logits"}
        return data


class Preprocessing(_Section):
    method: str
    resize_shorter: int | None = Field(None, ge=1)
    resize_size: tuple[int, int] | None = None  # resize-crop: plain resize to [h, w] before the crop (DeiT, timm 'squash')
    size: tuple[int, int] | None = None  # [h, w] pictures are made at, for a graph whose height and width are dynamic
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = "bilinear"
    # Where an odd margin puts the centre crop: torchvision's CenterCrop rounds half the margin ("round"),
    # Hugging Face's image processors floor it ("floor").
    crop_rounding: Literal["round", "floor"] = "round"
    pad_color: tuple[int, ...] | None = None
    # The photo methods: what a transparent pixel becomes. "white": composited on white (a product shown on a
    # page; what folder training does). "drop": the alpha channel dropped and the colour under it kept, as
    # Pillow's Image.convert("RGB") does for torchvision's ImageFolder, timm and Hugging Face's load_image.
    transparency: Literal["white", "drop"] = "white"
    description: str | None = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
        return method

    @field_validator("resize_size", "size")
    @classmethod
    def _positive(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        if size is not None and min(size) < 1:
            raise ValueError(f"{list(size)} must be two positive integers [height, width]")
        return size


class OnnxSection(_Section):
    file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    opset: int | None = None


class ModelCard(_Section):
    name: str
    version: int = Field(ge=1)
    task: str = ""
    classes: list[str]
    input: InputSpec
    output: OutputSpec
    preprocessing: Preprocessing
    onnx: OnnxSection

    @field_validator("classes")
    @classmethod
    def _distinct_labels(cls, classes: list[str]) -> list[str]:
        if len(classes) < 2 or not all(classes) or len(set(classes)) != len(classes):
            raise ValueError("must list two or more distinct non-empty label names")
        return classes

    @model_validator(mode="after")
    def _method_fits_input(self) -> ModelCard:
        spec, prep = self.input, self.preprocessing
        if prep.method in INK_METHODS:
            for key in ("height", "width"):
                if getattr(spec, key) is None:
                    object.__setattr__(spec, key, INK_SIDE)
            object.__setattr__(spec, "shape", ["N", *spec.instance_shape])
            if spec.channels != 1 or (spec.height, spec.width) != (INK_SIDE, INK_SIDE):
                raise ValueError(f"preprocessing {prep.method!r} makes 1-channel {INK_SIDE}x{INK_SIDE} pictures; the input is "
                                 f"{spec.channels} channel(s) {spec.height}x{spec.width}")
            if prep.transparency != "white":
                # The ink methods put a drawing's transparent background behind its strokes themselves.
                raise ValueError(f"transparency {prep.transparency!r} is for the photo methods; {prep.method!r} finds the ink itself")
            return self
        if spec.height is None or spec.width is None:
            if prep.size is None:
                raise ValueError("input height and width are dynamic: preprocessing.size [height, width] must say what size to make pictures")
            object.__setattr__(spec, "height", spec.height or prep.size[0])
            object.__setattr__(spec, "width", spec.width or prep.size[1])
            object.__setattr__(spec, "shape", ["N", *spec.instance_shape])
        if prep.method == "resize-crop":
            if (prep.resize_shorter is None) == (prep.resize_size is None):
                raise ValueError("resize-crop needs exactly one of resize_shorter (keep the aspect) or resize_size [h, w]")
            if prep.resize_shorter is not None and prep.resize_shorter < max(spec.height, spec.width):
                raise ValueError(f"resize_shorter {prep.resize_shorter} is smaller than the {spec.height}x{spec.width} crop")
            if prep.resize_size is not None and (prep.resize_size[0] < spec.height or prep.resize_size[1] < spec.width):
                raise ValueError(f"resize_size {list(prep.resize_size)} is smaller than the {spec.height}x{spec.width} crop")
        if prep.pad_color is not None and (len(prep.pad_color) != spec.channels or not all(0 <= c <= 255 for c in prep.pad_color)):
            raise ValueError(f"pad_color {list(prep.pad_color)} must hold one 0..255 value per channel ({spec.channels})")
        return self

    @property
    def is_ink(self) -> bool:
        return self.preprocessing.method in INK_METHODS


def parse_card(data: object) -> ModelCard:
    """A model card from model.json's JSON value; CardError names every field that is wrong."""
    if not isinstance(data, dict):
        raise CardError("model.json must hold a JSON object")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "the card"
            problems.append(f"'{where}': {problem['msg'].removeprefix('Value error, ')}")
        raise CardError("model.json is not a valid model card: " + "; ".join(problems)) from None


def check_graph(inputs: list, outputs: list, card: ModelCard) -> None:
    """The graph (ONNX Runtime's NodeArg lists) must take the card's input and answer its output; CardError says how not."""
    spec = card.input
    if [i.name for i in inputs] != [spec.name]:
        raise CardError(f"the graph takes inputs {[i.name for i in inputs]}, the card promises one input {spec.name!r}")
    graph_input = inputs[0]
    expected = ["N", *spec.instance_shape]
    if graph_input.type != ORT_TYPES[spec.dtype]:
        raise CardError(f"the graph input is {graph_input.type}; the card says {spec.dtype} ({ORT_TYPES[spec.dtype]})")
    shape = list(graph_input.shape)
    fixed_mismatch = [
        f"dimension {axis} is {dim}, the card says {want}"
        for axis, (dim, want) in enumerate(zip(shape, expected, strict=False))
        if axis > 0 and isinstance(dim, int) and dim != want
    ]
    if len(shape) != 4 or fixed_mismatch:
        why = "; ".join(fixed_mismatch) or f"rank {len(shape)}, not 4"
        raise CardError(f"the graph input is {_shape(shape)} but the card ({spec.layout}) describes {_shape(expected)}: {why}")
    by_name = {o.name: o for o in outputs}
    if card.output.name not in by_name:
        raise CardError(f"the graph has no output {card.output.name!r} (it has {list(by_name)})")
    out_shape = by_name[card.output.name].shape
    width = out_shape[-1] if len(out_shape) == 2 else None
    if len(out_shape) != 2 or (isinstance(width, int) and width != len(card.classes)):
        raise CardError(f"the graph output is {_shape(out_shape)}; [N, {len(card.classes)}] (one column per class) is required")


def fixed_batch(inputs: list) -> int | None:
    """The batch size the graph's input is fixed to (an export without a dynamic batch axis), or None."""
    first = inputs[0].shape[0] if inputs and inputs[0].shape else None
    return first if isinstance(first, int) and first > 0 else None


def _shape(dims: list) -> str:
    """[N, 3, 224, 224]: a shape as people write it (a dynamic dimension by its name, or '?')."""
    return "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"
