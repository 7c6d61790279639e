"""`python -m service import ... --calibration-data FOLDER`: the temperature and the typicality score fitted on a
folder of labelled pictures (made as uploads are), folded into the published graph, recorded in the card, and
served as `typicality` and `warnings`; bad folders are refused and nothing is published."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.model_import.calibration_data import MIN_TEST, MIN_VALIDATION, list_calibration_data
from service.model_import.cli import main as import_main
from tests.service.conftest import make_settings
from tests.service.imported_models import COLOURS, colour_classifier, colour_folder, colour_picture

SIDE = 8  # pictures are resized to 8x8: the typicality's principal subspace is fitted on 192 values


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """An over-confident colour classifier, its labels, a flat folder and a train/test folder of its pictures."""
    directory = tmp_path_factory.mktemp("calibration")
    onnx.save(colour_classifier(200.0, side=SIDE), directory / "colour.onnx")
    onnx.save(colour_classifier(200.0, side=SIDE, batch=4), directory / "colour-batch4.onnx")
    (directory / "labels.txt").write_text("\n".join(COLOURS) + "\n")
    colour_folder(directory / "flat", {c: 17 for c in COLOURS}, seed=1)
    colour_folder(directory / "no-blue", {"red": 20, "green": 20}, seed=4)  # blue: a label with no folder
    colour_folder(directory / "split" / "train", {c: 15 for c in COLOURS}, seed=2)
    colour_folder(directory / "split" / "test", {c: 16 for c in COLOURS}, seed=3)
    return directory


def run_import(sources: Path, repository: Path, folder: Path, *, model: str = "colour.onnx", labels: str = "labels.txt", name: str = "colour") -> int:
    return import_main([str(sources / model), "--name", name, "--labels", str(sources / labels), "--model-repository",
                        str(repository), "--method", "resize", "--calibration-data", str(folder)])


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al.'s ECE, written here from its definition: 15 equal-width confidence bins, (lo, hi]."""
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    total = 0.0
    for lo, hi in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:]):
        members = (confidence > lo) & (confidence <= hi)
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_flat_folder_calibrates_the_over_confident_model_and_the_card_records_it(sources, tmp_path, capsys):
    assert run_import(sources, tmp_path, sources / "flat") == 0
    said = capsys.readouterr().out
    assert "published colour version 1" in said and "pictures per label: red 17, green 17, blue 17" in said
    version = tmp_path / "colour" / "1"
    card = json.loads((version / "model.json").read_text())
    calibration, typicality = card["calibration"], card["typicality"]
    assert card["output"]["typicality"] == "typicality" and card["source"]["calibration_data"] == "flat"
    # 51 pictures: each class dealt alternately to test and validation, 26 and 25.
    assert calibration["measured_on"].startswith("26 pictures: the other half of each class of flat, shuffled with seed 0")
    assert calibration["fitted_on"].startswith("25 pictures: half of each class of flat")
    assert calibration["ece_bins"] == 15 and calibration["low_confidence_margin"] == 0.2
    assert calibration["temperature"] > 2  # logits scaled 200 times: the fit softens them
    assert calibration["ece_after"] < calibration["ece_before"] and calibration["nll_after"] < calibration["nll_before"]
    assert calibration["pictures_per_label"] == {"red": 17, "green": 17, "blue": 17}
    # No train/: the energy score alone, standardised on the validation half, thresholded on the test half.
    assert typicality["method"] == "energy" and typicality["fitted_on"] is None
    assert typicality["standardised_on"] == calibration["fitted_on"] and typicality["threshold_chosen_on"] == calibration["measured_on"]
    assert typicality["flagged_share"] <= 0.05 and isinstance(typicality["threshold"], float)

    # The ECE the card records is the one the published graph gives on the test pictures, made as uploads are.
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "typicality"]
    test = list_calibration_data(sources / "flat", list(COLOURS)).test.items
    x = np.stack([np.asarray(Image.open(path).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR), np.float32)
                  .transpose(2, 0, 1) / 255 for path, _ in test])
    served = session.run(["probabilities"], {"pixel_values": x})[0]
    labels = np.array([label for _, label in test])
    assert expected_calibration_error(served, labels) == pytest.approx(calibration["ece_after"], abs=2e-3)
    logits = ort.InferenceSession(str(sources / "colour.onnx"), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
    before = np.exp(logits - logits.max(1, keepdims=True))
    assert expected_calibration_error(before / before.sum(1, keepdims=True), labels) == pytest.approx(calibration["ece_before"], abs=2e-3)
    embedded = {p.key: p.value for p in onnx.load(str(version / "model.onnx")).metadata_props}
    assert json.loads(embedded["model_card"])["calibration"]["temperature"] == calibration["temperature"]
    # The reliability diagram beside the model, as training writes one: both lines drawn.
    diagram = np.asarray(Image.open(version / "reliability.png").convert("RGB"))
    assert diagram.shape == (400, 400, 3)
    drawn = {tuple(int(v) for v in pixel) for pixel in diagram.reshape(-1, 3)}
    assert {(200, 90, 40), (30, 90, 200)} <= drawn


def test_train_and_test_folders_fit_the_picture_member_and_serving_answers_typicality_and_warnings(sources, tmp_path):
    assert run_import(sources, tmp_path, sources / "split") == 0
    card = json.loads((tmp_path / "colour" / "1" / "model.json").read_text())
    typicality = card["typicality"]
    assert typicality["method"] == "pca-residual+picture-statistics+energy" and typicality["fitted_on"] == "45 pictures in split/train"
    # 45 training pictures span 44 directions: the residual keeps those (not 64, the rest being arbitrary).
    assert typicality["members"][0] == {"kind": "pca-residual", "tensor": "trust_input_view", "dimension": 3 * SIDE * SIDE, "components": 44}
    assert card["calibration"]["measured_on"].startswith("24 pictures: the other half of each class of split/test")
    assert card["calibration"]["pictures_per_label"] == {"red": 31, "green": 31, "blue": 31}

    rng = np.random.default_rng(7)
    typical = next(p for p in (colour_picture(0, rng) for _ in range(50)) if np.asarray(p)[..., 0].mean() > 200)
    noise = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    with TestClient(create_app(make_settings(tmp_path))) as client:
        upload = [("files", ("typical.png", png(typical), "image/png")), ("files", ("noise.png", png(noise), "image/png"))]
        answer = client.post("/v1/models/colour/predict/image", files=upload)
        assert answer.status_code == 200, answer.text
        first, second = answer.json()["predictions"]
        assert first["label"] == "red" and isinstance(first["typicality"], float)
        assert first["typicality"] > typicality["threshold"] and first["warnings"] == []
        assert second["typicality"] < typicality["threshold"]
        assert [w["code"] for w in second["warnings"]][:1] == ["out_of_distribution"]
        v2 = client.post("/v2/models/colour/infer", json={"inputs": [{
            "name": "pixel_values", "shape": [1, 3, SIDE, SIDE], "datatype": "FP32",
            "data": rng.uniform(0, 1, 3 * SIDE * SIDE).tolist()}]}).json()  # uniform noise: far from the training pictures
        assert len(v2["parameters"]["typicality"]) == 1 and v2["parameters"]["warnings"][0][0]["code"] == "out_of_distribution"
        page = client.post("/ui/api/predict", data={"model": "colour"}, files={"file": ("noise.png", png(noise), "image/png")}).json()
        assert page["typicality"] == pytest.approx(second["typicality"]) and "out_of_distribution" in [w["code"] for w in page["warnings"]]


def test_a_label_without_pictures_and_a_graph_with_a_fixed_batch(sources, tmp_path, capsys, monkeypatch):
    """A graph exported for batches of 4 is run in batches of 4 (the last one padded); blue has no folder."""
    assert run_import(sources, tmp_path, sources / "no-blue", model="colour-batch4.onnx") == 0
    assert "pictures per label: red 20, green 20, blue 0" in capsys.readouterr().out
    card = json.loads((tmp_path / "colour" / "1" / "model.json").read_text())
    assert card["calibration"]["pictures_per_label"]["blue"] == 0 and card["calibration"]["measured_on"].startswith("20 pictures")
    monkeypatch.chdir(sources / "no-blue")  # the folder given as ".": the card names it by its own name
    assert run_import(sources, tmp_path, Path("."), name="dynamic") == 0  # the same graph, any batch
    dynamic = json.loads((tmp_path / "dynamic" / "1" / "model.json").read_text())
    assert dynamic["source"]["calibration_data"] == "no-blue" and "of each class of no-blue" in dynamic["calibration"]["measured_on"]
    for section, key in (("calibration", "temperature"), ("calibration", "ece_after"), ("typicality", "threshold")):
        assert card[section][key] == pytest.approx(dynamic[section][key], abs=1e-4)


def refuse(sources: Path, repository: Path, folder: Path, capsys, **options) -> str:
    assert run_import(sources, repository, folder, **options) == 2
    assert not (repository / "colour").exists()  # nothing published, not even the model's folder
    return capsys.readouterr().err


def test_a_folder_that_matches_no_label_is_refused(sources, tmp_path, capsys):
    folder = colour_folder(tmp_path / "pictures", {"red": 20, "green": 20, "cyan": 3})
    said = refuse(sources, tmp_path / "models", folder, capsys)
    assert "refused" in said and "'cyan' that match no label" in said and "'red', 'green', 'blue'" in said


def test_too_few_pictures_are_refused_saying_how_many_are_needed(sources, tmp_path, capsys):
    folder = colour_folder(tmp_path / "pictures", {"red": 10, "green": 9})
    said = refuse(sources, tmp_path / "models", folder, capsys)
    assert f"need at least {MIN_VALIDATION} pictures each (pictures is split in two, so it needs {MIN_VALIDATION + MIN_TEST})" in said
    assert "validation has 9; test has 10" in said and "red 10, green 9, blue 0" in said
    split = tmp_path / "split"
    colour_folder(split / "val", {"red": 12, "green": 12}), colour_folder(split / "test", {"red": 8, "green": 8})
    said = refuse(sources, tmp_path / "models", split, capsys)
    assert "test has 16" in said and "validation" not in said.split("The")[0] and "(given as val/ and test/)" in said
    colour_folder(split / "train", {"red": 3, "green": 3}), colour_folder(split / "test", {"red": 30, "green": 30})
    said = refuse(sources, tmp_path / "models", split, capsys)
    assert "train has 6" in said and "train/ at least 20" in said


def test_a_file_that_is_not_a_picture_is_named(sources, tmp_path, capsys):
    folder = colour_folder(tmp_path / "pictures", {c: 15 for c in COLOURS})
    (folder / "green" / "notes.txt").write_text("not a picture")
    (folder / "blue" / ".DS_Store").write_bytes(b"\0\1")  # hidden files are passed over
    said = refuse(sources, tmp_path / "models", folder, capsys)
    assert "1 file(s) in" in said and "pictures/green/notes.txt (not a picture" in said


def test_train_without_held_out_pictures_and_a_single_label_are_refused(sources, tmp_path, capsys):
    only_train = colour_folder(tmp_path / "only" / "train", {c: 15 for c in COLOURS}).parent
    assert "has only train/" in refuse(sources, tmp_path / "models", only_train, capsys)
    one_label = colour_folder(tmp_path / "one", {"red": 45})
    assert "pictures of 1 label(s); calibration needs pictures of at least 2" in refuse(sources, tmp_path / "models", one_label, capsys)
    assert "is not a folder" in refuse(sources, tmp_path / "models", tmp_path / "missing", capsys)


def test_a_fit_that_fails_publishes_nothing(sources, tmp_path, capsys, monkeypatch):
    import service.trust.fit

    def fails(*args, **kwargs):
        raise RuntimeError("folding the temperature changed a top class; refusing to publish")

    monkeypatch.setattr(service.trust.fit, "fit_trust", fails)
    said = refuse(sources, tmp_path / "models", sources / "flat", capsys)
    assert "fitting the calibration on" in said and "RuntimeError: folding the temperature changed a top class" in said
