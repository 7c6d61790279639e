"""Imported colour models served by `python -m service`: uploads against an independent reference pipeline
(within 0.01), v2 with tritonclient on the model's own input tensor (within 1e-4), v1 tensors in the model's
shape, and the limits, web page, reload, metrics and API key for these models as for the digits."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.model_import.cli import main as import_main
from tests.onnx_models import make_small_convnet
from tests.service.conftest import ServerProcess, make_settings
from tests.service.imported_models import (
    Imported,
    Recipe,
    build_models,
    encode,
    jpeg_turned,
    photo,
    reference_pixels,
    reference_run,
    reference_tensor,
)

UPLOAD_TOLERANCE = 0.01  # the bound for photo uploads; the measured differences are printed
TENSOR_TOLERANCE = 1e-4
V2_DATATYPES = {np.float32: "FP32", np.float16: "FP16"}
NORMALISED = {"hf-clip", "timm-nhwc"}  # the models whose cards give mean and std


def import_all(root: Path, sources: Path) -> list:
    models = build_models(sources)
    for model in models:
        assert import_main([str(model.onnx_path), "--name", model.name, "--model-repository", str(root), *model.args]) == 0
    return models


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    base = tmp_path_factory.mktemp("imported")
    root = base / "models"
    return root, import_all(root, base / "sources")


@pytest.fixture(scope="module")
def server(imported):
    process = ServerProcess(imported[0])
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def pictures() -> dict[str, bytes]:
    rgba = photo(500, 400, seed=3, mode="RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 500, dtype=np.uint8), (400, 1))))
    return {
        "photo.jpg": encode(photo(640, 480, seed=1), "JPEG", quality=90),
        "turned.jpg": jpeg_turned(photo(480, 640, seed=2)),
        "photo.png": encode(photo(640, 480, seed=4), "PNG"),
        "transparent.png": encode(rgba, "PNG"),
        "large.jpg": encode(photo(2400, 1800, seed=5), "JPEG", quality=90),
    }


def test_uploads_answer_the_reference_pipelines_probabilities(server, imported):
    _, models = imported
    files = pictures()
    worst = {}
    for model in models:
        expected = reference_run(model, np.concatenate([reference_tensor(data, model.recipe) for data in files.values()]))
        upload = [("files", (name, data, "image/jpeg" if name.endswith("jpg") else "image/png")) for name, data in files.items()]
        response = httpx.post(f"{server.url}/v1/models/{model.name}/predict/image", files=upload, params={"top_k": 2}, timeout=60)
        assert response.status_code == 200, response.text
        answer = response.json()
        labels = list(answer["predictions"][0]["probabilities"])
        served = np.array([[p["probabilities"][label] for label in labels] for p in answer["predictions"]])
        worst[model.name] = float(np.abs(served - expected).max())
        assert worst[model.name] < UPLOAD_TOLERANCE, (model.name, worst)
        assert [p["label"] for p in answer["predictions"]] == [labels[i] for i in expected.argmax(axis=1)]
        assert len(answer["predictions"][0]["top"]) == 2
    print("largest difference from the reference, per model:", worst)


def test_base64_pictures_answer_as_uploads_do(server, imported):
    _, models = imported
    data = pictures()["turned.jpg"]
    for model in models:
        body = {"instances": [{"image_base64": base64.b64encode(data).decode()}], "top_k": 1}
        answer = httpx.post(f"{server.url}/v1/models/{model.name}/predict", json=body, timeout=30).json()
        expected = reference_run(model, reference_tensor(data, model.recipe))[0]
        served = np.array(list(answer["predictions"][0]["probabilities"].values()))
        assert np.abs(served - expected).max() < UPLOAD_TOLERANCE


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_with_tritonclient_on_the_models_own_tensor(server, imported, binary):
    _, models = imported
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    try:
        for model in models:
            metadata = client.get_model_metadata(model.name)
            (tensor,), (output,) = metadata["inputs"], metadata["outputs"]
            assert tensor["name"] == model.input_name and tensor["datatype"] == V2_DATATYPES[model.recipe.dtype]
            x = np.concatenate([reference_tensor(data, model.recipe) for data in list(pictures().values())[:3]])
            assert tensor["shape"] == [-1, *x.shape[1:]]
            request = triton.InferInput(model.input_name, list(x.shape), tensor["datatype"])
            request.set_data_from_numpy(x, binary_data=binary)
            result = client.infer(model.name, [request], outputs=[triton.InferRequestedOutput(output["name"], binary_data=binary)])
            served = result.as_numpy(output["name"])
            np.testing.assert_allclose(served, reference_run(model, x), atol=TENSOR_TOLERANCE)
            if model.name in NORMALISED:  # a normalised input: any tensor of its scale, noise too
                noise = np.random.default_rng(1).normal(size=x.shape).astype(model.recipe.dtype)
                request.set_data_from_numpy(noise, binary_data=binary)
                served = client.infer(model.name, [request]).as_numpy(output["name"])
                np.testing.assert_allclose(served, reference_run(model, noise), atol=TENSOR_TOLERANCE)
    finally:
        client.close()


def test_v2_uint8_pictures_are_scaled_as_the_card_says(server, imported):
    _, models = imported
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        for model in models:
            data = pictures()["photo.png"]
            pixels = reference_pixels(data, model.recipe).astype(np.uint8)
            raw = (pixels.transpose(2, 0, 1) if model.recipe.layout == "NCHW" else pixels)[np.newaxis]
            request = triton.InferInput(model.input_name, list(raw.shape), "UINT8")
            request.set_data_from_numpy(raw)
            served = client.infer(model.name, [request]).as_numpy(client.get_model_metadata(model.name)["outputs"][0]["name"])
            expected = reference_run(model, reference_tensor(data, model.recipe))
            np.testing.assert_allclose(served, expected, atol=1e-3 if model.recipe.dtype == np.float16 else TENSOR_TOLERANCE)
    finally:
        client.close()


def test_v1_tensors_in_the_models_own_shape_or_flat(server, imported):
    _, models = imported
    for model in models:
        x = reference_tensor(pictures()["photo.png"], model.recipe).astype(np.float32)
        expected = reference_run(model, x.astype(model.recipe.dtype))[0]
        for instance in (x[0].tolist(), x[0].ravel().tolist()):
            response = httpx.post(f"{server.url}/v1/models/{model.name}/predict", json={"instances": [instance, instance]}, timeout=30)
            assert response.status_code == 200, response.text
            served = np.array(list(response.json()["predictions"][1]["probabilities"].values()))
            np.testing.assert_allclose(served, expected, atol=1e-3 if model.recipe.dtype == np.float16 else TENSOR_TOLERANCE)
        wrong = httpx.post(f"{server.url}/v1/models/{model.name}/predict", json={"instances": [[0.5] * 784]})
        assert wrong.status_code == 422 and f"a flat list of {x[0].size} values" in wrong.json()["error"]["message"]
    clip = models[0]
    beyond = np.full((3, 24, 32), 9.0).tolist()  # far outside what CLIP's normalisation of 0..255 pixels can make
    refused = httpx.post(f"{server.url}/v1/models/{clip.name}/predict", json={"instances": [beyond]}).json()["error"]["message"]
    assert "hold values from 9 to 9" in refused and "lies in [-1.79" in refused
    # A normalised tensor from elsewhere (here: noise) is taken as sent, a little beyond what pictures make.
    noise = np.random.default_rng(0).normal(size=(1, 3, 24, 32)).astype(np.float32)
    noise[0, 0, 0, 0] = 3.5
    answer = httpx.post(f"{server.url}/v1/models/{clip.name}/predict", json={"instances": noise.tolist()}).json()
    np.testing.assert_allclose(list(answer["predictions"][0]["probabilities"].values()), reference_run(clip, noise)[0], atol=TENSOR_TOLERANCE)


def test_the_digit_models_serve_unchanged_beside_them(server, imported):
    # The shipped digits are not in this repository; the 28x28 path still takes its JSON fast path shapes.
    response = httpx.post(f"{server.url}/v1/models/hf-clip/predict", json={"instances": [[[0.0] * 28] * 28]})
    assert response.status_code == 422


def test_limits_scale_with_the_picture_size(imported, tmp_path):
    root, models = imported
    # A budget of three 3x24x32 float32 pictures: four are refused for that model, more for the 16x16 one.
    budget = 3 * 3 * 24 * 32 * 4
    upload = [("files", (f"{i}.png", pictures()["photo.png"], "image/png")) for i in range(4)]
    with TestClient(create_app(make_settings(root, max_request_tensor_bytes=budget))) as client:
        refused = client.post("/v1/models/hf-clip/predict/image", files=upload)
        assert refused.status_code == 422 and "at most 3 are accepted" in refused.json()["error"]["message"]
        assert client.post("/v1/models/flags-fp16/predict/image", files=upload).status_code == 200
    with TestClient(create_app(make_settings(root, max_request_tensor_bytes=budget, max_body_bytes=4096))) as client:
        # The body limit grows with the pictures (here 4096 x 2304 / 784 bytes): one CLIP picture as JSON passes 4096.
        body = json.dumps({"instances": np.zeros((1, 3, 24, 32)).tolist()})
        assert len(body) > 4096 and client.post("/v1/models/hf-clip/predict", content=body).status_code == 200
        assert client.post("/v1/models/nope/predict", content=body).status_code == 413


def test_the_web_page_follows_the_card(imported):
    root, models = imported
    data = pictures()["turned.jpg"]
    with TestClient(create_app(make_settings(root))) as client:
        page = client.get("/").text
        assert "hf-clip v1 · 32×24 colour" in page and "grey-letterbox v1 · 30×20 grey" in page
        assert 'data-drawable="false"' in page and 'data-drawable="true"' not in page
        answer = client.post("/ui/api/predict", data={"model": "hf-clip"}, files={"file": ("t.jpg", data, "image/jpeg")}).json()
        seen = Image.open(io.BytesIO(base64.b64decode(answer["input_png"].partition(",")[2])))
        assert seen.mode == "RGB" and seen.size == (32, 24) and answer["input_size"] == [24, 32]
        difference = np.abs(np.asarray(seen, dtype=float) - reference_pixels(data, models[0].recipe))
        assert difference.mean() < 1.0  # the JPEG is decoded at a reduced scale: a grey level at most, on average
        assert [t["label"] for t in answer["top"]][:1] == [answer["label"]] and len(answer["top"]) == 5
        grey = client.post("/ui/api/predict", data={"model": "grey-letterbox"}, files={"file": ("t.jpg", data, "image/jpeg")}).json()
        assert Image.open(io.BytesIO(base64.b64decode(grey["input_png"].partition(",")[2]))).mode == "L"
        form = client.post("/", data={"model": "timm-nhwc"}, files={"file": ("t.jpg", data, "image/jpeg")})
        assert form.status_code == 200 and "What the model saw (32&times;32)" in form.text


def test_reload_metrics_and_api_key_work_for_imported_models(imported, tmp_path):
    root, models = imported
    repository = tmp_path / "models"
    clip = models[0]
    assert import_main([str(clip.onnx_path), "--name", "clip", "--model-repository", str(repository), *clip.args]) == 0
    upload = {"file": ("p.png", pictures()["photo.png"], "image/png")}
    with TestClient(create_app(make_settings(repository, api_key="secret"))) as client:
        assert client.post("/v1/models/clip/predict/image", files=upload).status_code == 401
        headers = {"X-API-Key": "secret"}
        assert client.post("/v1/models/clip/predict/image", files=upload, headers=headers).json()["version"] == 1
        assert import_main([str(clip.onnx_path), "--name", "clip", "--model-repository", str(repository), *clip.args]) == 0
        assert client.post("/v1/models/clip/reload", headers=headers).json()["default_version"] == 2
        assert client.post("/v1/models/clip/predict/image", files=upload, headers=headers).json()["version"] == 2
        metrics = client.get("/metrics").text
        assert 'model="clip"' in metrics and 'version="2"' in metrics


def test_a_convnet_at_224_with_a_convnext_config_answers_the_reference(tmp_path):
    """A ResNet-shaped model at 224x224 and Hugging Face's ConvNeXt rule (shortest_edge 224, crop_pct 0.875: shorter
    side to 256, centre 224), photos large enough to be decoded at a reduced scale."""
    onnx.save(make_small_convnet(seed=5), tmp_path / "convnet.onnx")
    (tmp_path / "labels.txt").write_text("\n".join(f"class {i}" for i in range(10)))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "crop_pct": 0.875, "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "ConvNextImageProcessor", "image_std": [0.229, 0.224, 0.225], "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224},
    }))
    root = tmp_path / "models"
    assert import_main([str(tmp_path / "convnet.onnx"), "--name", "convnet", "--model-repository", str(root),
                        "--labels", str(tmp_path / "labels.txt"), "--config", str(tmp_path / "preprocessor_config.json")]) == 0
    model = Imported("convnet", tmp_path / "convnet.onnx", "pixel_values",
                     Recipe(("shorter", 256), (224, 224), True, Image.Resampling.BICUBIC, 1 / 255,
                            [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "NCHW"))
    files = {"big.jpg": encode(photo(2400, 1800, seed=8), "JPEG", quality=90), "turned.jpg": jpeg_turned(photo(480, 640, seed=9)),
             "photo.png": encode(photo(640, 480, seed=10), "PNG")}
    expected = reference_run(model, np.concatenate([reference_tensor(data, model.recipe) for data in files.values()]))
    with TestClient(create_app(make_settings(root))) as client:
        answer = client.post("/v1/models/convnet/predict/image", files=[("files", (n, d, "image/jpeg")) for n, d in files.items()]).json()
    served = np.array([list(p["probabilities"].values()) for p in answer["predictions"]])
    difference = np.abs(served - expected).max(axis=1)
    print("convnet at 224, largest difference per picture:", dict(zip(files, difference.round(6))))
    assert difference.max() < UPLOAD_TOLERANCE and difference[2] < 1e-5  # the PNG is decoded in full: the same numbers
