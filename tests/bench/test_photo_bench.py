"""The big-model benchmark's harness, on a tiny photo model of the same interface (224x224 RGB, ImageNet
mean / std, resize-crop 256): publishing, the reference pipeline, the naive photo app, the floor,
`serving.py --model` in photo mode and the Image.draft measurement."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import jpeg_draft  # noqa: E402
import model_floor  # noqa: E402
import resnet18  # noqa: E402
from photo_inputs import (  # noqa: E402
    CardInput, multipart, reference_input, same_top, sample_photos, top_of_answer,
)

pytestmark = pytest.mark.slow
CLASSES = 12


def tiny_photo_model() -> onnx.ModelProto:
    """input [N, 3, 224, 224] -> 4x4 average pool grid -> dense -> softmax: cheap, but it sees the whole picture."""
    weights = np.random.default_rng(0).normal(0, 2.0, (3 * 4 * 4, CLASSES)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[56, 56], strides=[56, 56]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    card = resnet18.card(parameters=3 * 16 * CLASSES, parity=0.0)
    card.update(name="tiny-photo", classes=[f"class-{i:03d}" for i in range(CLASSES)])
    card["output"]["shape"] = ["N", CLASSES]
    repository = tmp_path_factory.mktemp("repository")
    return resnet18.publish(repository, card["name"], tiny_photo_model(), card)


def test_publish_writes_a_complete_version_with_its_hash(tiny_model_dir):
    import hashlib

    assert tiny_model_dir.name == "1" and not [p for p in tiny_model_dir.parent.iterdir() if p.name.startswith(".")]
    card = json.loads((tiny_model_dir / "model.json").read_text())
    assert card["version"] == 1
    assert card["onnx"]["sha256"] == hashlib.sha256((tiny_model_dir / "model.onnx").read_bytes()).hexdigest()
    assert card["input"] | {"mean": None} == {
        "name": "input", "layout": "NCHW", "channels": 3, "color_order": "RGB", "height": 224, "width": 224,
        "dtype": "float32", "range": [0.0, 1.0], "mean": None, "std": [0.229, 0.224, 0.225],
        "shape": ["N", 3, 224, 224],
    }
    assert card["preprocessing"] | {"description": ""} == {
        "method": "resize-crop", "resize_shorter": 256, "interpolation": "bilinear", "description": ""}
    embedded = {p.key: p.value for p in onnx.load(tiny_model_dir / "model.onnx").metadata_props}
    assert json.loads(embedded["model_card"])["name"] == "tiny-photo"
    assert resnet18.publish(tiny_model_dir.parent.parent, card["name"], tiny_photo_model(), card).name == "2"
    shutil.rmtree(tiny_model_dir.parent / "2")


def test_resnet18_has_resnet18s_size():
    model = resnet18.ResNet18()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's resnet18


def test_reference_pipeline_follows_the_card():
    card = CardInput.from_card(resnet18.card(1, 0.0))
    jpeg = sample_photos(1)[0]
    from PIL import Image
    import io

    picture = Image.open(io.BytesIO(jpeg))
    assert picture.size == (640, 480) and picture.format == "JPEG"
    x = reference_input(jpeg, card)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    # By hand: 640x480 -> 341x256, the centre 224x224 starts at (58, 16).
    resized = picture.convert("RGB").resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240))
    pixels = np.asarray(resized, np.float32) / 255
    expected = ((pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    np.testing.assert_allclose(x[0], expected, atol=1e-5)
    # A model that takes raw pixels NHWC (a uint8 input, as TensorFlow-style exports do) gets them as they are.
    raw = CardInput.from_card({**resnet18.card(1, 0.0), "input": {**resnet18.card(1, 0.0)["input"],
                                                                   "layout": "NHWC", "dtype": "uint8"}})
    np.testing.assert_array_equal(reference_input(jpeg, raw)[0], np.asarray(resized))


def test_same_top_is_strict_about_labels_and_probabilities():
    probabilities = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    classes = list("abcde")
    assert same_top([("a", 0.5), ("b", 0.2)], probabilities, classes, 2, 0.01)
    assert same_top([("a", 0.505), ("b", 0.195)], probabilities, classes, 2, 0.01)
    assert not same_top([("a", 0.5), ("c", 0.15)], probabilities, classes, 2, 0.01)  # not among the best 2
    assert not same_top([("a", 0.45), ("b", 0.2)], probabilities, classes, 2, 0.01)  # probability off
    assert not same_top([("a", 0.5)], probabilities, classes, 2, 0.01)  # too few
    assert not same_top([("a", 0.5), ("z", 0.2)], probabilities, classes, 2, 0.01)  # unknown label


def test_naive_photo_app_answers_the_reference(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("BENCH_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.syspath_prepend(str(BENCH / "baselines"))
    sys.modules.pop("naive_photo", None)
    import naive_photo
    from fastapi.testclient import TestClient

    card = json.loads((tiny_model_dir / "model.json").read_text())
    session = ort.InferenceSession(str(tiny_model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    with TestClient(naive_photo.app) as client:
        for jpeg in sample_photos(3):
            body, content_type = multipart(jpeg)
            response = client.post("/v1/models/tiny-photo/predict/image?top_k=5", content=body,
                                   headers={"content-type": content_type})
            assert response.status_code == 200
            expected = session.run(None, {"input": reference_input(jpeg, CardInput.from_card(card))})[0][0]
            assert same_top(top_of_answer(response.content), expected, card["classes"], 5, 1e-5)


def test_floor_measures_both_layouts(tiny_model_dir):
    result = model_floor.floor(tiny_model_dir, cores=2, batch_sizes=[1, 4], duration=0.2)
    layouts = {(p["layout"], p["batch"]) for p in result["points"]}
    assert layouts == {("1 process x 2 threads", 1), ("2 processes x 1 thread", 1),
                       ("1 process x 2 threads", 4), ("2 processes x 1 thread", 4)}
    assert all(p["images_per_s"] > 0 and p["cpu_ms_per_image"] > 0 for p in result["points"])
    assert result["best"]["images_per_s"] == max(p["images_per_s"] for p in result["points"])


def test_the_floor_is_the_best_median_over_rounds_not_the_best_single_point():
    def point(batch, rate):
        return {"layout": "2 processes x 1 thread", "batch": batch, "images_per_s": rate, "ms_per_batch": 1000 * batch / rate,
                "cpu_ms_per_image": 2000 / rate}
    # Batch 8 had one lucky round (50): its median (38) is below batch 1's (41), so batch 1 is the floor.
    rounds = [[point(1, 40), point(8, 50)], [point(1, 41), point(8, 38)], [point(1, 42), point(8, 36)]]
    result = model_floor.summarise(rounds, cores=2, duration=1.0)
    assert [p["images_per_s"] for p in result["points"]] == [41, 38]
    assert (result["best"]["batch"], result["best"]["images_per_s"]) == (1, 41)
    assert result["rounds"] == rounds


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (Debian package wrk)")
def test_serving_benchmark_drives_uploads_in_photo_mode(tiny_model_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCH / "serving.py"), "--repository", str(tiny_model_dir.parent.parent),
         "--model", "tiny-photo", "--only", "naive-photo,floor", "--rounds", "1", "--duration", "1", "--warmup", "1",
         "--connections", "1,4", "--floor-batch-sizes", "1,2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "serving-tiny-photo.json").read_text())
    (series,) = report["series"]
    assert series["server"] == "naive-photo" and series["protocol"] == "upload" and series["workers"] == 2
    assert [p["connections"] for p in series["points"]] == [1, 4]
    assert all(p["requests"] > 0 and not p["errors"] for p in series["points"])
    assert report["floor"]["best"]["images_per_s"] > 0
    assert set(report["preprocessing_cost"]) == {"decode_ms", "resize_ms", "to_tensor_ms"}
    assert [t["met"] for t in report["targets"]] == [None, None, None, None]  # pixelserve not run
    markdown = (tmp_path / "serving-tiny-photo.md").read_text()
    assert "naive FastAPI + Pillow + ONNX Runtime" in markdown and "The model's floor" in markdown
    assert (tmp_path / "serving-tiny-photo.png").stat().st_size > 0


def test_draft_measurement(tiny_model_dir, tmp_path):
    assert jpeg_draft.main(["--model-dir", str(tiny_model_dir), "--pictures", "2", "--repeats", "2",
                            "--out", str(tmp_path / "draft.json")]) == 0
    result = json.loads((tmp_path / "draft.json").read_text())
    pillow = result["640x480, draft to the resize target (Pillow's choice)"]
    assert pillow["decoded"] == ["640x480 -> 640x480"] and pillow["max_input_difference"] == 0.0
    forced = result["640x480, forced to 1/2 scale (draft to 320x240)"]
    assert forced["decoded"] == ["640x480 -> 320x240"] and forced["max_input_difference"] > 0
    assert result["1280x960, draft to the resize target (1/2 scale)"]["decoded"] == ["1280x960 -> 640x480"]


@pytest.mark.filterwarnings("ignore:Duplicate provider")  # the CPU provider named twice, standing in for CUDA
def test_the_gpu_check_runs_a_photo_model_on_photos_made_as_uploads_are(tiny_model_dir, monkeypatch):
    """bench/gpu.py on a photo model, with the CPU provider standing in for CUDA (no GPU here): photos made into
    the model's input by the service's own preprocessing, both sessions agreeing, and a report that says there
    are no labels. On a GPU host the same code compares CUDA with the CPU."""
    import gpu
    from service.config import Settings

    monkeypatch.setattr(gpu, "CUDA", "CPUExecutionProvider")
    monkeypatch.setattr(gpu, "PHOTO_BATCH_SIZES", (1, 4))
    monkeypatch.setattr(gpu, "NEW_BATCH_SIZES", (2, 3))
    card = json.loads((tiny_model_dir / "model.json").read_text())
    x = gpu.photo_inputs(card, count=7)
    assert x.shape == (7, 3, 224, 224) and x.dtype == np.float32 and len({a.tobytes() for a in x}) == 7
    result = gpu.check_model(tiny_model_dir, {}, Settings(model_repository=tiny_model_dir.parent.parent))
    assert result["ok"] and result["test_images"] == gpu.PHOTO_INPUTS and result["accuracy"]["cpu"] is None
    assert result["max_probability_difference"]["cuda"] == 0.0 and sorted(result["seconds_per_run"]["cpu"]) == [1, 4]
    report = {"command": "python bench/gpu.py", "resolved_providers": ["CPUExecutionProvider"], "models": [result],
              "machine": {"gpu": "none", "cpu": "cpu", "cores": 2, "python": "3.11", "onnxruntime": "test"}}
    assert "| photos, no labels |" in gpu.markdown(report)
