"""The ONNX side of an import: read and check the graph, tell its layout, find whether it answers
logits, and append a Softmax so that the served output is probabilities. Needs the `onnx` package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.model_import.configs import ConfigError

MIN_OPSET = 7  # the oldest opset whose Softmax, Flatten and Gemm ONNX Runtime still runs as today
ELEMENT_TYPES = {1: "float32", 10: "float16", 2: "uint8"}  # onnx.TensorProto's element types a picture input may have
# Nodes that only move or relabel values: a Softmax behind them still makes the output probabilities.
PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


class GraphError(ConfigError):
    """The ONNX file cannot be served; the message says why and what is accepted."""


def load_onnx():
    """The onnx package, or a clear error saying how to get it."""
    try:
        import onnx
    except ImportError:
        raise GraphError(
            "importing a model needs the 'onnx' package, which serving itself does not: pip install 'onnx>=1.16' "
            "(the dev and train extras have it)"
        ) from None
    return onnx


@dataclass
class GraphFacts:
    input_name: str
    input_dims: list  # ints, or None where dynamic
    dtype: str
    output_name: str
    output_dims: list
    output_dtype: str  # the output's element type: "float32", "float16", ...
    opset: int
    producer: str
    answers: str  # "probabilities" | "logits" | "sigmoid" (what the node making the output says)
    parameters: int


def read_model(path: Path):
    """The model from `path` (external data files beside it are read in), checked by onnx's checker."""
    onnx = load_onnx()
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends: not an ONNX file
        raise GraphError(f"{path.name} is not an ONNX model ({error.__class__.__name__}: {error})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        raise GraphError(f"{path.name} fails onnx's model check: {error}") from None
    return model


def _dims(value_info) -> list:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def facts(model) -> GraphFacts:
    """What the importer needs to know of the graph; GraphError when it is not one image in, one 2-D answer out."""
    onnx = load_onnx()
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise GraphError(f"the model's opset is {opset}; accepted: {MIN_OPSET} to {onnx.defs.onnx_opset_version()} (default domain)")
    initialised = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialised]
    if len(inputs) != 1:
        raise GraphError(f"the graph takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); accepted: one image tensor")
    if len(graph.output) != 1:
        raise GraphError(f"the graph has {len(graph.output)} outputs ({', '.join(o.name for o in graph.output)}); accepted: one [N, classes] tensor")
    image, answer = inputs[0], graph.output[0]
    element = image.type.tensor_type.elem_type
    if element not in ELEMENT_TYPES:
        name = onnx.TensorProto.DataType.Name(element) if element else "unknown"
        raise GraphError(f"the input {image.name!r} holds {name}; accepted: float32, float16 or uint8 pictures")
    input_dims, output_dims = _dims(image), _dims(answer)
    if len(input_dims) != 4:
        raise GraphError(f"the input {image.name!r} has rank {len(input_dims)}; accepted: rank 4, [N, C, H, W] or [N, H, W, C]")
    if len(output_dims) != 2:
        raise GraphError(f"the output {answer.name!r} has rank {len(output_dims)}; accepted: rank 2, [N, classes]")
    parameters = sum(int(_count(i.dims)) for i in graph.initializer)
    return GraphFacts(
        input_name=image.name, input_dims=input_dims, dtype=ELEMENT_TYPES[element], output_name=answer.name,
        output_dims=output_dims, output_dtype=_element_name(onnx, answer.type.tensor_type.elem_type), opset=opset, producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        answers=_answers(graph, answer.name), parameters=parameters,
    )


def _element_name(onnx, element: int) -> str:
    return {1: "float32", 10: "float16", 11: "float64"}.get(element) or (onnx.TensorProto.DataType.Name(element).lower() if element else "unknown")


def _count(dims) -> int:
    total = 1
    for d in dims:
        total *= d
    return total


def _answers(graph, output: str) -> str:
    """'probabilities' when a Softmax makes the output (through nodes that only reshape), 'sigmoid' for a
    Sigmoid, else 'logits' (LogSoftmax included: a softmax of log-probabilities gives the probabilities)."""
    producers = {out: node for node in graph.node for out in node.output}
    name = output
    while name in producers:
        node = producers[name]
        if node.op_type == "Softmax":
            return "probabilities"
        if node.op_type == "Sigmoid":
            return "sigmoid"
        if node.op_type not in PASS_THROUGH or not node.input:
            return "logits"
        name = node.input[0]
    return "logits"


def layout_of(dims: list, requested: str | None, hint: str | None = None) -> str:
    """NCHW or NHWC: as asked (and consistent with fixed dims), else told by where a 1 or 3 channel axis sits,
    else as the config hints (a graph whose every dimension is dynamic)."""
    channels_first = dims[1] in (1, 3)
    channels_last = dims[3] in (1, 3)
    if requested is not None:
        fits = dims[1] in (1, 3, None) if requested == "NCHW" else dims[3] in (1, 3, None)
        if not fits:
            raise GraphError(f"--layout {requested} does not fit the input {dims}: its channel axis must be 1 or 3")
        return requested
    if channels_first and not channels_last:
        return "NCHW"
    if channels_last and not channels_first:
        return "NHWC"
    if hint is not None and dims[1] is None and dims[3] is None:
        return hint
    raise GraphError(f"cannot tell the layout of the input {_show(dims)}; pass --layout NCHW or --layout NHWC")


def append_softmax(model, facts_: GraphFacts) -> str:
    """Make the graph answer softmax probabilities of its logits; returns the new output's name."""
    onnx = load_onnx()
    from onnx import helper

    graph = model.graph
    taken = {v for node in graph.node for v in (*node.input, *node.output)} | {i.name for i in graph.input}
    name = "probabilities"
    while name in taken:
        name += "_"
    old = graph.output[0]
    element = old.type.tensor_type.elem_type
    graph.node.append(helper.make_node("Softmax", [old.name], [name], axis=1, name="pixelserve_softmax"))
    batch = old.type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or (batch.dim_value if batch.HasField("dim_value") else "N") or "N"
    width = facts_.output_dims[1]
    new = helper.make_tensor_value_info(name, element, [batch_dim, width if width is not None else "classes"])
    del graph.output[:]
    graph.output.append(new)
    onnx.checker.check_model(model)
    return name


def _show(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
