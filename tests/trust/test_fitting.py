"""Fitting trust (service.trust): temperature scaling, the folded graph, typicality, on small synthetic models
of any input the card describes (1 or 3 channels, any size, NCHW or NHWC, probabilities or logits)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.trust import calibration as cal
from service.trust import typicality as typ
from service.trust.fit import fit_trust, run_outputs
from service.trust.graph import INPUT_VIEW, anatomy
from tests.onnx_models import classifier_weights, make_classifier


def logits_of(x: np.ndarray, seed: int, num_classes: int = 10) -> np.ndarray:
    weights, bias = classifier_weights(seed, num_classes, int(np.prod(x.shape[1:])))
    return x.reshape(len(x), -1).astype(np.float64) @ weights + bias


def overconfident_data(shape: tuple, seed: int, count: int, true_temperature: float = 3.0):
    """Pictures and labels drawn from softmax(logits / 3): the model (temperature 1) is over-confident."""
    rng = np.random.default_rng(seed + 100)
    x = rng.random((count, *shape), dtype=np.float32) * 0.2
    p = cal.softmax(logits_of(x, seed), true_temperature)
    labels = np.array([rng.choice(p.shape[1], p=row) for row in p])
    return x, labels


def test_ece_and_nll_on_known_cases():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])  # 90% bin: half right; 60% bin: all right
    assert cal.expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    logits = np.log(probabilities)
    assert cal.nll(logits, labels) == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.6])))


def test_temperature_fit_finds_the_true_temperature_and_lowers_ece():
    x, labels = overconfident_data((1, 28, 28), seed=3, count=4000)
    logits = logits_of(x, 3)
    temperature = cal.fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = cal.expected_calibration_error(cal.softmax(logits), labels)
    after = cal.expected_calibration_error(cal.softmax(logits, temperature), labels)
    assert after < before / 2


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 96, 64)], ids=["grey-28", "colour-32", "colour-96x64"])
def test_fit_trust_folds_the_temperature_and_adds_typicality(shape):
    seed = 5
    model = make_classifier(seed=seed, input_shape=("N", *shape))
    val_x, val_y = overconfident_data(shape, seed, 1000)
    train_x, train_y = overconfident_data(shape, seed + 1, 1000)
    test_x, test_y = overconfident_data(shape, seed + 2, 1000)
    fit = fit_trust(
        model, output="probabilities", validation_inputs=val_x, validation_labels=val_y,
        train_inputs=train_x, train_labels=train_y, test_inputs=test_x, test_labels=test_y,
    )
    temperature = fit.calibration["temperature"]
    assert temperature > 2.0
    assert fit.calibration["ece_after"] < fit.calibration["ece_before"]
    probabilities, typicality = run_outputs(fit.model, test_x, ["probabilities", "typicality"])
    # The served graph answers softmax(logits / T), and keeps every top class.
    np.testing.assert_allclose(probabilities, cal.softmax(logits_of(test_x, seed), temperature), atol=2e-5)
    assert typicality.shape == (len(test_x),) and typicality.dtype == np.float32
    # The picture's view (pooled when large) is a Mahalanobis member beside the energy score.
    members = fit.typicality["members"]
    assert members[0]["tensor"] == INPUT_VIEW and members[0]["kind"] == "pca-residual" and members[0]["dimension"] <= 4096
    assert members[-1]["kind"] == "energy"
    # The threshold flags at most 5% of the test pictures; noise far brighter than them is flagged.
    assert np.mean(typicality < fit.typicality["threshold"]) <= 0.05
    noise = np.random.default_rng(0).random((200, *shape), dtype=np.float32)
    (noise_typicality,) = run_outputs(fit.model, noise, ["typicality"])
    assert np.mean(noise_typicality < fit.typicality["threshold"]) >= 0.9


def _logits_model(nhwc: bool) -> onnx.ModelProto:
    """input [N,8,8,3] (NHWC) or [N,3,8,8] -> Flatten -> Gemm -> logits (no softmax in the graph)."""
    weights, bias = classifier_weights(9, 4, 192)
    shape = ["N", 8, 8, 3] if nhwc else ["N", 3, 8, 8]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1), helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])],
        "logits-model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
def test_a_logits_output_is_divided_by_the_temperature(nhwc):
    model = _logits_model(nhwc)
    rng = np.random.default_rng(1)
    shape = (8, 8, 3) if nhwc else (3, 8, 8)
    x = rng.random((1200, *shape), dtype=np.float32)
    (raw,) = run_outputs(model, x, ["logits"])
    labels = np.array([rng.choice(4, p=row) for row in cal.softmax(raw, 2.0)])
    fit = fit_trust(model, output="logits", kind="logits", validation_inputs=x[:600], validation_labels=labels[:600],
                    train_inputs=x[600:], train_labels=labels[600:])
    served, typicality = run_outputs(fit.model, x[:10], ["logits", "typicality"])
    np.testing.assert_allclose(served, raw[:10] / fit.calibration["temperature"], rtol=1e-5, atol=1e-5)
    assert typicality.shape == (10,)


def test_without_training_labels_the_energy_score_stands_alone():
    model = make_classifier(seed=2)
    x, labels = overconfident_data((1, 28, 28), 2, 800)
    fit = fit_trust(model, output="probabilities", validation_inputs=x, validation_labels=labels)
    assert [m["kind"] for m in fit.typicality["members"]] == ["energy"]
    (typicality,) = run_outputs(fit.model, x, ["typicality"])
    energy = np.log(np.exp(logits_of(x, 2)).sum(1))
    median = np.median(energy)  # 0 at the median, -1 at the 2% quantile
    standard = (energy - median) / (median - np.quantile(energy, 0.02))
    np.testing.assert_allclose(typicality, standard, atol=1e-3)


def test_the_graph_parts_are_found_in_a_shipped_model():
    from training.data import PROJECT_ROOT

    model = onnx.load(PROJECT_ROOT / "models" / "mnist-convnet" / "1" / "model.onnx")
    parts = anatomy(model, "probabilities")
    assert parts.softmax is not None and parts.logits
    assert [t for t, _ in parts.features][0] == INPUT_VIEW and len(parts.features) >= 3
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities"]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 16)], ids=["grey-28", "colour-16"])
def test_the_graph_computes_the_members_as_numpy_does(shape):
    """layers="all": the picture's PCA residual, its picture statistics, a Mahalanobis member on the Gemm's input, and
    the energy; the graph's typicality is the lowest of the four standardised scores (the graph computes them from
    one projection and folded products: the same numbers). In colour the statistics read the channels' mean and
    the residual every value."""
    from service.trust import typicality as typ

    model = make_classifier(seed=4, input_shape=("N", *shape))
    val_x, val_y = overconfident_data(shape, 4, 600)
    train_x, train_y = overconfident_data(shape, 5, 600)
    fit = fit_trust(model, output="probabilities", validation_inputs=val_x, validation_labels=val_y,
                    train_inputs=train_x, train_labels=train_y, layers="all")
    assert [m["kind"] for m in fit.typicality["members"]] == ["pca-residual", "picture-statistics", "mahalanobis", "energy"]
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731  the input view and the Gemm's input are both the picture
    residual = typ.fit_subspace(flat(train_x)).calibrated(flat(val_x))
    statistics = typ.fit_gaussians(typ.picture_statistics(train_x), train_y, 10).calibrated(typ.picture_statistics(val_x))
    gaussians = typ.fit_gaussians(flat(train_x), train_y, 10).calibrated(flat(val_x))
    energy = typ.EnergyFit.on(logits_of(val_x, 4))
    x = np.concatenate([val_x[:50], np.random.default_rng(1).random((20, *shape), dtype=np.float32)])
    expected = np.min([residual.standardised(flat(x)), statistics.standardised(typ.picture_statistics(x)),
                       gaussians.standardised(flat(x)), energy.standardised(logits_of(x, 4))], axis=0)
    (typicality,) = run_outputs(fit.model, x, ["typicality"])
    np.testing.assert_allclose(typicality, expected, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize(("shape", "opset"), [((1, 28, 28), 17), ((1, 28, 28), 18), ((3, 33, 31), 18), ((1, 5, 7), 17)],
                         ids=["grey-28-opset17", "grey-28-opset18", "colour-33x31", "tiny"])
def test_the_picture_statistics_in_the_graph_are_numpys(shape, opset):
    """The probe's statistics are numpy's, for one channel or three (the channels' mean), either opset."""
    from service.trust import typicality as typ
    from service.trust.graph import PICTURE_STATISTICS, anatomy, with_fitting_outputs

    model = make_classifier(seed=8, input_shape=("N", *shape), opset=opset)
    probe, names = with_fitting_outputs(model, anatomy(model, "probabilities"))
    x = np.random.default_rng(2).random((30, *shape), dtype=np.float32)
    (statistics,) = run_outputs(probe, x, [PICTURE_STATISTICS])
    np.testing.assert_allclose(statistics, typ.picture_statistics(x), rtol=1e-4, atol=1e-6)


def test_members_are_standardised_so_their_tails_line_up():
    """0 at the median of the held-out scores and -1 at their TAIL quantile, whatever the scores' spread."""
    from service.trust import typicality as typ

    scores = np.random.default_rng(3).standard_exponential(10_000) * -7.0
    offset, scale = typ.standardisation(scores)
    standard = (scores - offset) / scale
    assert abs(np.median(standard)) < 1e-9
    assert abs(np.mean(standard < -1) - typ.TAIL) < 0.002


def test_a_pca_within_member_scores_the_spread_inside_the_subspace():
    from service.trust import typicality as typ

    model = make_classifier(seed=9)
    val_x, val_y = overconfident_data((1, 28, 28), 9, 400)
    train_x, train_y = overconfident_data((1, 28, 28), 10, 400)
    fit = fit_trust(model, output="probabilities", validation_inputs=val_x, validation_labels=val_y,
                    train_inputs=train_x, train_labels=train_y, within=True)
    assert [m["kind"] for m in fit.typicality["members"]] == ["pca-residual", "pca-within", "picture-statistics", "energy"]
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    subspace = typ.fit_subspace(flat(train_x), within=True).calibrated(flat(val_x))
    statistics = typ.fit_gaussians(typ.picture_statistics(train_x), train_y, 10).calibrated(typ.picture_statistics(val_x))
    energy = typ.EnergyFit.on(logits_of(val_x, 9))
    x = np.concatenate([val_x[:40], 3 * val_x[40:60]])  # the same shapes, far too much of them
    expected = np.min([subspace.standardised(flat(x)), subspace.standardised_within(flat(x)),
                       statistics.standardised(typ.picture_statistics(x)), energy.standardised(logits_of(x, 9))], axis=0)
    (typicality,) = run_outputs(fit.model, x, ["typicality"])
    np.testing.assert_allclose(typicality, expected, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("opset", [17, 18])
def test_the_typicality_adds_few_nodes(opset):
    """ONNX Runtime pays a fixed cost per node per run (a few microseconds: most of the score's cost for one picture)
    and a nanosecond or so per value it reads: the temperature and the default typicality (PCA residual + picture
    statistics + energy) add 20 nodes, 19 run (Div; Flatten, Gemm, Mul; Mul, ReduceSum, ReduceSumSquare, Conv and
    Relu (fused), GlobalAveragePool, Flatten, Concat, MatMul, ReduceSumSquare, Gemm, ReduceMin; ReduceLogSumExp;
    Concat, Gemm, ReduceMin; 25 before), and read the 28x28 picture three times (the projection, its square, the
    kernels). The graph's scores are the members' as numpy computes them
    (test_the_graph_computes_the_members_as_numpy_does)."""
    model = make_classifier(seed=6, opset=opset)
    val_x, val_y = overconfident_data((1, 28, 28), 6, 400)
    train_x, train_y = overconfident_data((1, 28, 28), 7, 400)
    fit = fit_trust(model, output="probabilities", validation_inputs=val_x, validation_labels=val_y,
                    train_inputs=train_x, train_labels=train_y)
    assert [m["kind"] for m in fit.typicality["members"]] == ["pca-residual", "picture-statistics", "energy"]
    assert len(fit.model.graph.node) - len(model.graph.node) == 20
    original = {o for n in model.graph.node for o in n.output}
    added = [n for n in fit.model.graph.node if not set(n.output) & original]
    reading = [n.op_type for n in added if {"input", "trust_input_view"} & set(n.input) and n.op_type != "Flatten"]
    assert sorted(reading) == ["Conv", "Gemm", "Mul"]


def test_a_subspace_of_few_pictures_keeps_the_directions_they_span():
    """Fewer pictures than values: the SVD path keeps n - 1 components, the same subspace as the covariance's
    leading eigenvectors, and scores pictures as the eigenvector path does."""
    rng = np.random.default_rng(0)
    pictures = rng.normal(size=(30, 200)) @ rng.normal(size=(200, 200)) * 0.1
    fit = typ.fit_subspace(pictures)
    assert fit.components.shape == (200, 29)
    centred = pictures - pictures.mean(0)
    _, vectors = np.linalg.eigh(centred.T @ centred / len(pictures))
    leading = vectors[:, ::-1][:, :29]
    np.testing.assert_allclose(fit.components @ fit.components.T, leading @ leading.T, atol=1e-8)
    others = rng.normal(size=(5, 200))
    reference = typ.SubspaceFit(mean=pictures.mean(0), components=leading)
    np.testing.assert_allclose(fit.score(others), reference.score(others), rtol=1e-9)
    assert typ.fit_subspace(rng.normal(size=(300, 20))).components.shape == (20, 19)  # more pictures: as before


def test_the_reliability_diagram_puts_each_bin_at_its_confidence_and_accuracy():
    import io

    from PIL import Image

    from service.trust.reliability_diagram import MARGIN, SIDE, STYLES, reliability_png

    bins = [{"count": 5, "confidence": 0.5, "accuracy": 0.25}, {"count": 0, "confidence": None, "accuracy": None}]
    picture = np.asarray(Image.open(io.BytesIO(reliability_png({"after": bins}, title="m"))).convert("RGB"))
    inner = SIDE - 2 * MARGIN
    x, y = round(MARGIN + 0.5 * inner), round(SIDE - MARGIN - 0.25 * inner)
    assert tuple(picture[y, x]) == STYLES["after"][0]  # the dot of the one non-empty bin
    assert tuple(picture[round(SIDE - MARGIN - 0.75 * inner), x]) == (255, 255, 255)  # nothing where no bin is


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 12)], ids=["grey-28", "colour-16x12"])
def test_the_extent_and_penultimate_members_in_the_graph_are_numpys(shape):
    """The members fashion-mlp is fitted with: the PCA residual and within (128 components where the picture has
    that many values), the extent, a Mahalanobis member on the last linear layer's input in its 64 least varying
    directions, no picture statistics and no energy. The graph's typicality is the lowest of numpy's standardised
    scores, and a picture whose object stays clear of the frame's edges scores far below the pictures it was fitted on."""
    model = make_classifier(seed=12, input_shape=("N", *shape))
    rng = np.random.default_rng(12)
    val_x, val_y = overconfident_data(shape, 12, 500)
    train_x, train_y = overconfident_data(shape, 13, 500)
    components = min(128, len(train_x) - 1)
    fit = fit_trust(model, output="probabilities", validation_inputs=val_x, validation_labels=val_y, train_inputs=train_x,
                    train_labels=train_y, layers="penultimate", components=components, within=True, statistics=False,
                    energy=False, extent=True, directions=64)
    assert [m["kind"] for m in fit.typicality["members"]] == ["pca-residual", "pca-within", "mahalanobis", "extent"]
    assert fit.typicality["members"][2]["directions"] == 64
    assert fit.typicality["fit_options"]["extent"] and not fit.typicality["fit_options"]["energy"]
    assert not any(n.op_type == "Conv" for n in fit.model.graph.node)  # no statistics: no kernels to run
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731  the input view and the Gemm's input are both the picture
    subspace = typ.fit_subspace(flat(train_x), components, within=True).calibrated(flat(val_x))
    gaussians = typ.fit_gaussians(flat(train_x), train_y, 10, directions=64).calibrated(flat(val_x))
    assert gaussians.whitening.shape == (int(np.prod(shape)), 64)
    extent = typ.ExtentFit.on(flat(val_x), shape)
    framed = np.zeros((10, *shape), np.float32)
    framed[..., 3:-3, 3:-3] = val_x[:10, ..., 3:-3, 3:-3]  # the same pictures, nothing at the edges
    x = np.concatenate([val_x[:50], rng.random((20, *shape), dtype=np.float32), framed])
    expected = np.min([subspace.standardised(flat(x)), subspace.standardised_within(flat(x)),
                       gaussians.standardised(flat(x)), extent.standardised(flat(x))], axis=0)
    (typicality,) = run_outputs(fit.model, x, ["typicality"])
    np.testing.assert_allclose(typicality, expected, rtol=1e-3, atol=1e-2)
    assert (extent.standardised(flat(framed)) < -3).all()


def test_a_mahalanobis_member_in_its_least_varying_directions():
    """With every direction kept, `directions` gives the full distance; with fewer, the distance in the directions the
    features vary least in within their class, where a picture unlike the training pictures stands out most."""
    rng = np.random.default_rng(4)
    scales = np.linspace(0.1, 3.0, 12)
    labels = rng.integers(0, 3, 3000)
    features = rng.normal(size=(3000, 12)) * scales + np.eye(3, 12)[labels] * 5
    full = typ.fit_gaussians(features, labels, 3)
    others = rng.normal(size=(50, 12)) * scales
    np.testing.assert_allclose(typ.fit_gaussians(features, labels, 3, directions=12).score(others), full.score(others), rtol=1e-9)
    least = typ.fit_gaussians(features, labels, 3, directions=4)
    off_axis = np.zeros((1, 12))
    off_axis[0, 0] = 1.5  # far along the least varying feature (spread 0.1)
    assert least.score(off_axis)[0] < -100 and least.whitening.shape == (12, 4)


def test_the_outlier_head_weighs_each_group_of_inliers_alike_and_is_the_mean_of_its_networks():
    """A few photos beside thousands of clean pictures: weighed by their count, a small group of inliers lying towards
    the outliers hardly moves the boundary; weighed as a group (each group half the inlier side here), it moves it
    their way. The head folds its networks into one: its score is the mean of theirs."""
    from service.trust.outlier_head import fit_outlier_head

    rng = np.random.default_rng(3)
    clean = rng.normal(0.0, 1.0, (2000, 2))
    few = rng.normal(0.0, 0.3, (20, 2)) + [3.5, 0.0]
    outliers = rng.normal(0.0, 1.0, (2000, 2)) + [6.0, 0.0]
    unseen_few = rng.normal(0.0, 0.3, (200, 2)) + [3.5, 0.0]
    inliers = np.concatenate([clean, few])
    by_count = fit_outlier_head(inliers, outliers, hidden=16, heads=2)
    by_group = fit_outlier_head(inliers, outliers, hidden=16, heads=2, inlier_groups=np.r_[np.zeros(2000), np.ones(20)])
    # As measured: -1.54 by count, -0.53 as a group (the same seeds: only the weights differ).
    assert np.median(by_group.score(unseen_few)) > np.median(by_count.score(unseen_few)) + 0.5
    assert np.median(by_group.score(clean)) > 0 > np.median(by_group.score(outliers))
    assert by_group.w1.shape == (2, 16) and by_group.w2.shape == (16,)
    halves = [fit_outlier_head(inliers, outliers, hidden=8, heads=1, seed=seed, inlier_groups=np.r_[np.zeros(2000), np.ones(20)])
              for seed in (0, 1)]
    np.testing.assert_allclose(by_group.score(unseen_few), np.mean([h.score(unseen_few) for h in halves], axis=0), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="inlier groups"):
        fit_outlier_head(inliers, outliers, inlier_groups=np.zeros(5))


def test_the_outlier_head_in_the_graph_is_numpys_and_tells_outliers_from_training_pictures():
    """Outlier exposure: the head is fitted on the training pictures against pictures that are none of the classes
    (here pictures made of noise) and reads the last linear layer's input (this classifier has one) with the picture
    statistics. Alone in the score (no other member, no energy), the graph's typicality is numpy's standardised head
    score, and held-out noise pictures score far below held-out pictures of the classes."""
    from service.trust.outlier_head import fit_outlier_head

    shape = (1, 28, 28)
    model = make_classifier(seed=14, input_shape=("N", *shape))
    rng = np.random.default_rng(14)
    val_x, val_y = overconfident_data(shape, 14, 400)
    train_x, train_y = overconfident_data(shape, 15, 600)
    outliers = rng.random((600, *shape), dtype=np.float32)
    fit = fit_trust(model, output="probabilities", validation_inputs=val_x, validation_labels=val_y, train_inputs=train_x,
                    train_labels=train_y, layers="none", energy=False, outliers=outliers, outliers_description="noise")
    assert [m["kind"] for m in fit.typicality["members"]] == ["outlier-head"]
    assert fit.typicality["members"][0]["tensors"] == ["flat", "trust_picture_statistics"]
    assert fit.typicality["fit_options"]["outlier_exposure"]
    features = lambda x: np.concatenate([x.reshape(len(x), -1), typ.picture_statistics(x)], axis=1)  # noqa: E731
    head = fit_outlier_head(features(train_x), features(outliers)).calibrated(features(val_x))
    unseen_x, _ = overconfident_data(shape, 16, 100)
    unseen_noise = np.random.default_rng(16).random((100, *shape), dtype=np.float32)
    x = np.concatenate([unseen_x, unseen_noise])
    (typicality,) = run_outputs(fit.model, x, ["typicality"])
    np.testing.assert_allclose(typicality, head.standardised(features(x)), rtol=1e-3, atol=1e-2)
    assert np.median(typicality[100:]) < np.quantile(typicality[:100], 0.05)
