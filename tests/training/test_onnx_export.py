import copy
import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tests.training.synthetic_data import synthetic_images

from training import pipeline
from service.model_import.publish import CARD_METADATA_KEY, next_version, publish
from training.export import ExportRefused, check_parity, export_onnx
from training.models import build_model
from training.train import TrainConfig

IMAGES, _ = synthetic_images(600, seed=9)


@pytest.fixture(scope="module")
def convnet():
    torch.manual_seed(0)
    model = build_model("convnet", channels=(4, 8), hidden=(16,))
    model.normalize.mean.fill_(0.2)
    model.normalize.std.fill_(0.3)
    model.train()
    with torch.no_grad():  # give batch norm non-trivial running statistics
        model(torch.rand(64, 1, 28, 28))
    return model.eval()


def test_graph_contract(convnet):
    proto = export_onnx(convnet)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] >= 17
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert graph_input.name == "input" and graph_output.name == "probabilities"
    in_dims = graph_input.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and [d.dim_value for d in in_dims[1:]] == [1, 28, 28]
    out_dims = graph_output.type.tensor_type.shape.dim
    assert out_dims[0].dim_param == in_dims[0].dim_param and out_dims[1].dim_value == 10
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 33):
        (probabilities,) = session.run(None, {"input": np.random.rand(batch, 1, 28, 28).astype(np.float32)})
        assert probabilities.shape == (batch, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_parity_passes_for_a_faithful_export(convnet):
    probabilities = check_parity(export_onnx(convnet), convnet, IMAGES)
    with torch.no_grad():
        expected = torch.softmax(convnet(torch.from_numpy(IMAGES).float().div(255).unsqueeze(1)), 1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_parity_refuses_a_graph_that_differs(convnet):
    drifted = copy.deepcopy(convnet)
    with torch.no_grad():
        drifted.classifier[-1].bias[3] += 0.05  # a small change: argmax mostly the same, probabilities not
    with pytest.raises(ExportRefused, match=r"disagree on 600 images: max abs difference"):
        check_parity(export_onnx(drifted), convnet, IMAGES)


def test_parity_needs_512_images(convnet):
    with pytest.raises(ExportRefused, match="at least 512 images, got 100"):
        check_parity(export_onnx(convnet), convnet, IMAGES[:100])


def test_a_broken_export_publishes_nothing(monkeypatch, mnist_t10k_dir, tmp_path):
    real_export = pipeline.export_onnx

    def export_something_else(classifier):
        other = copy.deepcopy(classifier)
        with torch.no_grad():
            other.linear.weight.mul_(1.5)
        return real_export(other)

    monkeypatch.setattr(pipeline, "export_onnx", export_something_else)
    models_dir = tmp_path / "models"
    with pytest.raises(ExportRefused):
        pipeline.train_and_publish(
            dataset="mnist", arch="softmax", name="broken", models_dir=models_dir,
            config=TrainConfig(epochs=1, threads=1), data_dir=mnist_t10k_dir, limit_train=500, progress=False,
        )
    assert not models_dir.exists() or list(models_dir.iterdir()) == []


def test_publish_takes_the_next_free_version_and_ignores_other_folders(convnet, tmp_path):
    proto = export_onnx(convnet)
    card = {"name": "m", "onnx": {"file": "model.onnx", "opset": 18}}
    root = tmp_path / "m"
    for name in (".tmp-leftover", "latest", "0", "007x"):
        (root / name).mkdir(parents=True)
    assert publish(tmp_path, "m", proto, card).name == "1"
    (root / "5").mkdir()
    assert next_version(root) == 6
    assert publish(tmp_path, "m", proto, card).name == "6"
    assert json.loads((root / "6" / "model.json").read_text())["version"] == 6
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-")) == [".tmp-leftover"]


def test_a_failure_while_publishing_leaves_nothing(convnet, tmp_path):
    def failing_extras(directory):
        (directory / "report.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish(tmp_path, "m", export_onnx(convnet), {"name": "m", "onnx": {"file": "model.onnx"}}, failing_extras)
    assert list(tmp_path.iterdir()) == []


CARD_KEYS = {"name", "version", "task", "classes", "architecture", "input", "output", "preprocessing",
             "metrics", "training", "onnx", "created_at"}


def test_card_fields_and_sha256(published_model):
    card = json.loads((published_model / "model.json").read_text())
    assert CARD_KEYS <= card.keys()
    assert card["name"] == "digits-softmax" and card["version"] == 1 and card["task"] == "digits"
    assert card["classes"] == [str(d) for d in range(10)]
    assert card["input"] == {"name": "input", "shape": ["N", 1, 28, 28], "dtype": "float32",
                             "range": [0.0, 1.0], "polarity": "white-on-black"}
    assert card["output"] == {"name": "probabilities", "shape": ["N", 10], "dtype": "float32",
                              "activation": "softmax", "typicality": "typicality"}
    # Training fits calibration (validation split) and typicality (training split), measured on the test split.
    assert card["calibration"]["temperature"] > 0 and card["calibration"]["ece_bins"] == 15
    assert card["calibration"]["accuracy"] == pytest.approx(card["metrics"]["test_accuracy"], abs=5e-4)
    assert card["typicality"]["output"] == "typicality" and card["typicality"]["flagged_share"] <= 0.05
    assert card["preprocessing"]["method"] == "mnist-digit"
    assert card["architecture"]["arch"] == "softmax" and card["architecture"]["parameters"] == 7850
    metrics = card["metrics"]
    assert metrics["test_split"] == "mnist t10k images 8000-8599" and metrics["test_size"] == 600
    assert 0.6 < metrics["test_accuracy"] <= 1 and set(metrics["per_class_accuracy"]) == set(card["classes"])
    training = card["training"]
    assert training["dataset"] == "mnist" and training["epochs"] == 1 and training["seed"] == 0
    assert training["wall_time_s"] >= 0 and training["library_versions"]["torch"] == torch.__version__
    assert card["onnx"]["opset"] >= 17
    assert card["onnx"]["sha256"] == hashlib.sha256((published_model / "model.onnx").read_bytes()).hexdigest()
    embedded = {p.key: p.value for p in onnx.load(published_model / "model.onnx").metadata_props}
    without_hash = {"file": "model.onnx", "opset": card["onnx"]["opset"]}
    assert json.loads(embedded[CARD_METADATA_KEY]) == {**card, "onnx": without_hash}


def test_report_and_plots_beside_the_model(published_model):
    report = json.loads((published_model / "report.json").read_text())
    card = json.loads((published_model / "model.json").read_text())
    matrix = np.array(report["test"]["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 600
    assert report["test"]["accuracy"] == pytest.approx(np.trace(matrix) / 600)
    assert report["test"]["accuracy"] == pytest.approx(card["metrics"]["test_accuracy"], abs=5e-5)
    for plot in ("learning_curves.png", "confusion_matrix.png", "misclassified.png", "reliability.png"):
        data = (published_model / plot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 200_000
