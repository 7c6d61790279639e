"""Fit the trust sections of a classifier: one function for training, the importer and the command line.

`fit_trust` takes an ONNX classifier and preprocessed pictures (validation: labelled, to fit the temperature and
the typicality threshold; training: to fit the class Gaussians; test: labelled, to measure), and answers the
graph to serve (temperature folded in, `typicality` output added) with the card sections describing it. The threshold is chosen on the test pictures (the validation pictures when
none are given): typicality below it flags at most `flag_rate` of them.
Needs `onnx` (fitting time only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnxruntime as ort

from service.trust import calibration as cal
from service.trust import typicality as typ
from service.trust.graph import INPUT_VIEW, PICTURE_STATISTICS, TYPICALITY_OUTPUT, anatomy, fold, view_shape, with_fitting_outputs
from service.trust.outlier_head import HEADS, HIDDEN, fit_outlier_head

OUTLIER_HEAD = "outlier-head"
FLAG_RATE = 0.05  # at most this share of the model's own pictures is flagged out of distribution
LOW_CONFIDENCE_MARGIN = 0.2  # top two calibrated probabilities closer than this: say the model hesitates
BATCH = 500
LAYER_CHOICES = ("input", "penultimate", "all", "none")


@dataclass(frozen=True)
class ServedPictures:
    """The model's own classes as serving makes them from uploads (its preprocessing's output), beside the dataset's
    tensors: the typicality members are fitted on `train_inputs` with the training pictures, standardised on
    `validation_inputs` with the validation pictures, and the threshold holds at most `flag_rate` of the test
    pictures and of each `test` set flagged (e.g. the test pictures sent as uploads)."""

    train_inputs: np.ndarray
    train_labels: np.ndarray
    validation_inputs: np.ndarray
    test: dict[str, np.ndarray] = field(default_factory=dict)
    description: str = ""  # what they are, for the card
    rates: dict[str, float] = field(default_factory=dict)  # a `test` set's own flag rate, where not `flag_rate`
    # Which kind of served picture each of `train_inputs` is (e.g. 0 photos, 1 enlarged uploads): the outlier head weighs
    # each kind, and the training pictures, alike. None: all one kind.
    train_groups: np.ndarray | None = None


@dataclass
class TrustFit:
    model: onnx.ModelProto  # the graph to serve
    calibration: dict  # the card's "calibration" section
    typicality: dict  # the card's "typicality" section
    reliability: dict = field(default_factory=dict)  # {"before": bins, "after": bins} on the measured split
    scores: dict = field(default_factory=dict)  # typicality of the validation / test pictures (for reports)


def _input_name(model: onnx.ModelProto) -> str:
    initializers = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def run_outputs(model: onnx.ModelProto, inputs: np.ndarray, names: list[str], batch: int = BATCH) -> list[np.ndarray]:
    """Every output in `names` for all of `inputs`, in batches, on ONNX Runtime's CPU provider. A graph exported
    with a fixed batch size (an imported model may be) is run in batches of that size, the last one padded."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = _input_name(model)
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0:
        batch = fixed
    chunks = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i : i + batch]
        missing = batch - len(chunk) if isinstance(fixed, int) and fixed > 0 else 0
        if missing:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], missing, axis=0)])
        answers = session.run(names, {feed: chunk})
        chunks.append([a[: len(a) - missing] for a in answers])
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(names))]


def fit_trust(
    model: onnx.ModelProto | bytes,
    *,
    output: str,
    kind: str = "probabilities",
    validation_inputs: np.ndarray,
    validation_labels: np.ndarray,
    train_inputs: np.ndarray | None = None,
    train_labels: np.ndarray | None = None,
    test_inputs: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    flag_rate: float = FLAG_RATE,
    margin: float = LOW_CONFIDENCE_MARGIN,
    layers: str = "input",
    splits: dict[str, str] | None = None,
    temperature: float | None = None,
    served_pictures: ServedPictures | None = None,
    within: bool = False,
    components: int = typ.COMPONENTS,
    statistics: bool = True,
    energy: bool = True,
    extent: bool = False,
    directions: int | None = None,
    outliers: np.ndarray | None = None,
    outliers_description: str = "",
) -> TrustFit:
    """Fit the temperature on the validation pictures, the Gaussians on the training pictures (the energy score
    when the graph has no feature tensors or no training labels), their standardisation on the validation pictures;
    measure, and choose the threshold, on the test pictures (the validation pictures when none are given).
    `layers` picks the Mahalanobis members: "input" (the picture, pooled), "penultimate" (also the input of the last
    linear layer, the features the logits are made of), "all" (also the input of every linear layer) or "none" (the
    energy score alone). `splits` names each set for the card. `temperature` keeps a known
    temperature instead of fitting one (refitting a served model's typicality in place); `served_pictures` adds the pictures
    serving makes of the model's own classes to the typicality's fit, standardisation and threshold. `within` adds the
    PCA-within member (the spread inside the picture's principal subspace) beside the residual; `components` is the
    subspace's size. `statistics` and `energy` keep those members (on by default), `extent` adds the extent member
    (how far the picture's object reaches the frame's edges; typicality.extent). `directions` keeps only that many
    directions (those the features vary least in within their class) of each layer's Mahalanobis member. `outliers`, model inputs made of pictures that are none of the
    model's classes (`outliers_description` says which, for the card), adds the outlier head (outlier_head.py): fitted
    to tell them from the training pictures (and the served training pictures) on the input of the second linear
    layer and the picture statistics."""
    if layers not in LAYER_CHOICES:
        raise ValueError(f"layers must be one of {', '.join(LAYER_CHOICES)}, not {layers!r}")
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    validation_labels = np.asarray(validation_labels, dtype=np.int64)
    parts = anatomy(model, output, kind)
    if train_inputs is None or train_labels is None or layers == "none":
        parts = replace(parts, features=[])
    elif layers in ("input", "penultimate"):
        on_picture = [f for f in parts.features if f[0] in (INPUT_VIEW, PICTURE_STATISTICS)]
        layer_inputs = [f for f in parts.features if f[0] not in (INPUT_VIEW, PICTURE_STATISTICS)]
        parts = replace(parts, features=on_picture + (layer_inputs[-1:] if layers == "penultimate" else []))
    if not statistics:
        parts = replace(parts, features=[f for f in parts.features if f[0] != PICTURE_STATISTICS])
    if extent and INPUT_VIEW not in [f[0] for f in parts.features]:
        raise ValueError("the extent member reads the picture's view: a 4-D picture of static size and training pictures")
    probe, names = with_fitting_outputs(model, parts)
    val_parts = run_outputs(probe, validation_inputs, names)
    num_classes = val_parts[0].shape[1]
    if temperature is None:
        temperature = cal.fit_temperature(val_parts[0], validation_labels)
    held_out_parts = val_parts
    if served_pictures is not None:  # standardised on what serving makes of validation pictures too
        served_val = run_outputs(probe, served_pictures.validation_inputs, names)
        held_out_parts = [np.concatenate([a, b]) for a, b in zip(val_parts, served_val)]

    members = []
    if parts.features:
        train_features = run_outputs(probe, train_inputs, names[1:])
        train_labels = np.asarray(train_labels, dtype=np.int64)
        if served_pictures is not None:
            served_train = run_outputs(probe, served_pictures.train_inputs, names[1:])
            train_features = [np.concatenate([a, b]) for a, b in zip(train_features, served_train)]
            train_labels = np.concatenate([train_labels, np.asarray(served_pictures.train_labels, dtype=np.int64)])
        for (tensor, _), features, held_out in zip(parts.features, train_features, held_out_parts[1:]):
            member = (typ.fit_subspace(features, components, within=within) if tensor == INPUT_VIEW
                      else typ.fit_gaussians(features, train_labels, num_classes, None if tensor == PICTURE_STATISTICS else directions))
            members.append(member.calibrated(held_out))
    extent_fit = None
    if extent:
        shape = view_shape(model, parts)
        extent_fit = typ.ExtentFit.on(held_out_parts[1 + [f[0] for f in parts.features].index(INPUT_VIEW)], shape)
    head = None
    if outliers is not None:
        head = _fit_head(model, output, kind, train_inputs, served_pictures, validation_inputs, outliers)
    energy_fit = typ.EnergyFit.on(held_out_parts[0]) if energy or not (members or extent_fit or head) else None
    folded = fold(model, parts, temperature, members, energy_fit, extent_fit, head)

    val_served, val_scores = run_outputs(folded, validation_inputs, [output, TYPICALITY_OUTPUT])
    measured = "test" if test_inputs is not None and test_labels is not None else "validation"
    if measured == "test":
        test_labels = np.asarray(test_labels, dtype=np.int64)
        test_logits = run_outputs(probe, test_inputs, names[:1])[0]
        served, scores = run_outputs(folded, test_inputs, [output, TYPICALITY_OUTPUT])
        labels = test_labels
    else:
        test_logits, served, scores, labels = val_parts[0], val_served, val_scores, validation_labels
    served_scores = {name: run_outputs(folded, inputs, [TYPICALITY_OUTPUT])[0] for name, inputs in (served_pictures.test if served_pictures else {}).items()}
    # On the measured split, and on each served test set: at most flag_rate of each is flagged.
    rates = served_pictures.rates if served_pictures else {}
    threshold = min([typ.threshold_for(scores, flag_rate), *(typ.threshold_for(s, rates.get(n, flag_rate)) for n, s in served_scores.items())])
    before = cal.softmax(test_logits)
    after = cal.softmax(served) if kind == "logits" else served.astype(np.float64)
    if (before.argmax(1) != after.argmax(1)).any():
        raise RuntimeError("folding the temperature changed a top class; refusing to publish")
    ordered = np.sort(after, axis=1)
    hesitant = (ordered[:, -1] - ordered[:, -2]) < margin
    names_of = splits or {}

    calibration = {
        "method": "temperature scaling (Guo et al. 2017), folded into the graph: softmax(logits / T)",
        "temperature": round(temperature, 6),
        "fitted_on": names_of.get("validation", f"{len(validation_labels)} labelled validation pictures"),
        "measured_on": names_of.get(measured, f"{len(labels)} {measured} pictures"),
        "ece_bins": cal.ECE_BINS,
        "ece_before": round(cal.expected_calibration_error(before, labels), 5),
        "ece_after": round(cal.expected_calibration_error(after, labels), 5),
        "nll_before": round(cal.nll(test_logits, labels), 5),
        "nll_after": round(cal.nll(test_logits, labels, temperature), 5),
        "accuracy": round(float((after.argmax(1) == labels).mean()), 5),
        "low_confidence_margin": margin,
        "low_confidence_share": round(float(hesitant.mean()), 5),
        "low_confidence_accuracy": round(float((after.argmax(1) == labels)[hesitant].mean()), 5) if hesitant.any() else None,
    }
    typicality = {
        "output": TYPICALITY_OUTPUT,
        "method": "+".join(dict.fromkeys([*(k for m, (t, _) in zip(members, parts.features) for k in _kinds(m, t)),
                                          *([typ.EXTENT] if extent_fit else []), *([typ.ENERGY] if energy_fit else []),
                                          *([OUTLIER_HEAD] if head else [])])),
        "description": (
            "the lowest of its members' scores, each standardised on held-out pictures of the training distribution "
            f"(0 at its median there, -1 at its {typ.TAIL:.0%} quantile; higher = more typical): pca-residual, minus the squared distance of the picture "
            "from the principal subspace of the training pictures; pca-within, minus the squared Mahalanobis distance "
            "of the picture's coordinates inside that subspace (each over its component's variance); picture-statistics, "
            "minus the squared Mahalanobis distance of 7 numbers describing how the picture is drawn (the means of x, x^2, "
            "x^4 and of the absolute first and second differences across and down) to the nearest class mean; mahalanobis, minus the squared Mahalanobis distance "
            "to the nearest class mean (class-conditional Gaussians, one shared covariance, Lee et al. 2018); energy, "
            "log-sum-exp of the logits (Liu et al. 2020); extent, the log of the ink in the picture's outermost rows "
            "(top and bottom) or columns (left and right), whichever holds more: how far its object reaches the frame; "
            "outlier-head, the mean logit of two-layer networks on the model's hidden features and the picture "
            "statistics, fitted to tell the training pictures (and each kind of served picture, weighed alike) from "
            "pictures that are none of the classes (outlier exposure, Hendrycks et al. 2019)"
        ),
        "members": [
            *(d for m, (t, w) in zip(members, parts.features) for d in _member(m, t, w)),
            *([{"kind": typ.EXTENT, "tensor": INPUT_VIEW, "band": "the outermost row or column"}] if extent_fit else []),
            *([{"kind": typ.ENERGY, "tensor": "logits"}] if energy_fit else []),
            *([{"kind": OUTLIER_HEAD, "tensors": [t for t, _ in head[1][1:]], "hidden": HIDDEN, "networks": HEADS,
                "outliers": outliers_description}] if head else []),
        ],
        # What a refit in place (`calibrate --refit-typicality`) fits again unless told otherwise.
        "fit_options": {"layers": layers, "components": components, "within": within, "statistics": statistics,
                        "energy": energy, "extent": extent, "directions": directions, "outlier_exposure": head is not None},
        "fitted_on": names_of.get("train", f"{0 if train_inputs is None else len(train_inputs)} training pictures")
        if members else None,
        "standardised_on": names_of.get("validation", f"{len(validation_labels)} validation pictures"),
        "threshold": threshold,
        "threshold_chosen_on": names_of.get(measured, f"{len(labels)} {measured} pictures"),
        "flag_rate_target": flag_rate,
        "flagged_share": round(float((scores < threshold).mean()), 5),
        "flagged_share_validation": round(float((val_scores < threshold).mean()), 5),
    }
    if served_pictures is not None:
        typicality["served_pictures"] = served_pictures.description
        typicality["flagged_share_served"] = {name: round(float((s < threshold).mean()), 5) for name, s in served_scores.items()}
    return TrustFit(
        model=folded,
        calibration=calibration,
        typicality=typicality,
        reliability={"before": cal.reliability(before, labels), "after": cal.reliability(after, labels)},
        scores={"validation": val_scores, measured: scores},
    )


def with_trust(card: dict, fit: TrustFit) -> dict:
    """The card with the calibration and typicality sections (replacing any earlier ones), its output naming the
    typicality output: what serving reads (service.trust.assess) to answer typicality and warnings."""
    output = {**card["output"], "typicality": fit.typicality["output"]}
    return {**card, "output": output, "calibration": fit.calibration, "typicality": fit.typicality}


def _kinds(member, tensor: str) -> list[str]:
    if isinstance(member, typ.SubspaceFit):
        return [typ.RESIDUAL] if member.variances is None else [typ.RESIDUAL, typ.WITHIN]
    return [typ.STATISTICS if tensor == PICTURE_STATISTICS else typ.MAHALANOBIS]


def _member(member, tensor: str, dimension: int) -> list[dict]:
    described = [{"kind": kind, "tensor": tensor, "dimension": dimension} for kind in _kinds(member, tensor)]
    if isinstance(member, typ.SubspaceFit):
        for d in described:
            d["components"] = int(member.components.shape[1])
    elif member.whitening.shape[1] < member.whitening.shape[0]:
        described[0]["directions"] = int(member.whitening.shape[1])
    return described


def _fit_head(model: onnx.ModelProto, output: str, kind: str, train_inputs: np.ndarray | None,
              served: ServedPictures | None, validation_inputs: np.ndarray, outliers: np.ndarray):
    """(the outlier head fitted and standardised, the features it needs: the picture's view, from which the statistics
    are made, then the two it reads: the input of the second linear layer (the last one's where there is one) and
    the picture statistics)."""
    full = anatomy(model, output, kind)
    layers = [f for f in full.features if f[0] not in (INPUT_VIEW, PICTURE_STATISTICS)]
    if train_inputs is None or not layers or PICTURE_STATISTICS not in [f[0] for f in full.features]:
        raise ValueError("the outlier head reads a linear layer's input and the picture statistics: a 4-D picture of "
                         "static size, a linear layer and training pictures")
    view = next(f for f in full.features if f[0] == INPUT_VIEW)  # the statistics are made from it
    features = [view, layers[1] if len(layers) > 1 else layers[-1], (PICTURE_STATISTICS, typ.STATISTICS_COUNT)]
    probe, names = with_fitting_outputs(model, replace(full, features=features))
    read = lambda x: np.concatenate(run_outputs(probe, x, names[2:]), axis=1)  # noqa: E731
    inliers, groups = read(train_inputs), np.zeros(len(train_inputs), np.int64)
    held_out = read(validation_inputs)
    if served is not None:
        inliers = np.concatenate([inliers, read(served.train_inputs)])
        kinds = np.zeros(len(served.train_inputs), np.int64) if served.train_groups is None else np.asarray(served.train_groups)
        groups = np.concatenate([groups, 1 + kinds])
        held_out = np.concatenate([held_out, read(served.validation_inputs)])
    return fit_outlier_head(inliers, read(outliers), inlier_groups=groups).calibrated(held_out), features
