"""Graph surgery with the `onnx` package: find the logits and feature tensors of a classifier, expose
them for fitting, and fold the fitted temperature and typicality score into the served graph.

The served output keeps its name, shape and meaning (probabilities, or logits for a card whose output kind is
"logits"); a second output `typicality` [N] float32 is added. Fitting-time only: serving never imports onnx.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.trust.outlier_head import OutlierHeadFit
from service.trust.typicality import EXTENT_FLOOR, STATISTICS_COUNT, STATISTICS_KERNELS, EnergyFit, ExtentFit, GaussianFit, SubspaceFit, edge_bands

TYPICALITY_OUTPUT = "typicality"
_PREFIX = "trust_"  # names of everything this module adds
INPUT_VIEW = _PREFIX + "input_view"  # the picture, average-pooled to at most INPUT_VIEW_MAX values, flattened
INPUT_VIEW_MAX = 4096  # 28x28 as it is, 224x224 colour pooled to 32x32x3
PICTURE_STATISTICS = _PREFIX + "picture_statistics"  # [N, 7]: typicality.picture_statistics of the pooled picture
MAX_FEATURES = 4096  # wider layers are left out of the Mahalanobis members (a D x D whitening matrix each)


class GraphNotUnderstood(ValueError):
    """The graph's served output cannot be traced back to logits."""


@dataclass(frozen=True)
class Anatomy:
    """Where the parts are: `logits` (a tensor name, or None when they must be rebuilt as log(probabilities)),
    the Softmax node that turns them into the served probabilities (None for a logits output), and the
    feature tensors [N, D] the typicality score may read: the picture itself (`INPUT_VIEW`, pooled down to at
    most INPUT_VIEW_MAX values) and the input of every linear layer with at most MAX_FEATURES columns."""

    output: str
    kind: str  # "probabilities" | "logits"
    logits: str | None
    softmax: onnx.NodeProto | None
    features: list[tuple[str, int]]  # (tensor, width): the input view and the input of every linear layer
    opset: int
    input_pool: tuple[int, bool] | None = None  # (pool side, NHWC) for the input view
    float32: frozenset[str] = frozenset()  # tensors known to be float32 already (no Cast needed)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output}


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _inferred(model: onnx.ModelProto) -> tuple[dict[str, int], frozenset[str]]:
    """The static width of every [N, D] tensor shape inference can follow, and the tensors known to be float32."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot follow: no linear-layer features, casts everywhere
        return {}, frozenset()
    widths, floats = {}, set()
    for info in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].HasField("dim_value"):
            widths[info.name] = int(dims[1].dim_value)
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            floats.add(info.name)
    return widths, frozenset(floats)


def _linear_inputs(graph: onnx.GraphProto) -> list[str]:
    """The inputs of the linear layers (Gemm without transA, MatMul) whose weights are initializers, in graph order."""
    initializers = {i.name for i in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type == "Gemm" and not _attribute(node, "transA", 0) and node.input[1] in initializers:
            found.append(node.input[0])
        elif node.op_type == "MatMul" and node.input[1] in initializers:
            found.append(node.input[0])
    return list(dict.fromkeys(found))


def _input_shape(model: onnx.ModelProto) -> list[int | None]:
    return _input_shape_of(model.graph)


def _input_shape_of(graph: onnx.GraphProto) -> list[int | None]:
    initializers = {i.name for i in graph.initializer}
    graph_input = next(i for i in graph.input if i.name not in initializers)
    return [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]


def _input_pool(model: onnx.ModelProto) -> tuple[int, bool, int] | None:
    """(pool side, whether the layout is NHWC, width of the pooled flattened picture) for a 4-D input of
    static size with 1 or 3 channels, else None."""
    shape = _input_shape(model)
    if len(shape) != 4 or any(d is None for d in shape[1:]) or not ({shape[1], shape[3]} & {1, 3}):
        return None
    nhwc = shape[1] not in (1, 3)
    c, h, w = (shape[3], shape[1], shape[2]) if nhwc else (shape[1], shape[2], shape[3])
    side = 1
    while c * (h // side) * (w // side) > INPUT_VIEW_MAX:
        side += 1
    return side, nhwc, c * (h // side) * (w // side)


def anatomy(model: onnx.ModelProto, output: str, kind: str = "probabilities") -> Anatomy:
    graph = model.graph
    if output not in [o.name for o in graph.output]:
        raise GraphNotUnderstood(f"the graph has no output {output!r}")
    producers = _producers(graph)
    softmax, logits = None, None
    if kind == "logits":
        logits = output
    else:
        node = producers.get(output)
        if node is not None and node.op_type == "Softmax":
            softmax, logits = node, node.input[0]
    features = []
    pool = _input_pool(model)
    if pool is not None:
        features += [(INPUT_VIEW, pool[2]), (PICTURE_STATISTICS, STATISTICS_COUNT)]
    widths, floats = _inferred(model)
    for tensor in _linear_inputs(graph):
        width = widths.get(tensor)
        if width and width <= MAX_FEATURES:
            features.append((tensor, width))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return Anatomy(output, kind, logits, softmax, features, opset, pool[:2] if pool else None, floats)


def with_fitting_outputs(model: onnx.ModelProto, parts: Anatomy) -> tuple[onnx.ModelProto, list[str]]:
    """A copy that also outputs the logits (as float32; log(probabilities) when no logits tensor exists) and the
    features, for one ONNX Runtime pass over the fitting pictures. Returns it and its output names in order."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    logits = _logits_tensor(graph, parts)
    names = [logits]
    names += _feature_tensors(graph, parts)
    existing = {o.name for o in graph.output}
    for name in names:
        if name not in existing:
            graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy, names


def _feature_tensors(graph: onnx.GraphProto, parts: Anatomy) -> list[str]:
    """Add float32 [N, D] copies of the feature tensors to `graph`; their names, in `parts.features` order."""
    names = []
    for tensor, _ in parts.features:
        if tensor == INPUT_VIEW:
            names.append(_view(graph, parts))
        elif tensor == PICTURE_STATISTICS:
            names.append(_add_statistics(graph, parts))
        elif tensor in parts.float32:
            names.append(tensor)
        else:  # one float32 copy per tensor, however many members read it
            names.append(f"{_PREFIX}f32_{tensor}")
            if not any(names[-1] in node.output for node in graph.node):
                graph.node.append(helper.make_node("Cast", [tensor], [names[-1]], to=TensorProto.FLOAT))
    return names


def _picture(graph: onnx.GraphProto, parts: Anatomy) -> str:
    """The input picture as float32 NCHW, average-pooled by the anatomy's side; made once per graph."""
    made = {o for node in graph.node for o in node.output}
    initializers = {i.name for i in graph.initializer}
    source = next(i.name for i in graph.input if i.name not in initializers)
    side, nhwc = parts.input_pool
    steps = []
    if source not in parts.float32:
        steps.append(("Cast", _PREFIX + "picture_f32", {"to": TensorProto.FLOAT}))
    if nhwc:  # to NCHW, so the view has the same order of values for either layout
        steps.append(("Transpose", _PREFIX + "picture_nchw", {"perm": [0, 3, 1, 2]}))
    if side > 1:
        steps.append(("AveragePool", _PREFIX + "picture_pooled", {"kernel_shape": [side, side], "strides": [side, side]}))
    for op, out, attributes in steps:
        if out not in made:
            graph.node.append(helper.make_node(op, [source], [out], **attributes))
        source = out
    return source


def _add_statistics(graph: onnx.GraphProto, parts: Anatomy) -> str:
    """typicality.picture_statistics in the graph, for fitting: the sum of the view's values (ReduceSum) beside the
    shared statistic columns (`_statistic_columns`), Concat, and one MatMul that makes them the [N, 7] means."""
    if any(PICTURE_STATISTICS in node.output for node in graph.node):
        return PICTURE_STATISTICS
    p = PICTURE_STATISTICS + "_"
    view = _view(graph, parts)
    columns, to_statistics = _statistic_columns(graph, parts)
    means = np.zeros((1 + len(to_statistics), STATISTICS_COUNT))
    means[0, 0], means[1:, 1:] = 1.0 / _view_width(parts), to_statistics
    matrix = numpy_helper.from_array(means.astype(np.float32), p + "means")
    graph.initializer.append(matrix)
    graph.node.extend([
        _reduce("ReduceSum", view, p + "sum", parts.opset, graph, keepdims=1),
        helper.make_node("Concat", [p + "sum", *columns], [p + "sums"], axis=1),
        helper.make_node("MatMul", [p + "sums", matrix.name], [PICTURE_STATISTICS]),
    ])
    return PICTURE_STATISTICS


def _view(graph: onnx.GraphProto, parts: Anatomy) -> str:
    """INPUT_VIEW, the flattened (pooled) picture, made once per graph."""
    if not any(INPUT_VIEW in node.output for node in graph.node):
        graph.node.append(helper.make_node("Flatten", [_picture(graph, parts)], [INPUT_VIEW], axis=1))
    return INPUT_VIEW


def _view_width(parts: Anatomy) -> int:
    return next(width for tensor, width in parts.features if tensor == INPUT_VIEW)


def _statistic_columns(graph: onnx.GraphProto, parts: Anatomy) -> tuple[list[str], np.ndarray]:
    """The picture statistics after the mean of x, on x, the picture's mean over its channels: [N, 1] sums of x^2 and
    x^4 (Mul, then ReduceSum and ReduceSumSquare; for one channel the first is also the residual's |x|^2) and [N, 8]
    means of relu(x * k) and relu(-x * k) (Conv with the kernels and their negatives, which ONNX Runtime fuses with
    the Relu; GlobalAveragePool, Flatten): |r| = relu(r) + relu(-r), without an Abs, and the pooling reads the
    convolution's blocked layout as it is, where an Abs needs it reordered first. Returns the three tensors and the
    [10, 6] matrix that makes their columns statistics 1 to 6 (picture_statistics' order). Made once per graph."""
    p = PICTURE_STATISTICS + "_"
    names = [p + "x2", p + "x4", p + "responses"]
    h, w = _picture_sides(graph, parts)
    kernels = len(STATISTICS_KERNELS)
    to_statistics = np.zeros((2 + 2 * kernels, STATISTICS_COUNT - 1))
    to_statistics[0, 0] = to_statistics[1, 1] = 1.0 / (h * w)
    for j in range(kernels):
        to_statistics[2 + j, 2 + j] = to_statistics[2 + kernels + j, 2 + j] = 1.0
    if any(names[0] in node.output for node in graph.node):
        return names, to_statistics
    x, axes, keepdims = _view(graph, parts), (1,), 1  # one channel: the flattened picture is x
    picture = _picture(graph, parts)
    if _channels(graph, parts) > 1:
        graph.node.append(_reduce("ReduceMean", picture, p + "grey", parts.opset, graph, keepdims=1))
        picture = x = p + "grey"
        axes, keepdims = (2, 3), 0
    signed = np.concatenate([STATISTICS_KERNELS, -STATISTICS_KERNELS])[:, None].astype(np.float32)
    weights = numpy_helper.from_array(signed, p + "kernels")
    graph.initializer.append(weights)
    graph.node.extend([
        helper.make_node("Mul", [x, x], [p + "squares"]),
        _reduce("ReduceSum", p + "squares", names[0], parts.opset, graph, keepdims=keepdims, axes=axes),  # [N, 1]
        _reduce("ReduceSumSquare", p + "squares", names[1], parts.opset, graph, keepdims=keepdims, axes=axes),  # [N, 1]
        helper.make_node("Conv", [picture, weights.name], [p + "signed_responses"]),
        helper.make_node("Relu", [p + "signed_responses"], [p + "rectified"]),
        helper.make_node("GlobalAveragePool", [p + "rectified"], [p + "rectified_means"]),  # [N, 8, 1, 1]
        helper.make_node("Flatten", [p + "rectified_means"], [names[2]], axis=1),  # [N, 8]
    ])
    return names, to_statistics


def _picture_sides(graph: onnx.GraphProto, parts: Anatomy) -> tuple[int, int]:
    """Height and width of the (pooled) picture the view flattens."""
    shape = _input_shape_of(graph)
    side, nhwc = parts.input_pool
    h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
    return h // side, w // side


def view_shape(model: onnx.ModelProto, parts: Anatomy) -> tuple[int, int, int]:
    """(C, H, W) of the picture the view flattens (pooled), in its NCHW order."""
    return (_channels(model.graph, parts), *_picture_sides(model.graph, parts))


def _channels(graph: onnx.GraphProto, parts: Anatomy) -> int:
    shape = _input_shape_of(graph)
    return shape[3] if parts.input_pool[1] else shape[1]


def _logits_tensor(graph: onnx.GraphProto, parts: Anatomy) -> str:
    """A float32 logits tensor added to `graph`: the logits cast, or log of the served probabilities."""
    name = _PREFIX + "logits_f32"
    if parts.logits and parts.logits in parts.float32:
        return parts.logits
    if parts.logits:
        graph.node.append(helper.make_node("Cast", [parts.logits], [name], to=TensorProto.FLOAT))
    else:
        floor = numpy_helper.from_array(np.array(1e-30, np.float32), _PREFIX + "floor")
        graph.initializer.append(floor)
        graph.node.extend([
            helper.make_node("Cast", [parts.output], [_PREFIX + "p_f32"], to=TensorProto.FLOAT),
            helper.make_node("Max", [_PREFIX + "p_f32", floor.name], [_PREFIX + "p_floor"]),
            helper.make_node("Log", [_PREFIX + "p_floor"], [name]),
        ])
    return name


def _elem_type(graph: onnx.GraphProto, output: str) -> int:
    for info in graph.output:
        if info.name == output:
            return info.type.tensor_type.elem_type
    return TensorProto.FLOAT


def _reduce(op: str, tensor: str, out: str, opset: int, graph: onnx.GraphProto, keepdims: int = 0,
            axes: tuple[int, ...] = (1,)) -> onnx.NodeProto:
    """A reduction over `axes`; axes became an input in opset 18 (opset 13 for ReduceSum)."""
    if opset >= (13 if op == "ReduceSum" else 18):
        name = numpy_helper.from_array(np.array(axes, np.int64), out + "_axes")
        graph.initializer.append(name)
        return helper.make_node(op, [tensor, name.name], [out], keepdims=keepdims)
    return helper.make_node(op, [tensor], [out], axes=list(axes), keepdims=keepdims)


def fold(
    model: onnx.ModelProto, parts: Anatomy, temperature: float, members: list[GaussianFit | SubspaceFit], energy: EnergyFit | None,
    extent: ExtentFit | None = None, head: tuple[OutlierHeadFit, list[tuple[str, int]]] | None = None,
) -> onnx.ModelProto:
    """The served graph with the logits divided by `temperature` before the softmax (or before the served logits),
    and a `typicality` output: the lowest standardised score of the members, one per `parts.features` (in that
    order: a PCA residual or a Mahalanobis score), the energy of the raw logits (with `energy`) and the extent of
    the picture (with `extent`) and the outlier head's score (with `head`: the fit and the features it reads)."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    served_type = _elem_type(graph, parts.output)
    np_type = helper.tensor_dtype_to_np_dtype(served_type)
    t = numpy_helper.from_array(np.array(temperature, dtype=np_type), _PREFIX + "temperature")
    graph.initializer.append(t)

    # The typicality score reads the raw (unscaled) logits and the features, so build it before rewiring.
    _add_typicality(graph, parts, members, energy, extent, head)

    if parts.softmax is not None:  # ... -> logits -> Div(T) -> Softmax -> probabilities
        position = next(i for i, n in enumerate(graph.node) if n.op_type == "Softmax" and list(n.output) == list(parts.softmax.output))
        graph.node.insert(position, helper.make_node("Div", [parts.logits, t.name], [_PREFIX + "scaled_logits"]))
        graph.node[position + 1].input[0] = _PREFIX + "scaled_logits"
    else:  # the served tensor is renamed where it is made and used, and rebuilt at the end from that copy
        raw = _PREFIX + "served_raw"
        for node in graph.node:
            node.output[:] = [raw if o == parts.output else o for o in node.output]
            node.input[:] = [raw if i == parts.output else i for i in node.input]
        if parts.kind == "logits":
            graph.node.append(helper.make_node("Div", [raw, t.name], [parts.output]))
        else:  # probabilities without a Softmax node: softmax(log(p) / T), in the served type
            floor = numpy_helper.from_array(np.array(1e-30, np_type), _PREFIX + "served_floor")
            graph.initializer.append(floor)
            graph.node.extend([
                helper.make_node("Max", [raw, floor.name], [_PREFIX + "served_floored"]),
                helper.make_node("Log", [_PREFIX + "served_floored"], [_PREFIX + "served_log"]),
                helper.make_node("Div", [_PREFIX + "served_log", t.name], [_PREFIX + "served_scaled"]),
                helper.make_node("Softmax", [_PREFIX + "served_scaled"], [parts.output], axis=-1),
            ])
    # Appended nodes read only tensors made earlier, so the node order stays topological.
    graph.output.append(helper.make_tensor_value_info(TYPICALITY_OUTPUT, TensorProto.FLOAT, [_batch_dim(graph)]))
    onnx.checker.check_model(folded)
    return folded


def _batch_dim(graph: onnx.GraphProto):
    dims = graph.input[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_param"):
        return dims[0].dim_param
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else "N"


@dataclass(frozen=True)
class _Member:
    """A member's raw score columns and how they combine into its standardised score:
    standard = sum over `columns` ((tensor, width) pairs, [N, width] each; members may share a tensor) of the
    tensor's columns times its `weights` entry (one number per column, or one number for a tensor of width 1), plus
    shift."""

    columns: list[tuple[str, int]]
    weights: list[float]
    shift: float


def _add_typicality(graph: onnx.GraphProto, parts: Anatomy, members: list[GaussianFit | SubspaceFit], energy: EnergyFit | None,
                    extent: ExtentFit | None = None, head: tuple[OutlierHeadFit, list[tuple[str, int]]] | None = None) -> None:
    """typicality = min over members of their standardised scores. Every standardisation (and the residual's
    difference of two norms) is linear in the members' raw columns, so one Gemm does them all at once:
    Concat(raw columns) [N, R] @ W [R, M] + b [M] -> [N, M] standardised scores, then one ReduceMin. ONNX Runtime
    pays a fixed cost per node on small batches, and a few nanoseconds per value on larger ones, so the score is
    built from as few nodes, and as few passes over the picture, as the algebra allows."""
    found = []
    pairs = list(zip(parts.features, members))
    on_picture = {tensor: fit for (tensor, _), fit in pairs if tensor in (INPUT_VIEW, PICTURE_STATISTICS)}
    if on_picture or extent is not None:
        found.extend(_add_picture_members(graph, parts, on_picture.get(INPUT_VIEW), on_picture.get(PICTURE_STATISTICS), extent))
    others = [(feature, fit) for feature, fit in pairs if feature[0] not in on_picture]
    sources = _feature_tensors(graph, replace(parts, features=[f for f, _ in others])) if others else []
    for i, ((_, fit), source) in enumerate(zip(others, sources)):
        if isinstance(fit, SubspaceFit):
            raise ValueError("a PCA member reads the picture's view only")
        found.append(_add_mahalanobis(graph, source, fit, f"{_PREFIX}m{i}_", parts.opset))
    if energy is not None:
        found.append(_add_energy(graph, parts, energy))
    if head is not None:
        found.append(_add_outlier_head(graph, parts, *head))
    if not found:
        raise ValueError("typicality needs at least one member (Gaussians or the energy score)")
    tensors = list(dict.fromkeys(c for m in found for c in m.columns))  # each raw tensor once, in order
    starts = np.cumsum([0] + [width for _, width in tensors])
    weights = np.zeros((starts[-1], len(found)), np.float32)
    for j, member in enumerate(found):
        for (tensor, width), column_weights in zip(member.columns, member.weights):
            start = starts[tensors.index((tensor, width))]
            weights[start : start + width, j] += column_weights
    combine = numpy_helper.from_array(weights, _PREFIX + "standardise_weights")
    shifts = numpy_helper.from_array(np.array([m.shift for m in found], np.float32), _PREFIX + "standardise_shifts")
    graph.initializer.extend([combine, shifts])
    raw = tensors[0][0]
    if len(tensors) > 1:
        raw = _PREFIX + "raw_scores"
        graph.node.append(helper.make_node("Concat", [name for name, _ in tensors], [raw], axis=1))
    graph.node.append(helper.make_node("Gemm", [raw, combine.name, shifts.name], [_PREFIX + "standard_scores"]))
    graph.node.append(_reduce("ReduceMin", _PREFIX + "standard_scores", TYPICALITY_OUTPUT, parts.opset, graph))


def _add_picture_members(graph: onnx.GraphProto, parts: Anatomy, subspace: SubspaceFit | None, statistics: GaussianFit | None,
                         extent: ExtentFit | None = None) -> list[_Member]:
    """The PCA residual (and within), the picture statistics and the extent from one projection of the picture's view:
    Z = view @ [P | 1 | m] + [-m P | 0 | 0] (Gemm) gives the coordinates c = (x - m) P, the sum of x and x.m; with
    |x|^2 (ReduceSumSquare, also the statistics' x^2) the residual is |c|^2 - |x|^2 + 2 x.m - |m|^2, linear in Z * Z,
    Z and |x|^2. The statistics' raw columns S = [Z, x^2, x^4, relu(+-x * k)] are linear in what the Gaussian reads, so the
    whitening, the class means and the division by counts fold into two products from S: g = S A (ReduceSumSquare:
    |g|^2) and S B + |mu|^2 (ReduceMin over the classes); the nearest class's squared distance is their sum. The
    extent's two edge sums (top and bottom rows, left and right columns, plus EXTENT_FLOOR) are two more columns of
    Z: Slice, ReduceMax, Log."""
    p = _PREFIX + "picture_"
    view, width = _view(graph, parts), _view_width(parts)
    components = subspace.components.shape[1] if subspace is not None else 0
    mean = subspace.mean if subspace is not None else np.zeros(width)
    z_width = components + 2 + (2 if extent is not None else 0)
    projection = np.zeros((width, z_width))
    projection[:, :components] = subspace.components if subspace is not None else 0.0
    projection[:, components], projection[:, components + 1] = 1.0, mean
    bias = np.zeros(z_width)
    bias[:components] = -(mean @ projection[:, :components])
    if extent is not None:
        projection[:, components + 2 :] = edge_bands(*extent.shape)
        bias[components + 2 :] = EXTENT_FLOOR
    project = numpy_helper.from_array(projection.astype(np.float32), p + "projection")
    shift = numpy_helper.from_array(bias.astype(np.float32), p + "projection_shift")
    graph.initializer.extend([project, shift])
    graph.node.append(helper.make_node("Gemm", [view, project.name, shift.name], [p + "z"]))  # [N, k + 2 (+ 2)]
    found = []
    if extent is not None:
        edges = [numpy_helper.from_array(np.array([v], np.int64), p + "edges_" + n) for v, n in ((components + 2, "start"), (z_width, "end"), (1, "axis"))]
        graph.initializer.extend(edges)
        graph.node.extend([
            helper.make_node("Slice", [p + "z", *(e.name for e in edges)], [p + "edges"]),  # [N, 2]
            _reduce("ReduceMax", p + "edges", p + "edge_ink", parts.opset, graph, keepdims=1),  # [N, 1]
            helper.make_node("Log", [p + "edge_ink"], [p + "extent"]),
        ])
        found.append(_Member([(p + "extent", 1)], [1.0 / extent.scale], -extent.offset / extent.scale))
    if subspace is None and statistics is None:
        return found
    if statistics is not None:
        columns, to_statistics = _statistic_columns(graph, parts)
    else:  # the residual alone needs |x|^2, not the statistics' convolution
        columns, to_statistics = [], np.zeros((0, STATISTICS_COUNT - 1))
    square_of_grey = z_width  # the column of the statistics' sum of x^2 in sums
    square_of_norm = square_of_grey  # the column of the view's |x|^2: the same for one channel
    own_norm = _channels(graph, parts) > 1 or statistics is None  # the statistics read the channels' mean, the residual every value
    if own_norm:
        graph.node.append(_reduce("ReduceSumSquare", view, p + "norm", parts.opset, graph, keepdims=1))
        columns = [*columns, p + "norm"]
        square_of_norm = z_width + len(to_statistics)
    sums = p + "sums"
    graph.node.append(helper.make_node("Concat", [p + "z", *columns], [sums], axis=1))  # [N, k + 2 (+ 2) + 1 + 1 + 8 (+ 1)]
    sums_width = z_width + len(to_statistics) + own_norm
    if subspace is not None:
        graph.node.append(helper.make_node("Mul", [p + "z", p + "z"], [p + "z_squared"]))
        squares = (p + "z_squared", z_width)
        residual = np.zeros(z_width)
        residual[:components] = 1.0
        linear = np.zeros(sums_width)
        linear[components + 1], linear[square_of_norm] = 2.0, -1.0  # + 2 x.m - |x|^2
        constant = -float(mean @ mean)
        found.append(_Member([squares, (sums, sums_width)], [residual / subspace.scale, linear / subspace.scale],
                             (constant - subspace.offset) / subspace.scale))
        if subspace.variances is not None:
            within = np.zeros(z_width)
            within[:components] = -1.0 / subspace.variances
            found.append(_Member([squares], [within / subspace.within_scale], -subspace.within_offset / subspace.within_scale))
    if statistics is not None:
        # statistics = sums @ means_of (the mean of x from Z's column of ones, then the other sums over their counts)
        means_of = np.zeros((sums_width, STATISTICS_COUNT))
        means_of[components, 0] = 1.0 / width
        means_of[square_of_grey : square_of_grey + len(to_statistics), 1:] = to_statistics  # they follow Z
        whiten = means_of @ statistics.whitening  # [S, 7]
        cross = whiten @ (-2.0 * statistics.whitened_means.T)  # [S, C]
        norms = (statistics.whitened_means**2).sum(1)
        a = numpy_helper.from_array(whiten.astype(np.float32), p + "whiten")
        b = numpy_helper.from_array(cross.astype(np.float32), p + "cross")
        c = numpy_helper.from_array(norms.astype(np.float32), p + "mean_norms")
        graph.initializer.extend([a, b, c])
        graph.node.extend([
            helper.make_node("MatMul", [sums, a.name], [p + "g"]),
            _reduce("ReduceSumSquare", p + "g", p + "g_norm", parts.opset, graph, keepdims=1),  # [N, 1]
            helper.make_node("Gemm", [sums, b.name, c.name], [p + "to_means"]),  # [N, C]: |mu_c|^2 - 2 g.mu_c
            _reduce("ReduceMin", p + "to_means", p + "nearest", parts.opset, graph, keepdims=1),  # [N, 1]
        ])
        found.append(_Member([(p + "g_norm", 1), (p + "nearest", 1)], [[-1.0 / statistics.scale]] * 2, -statistics.offset / statistics.scale))
    return found


def _add_mahalanobis(graph: onnx.GraphProto, source: str, fit: GaussianFit, p: str, opset: int) -> _Member:
    """score = -min_c |f L - mu_c L|^2 = -(|g|^2 + min_c (|m_c|^2 - 2 f L m_c)), g = f L, standardised."""
    whitening = numpy_helper.from_array(fit.whitening.astype(np.float32), p + "whitening")
    cross = numpy_helper.from_array((fit.whitening @ fit.whitened_means.T * -2.0).astype(np.float32), p + "cross")
    mean_norms = numpy_helper.from_array((fit.whitened_means**2).sum(1).astype(np.float32), p + "mean_norms")
    graph.initializer.extend([whitening, cross, mean_norms])
    graph.node.extend([
        helper.make_node("MatMul", [source, whitening.name], [p + "g"]),
        _reduce("ReduceSumSquare", p + "g", p + "g_norm", opset, graph, keepdims=1),  # [N, 1]
        helper.make_node("Gemm", [source, cross.name, mean_norms.name], [p + "to_means"]),  # [N, C]
        _reduce("ReduceMin", p + "to_means", p + "nearest", opset, graph, keepdims=1),  # [N, 1]
    ])
    return _Member([(p + "g_norm", 1), (p + "nearest", 1)], [-1.0 / fit.scale] * 2, -fit.offset / fit.scale)


def _add_outlier_head(graph: onnx.GraphProto, parts: Anatomy, fit: OutlierHeadFit, features: list[tuple[str, int]]) -> _Member:
    """relu(Concat(features) @ W1 + b1) @ w2: the head's logit without b2, an [N, 1] column. The standardisation of its
    inputs folds into W1 and b1 (W1 / spread, b1 - (mean / spread) W1), b2 into the member's shift."""
    p = _PREFIX + "head_"
    sources = _feature_tensors(graph, replace(parts, features=features))[1:]  # features[0] is the view
    w1 = fit.w1 / fit.spread[:, None]
    b1 = fit.b1 - (fit.mean / fit.spread) @ fit.w1
    arrays = [numpy_helper.from_array(a.astype(np.float32), p + n) for a, n in ((w1, "w1"), (b1, "b1"), (fit.w2[:, None], "w2"))]
    graph.initializer.extend(arrays)
    if len(sources) > 1:
        graph.node.append(helper.make_node("Concat", sources, [p + "input"], axis=1))
    graph.node.extend([
        helper.make_node("Gemm", [p + "input" if len(sources) > 1 else sources[0], p + "w1", p + "b1"], [p + "pre"]),
        helper.make_node("Relu", [p + "pre"], [p + "hidden"]),
        helper.make_node("MatMul", [p + "hidden", p + "w2"], [p + "logit"]),  # [N, 1]
    ])
    return _Member([(p + "logit", 1)], [1.0 / fit.scale], (fit.b2 - fit.offset) / fit.scale)


def _add_energy(graph: onnx.GraphProto, parts: Anatomy, fit: EnergyFit) -> _Member:
    """The energy of the raw logits, an [N, 1] float32 column, standardised as (energy - offset) / scale."""
    graph.node.append(_reduce("ReduceLogSumExp", _logits_tensor(graph, parts), _PREFIX + "energy", parts.opset, graph, keepdims=1))
    return _Member([(_PREFIX + "energy", 1)], [1.0 / fit.scale], -fit.offset / fit.scale)


def folded_temperature(model: onnx.ModelProto) -> float | None:
    """The temperature `fold` put in the graph, exactly (the card keeps it rounded to 6 decimals), or None."""
    for initializer in model.graph.initializer:
        if initializer.name == _PREFIX + "temperature":
            return float(numpy_helper.to_array(initializer))
    return None


def strip_trust(model: onnx.ModelProto) -> onnx.ModelProto:
    """The classifier as it was before `fold`: every node, initializer and output this module added removed, the
    Softmax (or served output) reading the raw logits again. For refitting a served graph's typicality in place."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    added = lambda name: name.startswith(_PREFIX) or name in (TYPICALITY_OUTPUT, TYPICALITY_OUTPUT + "_axes")  # noqa: E731
    divided = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Div" and n.output[0] == _PREFIX + "scaled_logits"}
    raw = _PREFIX + "served_raw"
    made_raw = any(raw in n.output for n in graph.node)
    rebuilt = [n for n in graph.node if n.output and not added(n.output[0]) and any(added(i) for i in n.input) and raw not in n.input]
    if made_raw and rebuilt:
        raise GraphNotUnderstood("the served output was rebuilt after the logits; strip_trust handles a Softmax graph or a logits output")
    kept = [n for n in graph.node if not any(added(o) for o in n.output) or raw in n.output]
    if made_raw:  # the served tensor was renamed where it was made: give it its name back
        served = next(o.name for o in graph.output if not added(o.name))
        for node in kept:
            node.output[:] = [served if o == raw else o for o in node.output]
    for node in kept:
        node.input[:] = [divided.get(i, i) for i in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [i for i in graph.initializer if not added(i.name)]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    outputs = [o for o in graph.output if not added(o.name)]
    del graph.output[:]
    graph.output.extend(outputs)
    onnx.checker.check_model(stripped)
    return stripped
