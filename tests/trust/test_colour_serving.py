"""Trust on a colour model the generalised card describes: an NHWC classifier answering logits, fitted with
`fit_trust` on its own tensors, served with typicality, warnings and an explanation at its input size."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
from fastapi.testclient import TestClient
from onnx import TensorProto

from service.app import create_app
from service.trust import calibration as cal
from service.trust.fit import fit_trust, run_outputs
from tests.onnx_models import make_photo_classifier
from tests.service.conftest import make_settings
from tests.service.imported_models import photo
from tests.service.test_model_card import photo_card


def test_a_colour_nhwc_logits_model_serves_typicality_warnings_and_explanations(tmp_path):
    model = make_photo_classifier(layout="NHWC", height=24, width=32, dtype=TensorProto.FLOAT)
    rng = np.random.default_rng(0)
    # The model's own pictures: smooth colour fields around mid-grey, normalised as the card says.
    x = (rng.normal(0.0, 0.3, (900, 1, 1, 3)) + rng.normal(0.0, 0.05, (900, 24, 32, 3))).astype(np.float32)
    (logits,) = run_outputs(model, x, ["logits"])
    labels = np.array([rng.choice(5, p=row) for row in cal.softmax(logits, 2.0)])
    fit = fit_trust(model, output="logits", kind="logits", validation_inputs=x[:300], validation_labels=labels[:300],
                    train_inputs=x[300:600], train_labels=labels[300:600], test_inputs=x[600:], test_labels=labels[600:])
    onnx_bytes = fit.model.SerializeToString()
    card = photo_card(input={"layout": "NHWC"}, output={"name": "logits", "kind": "logits"})
    card.update(calibration=fit.calibration, typicality=fit.typicality)
    card["onnx"]["sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
    version_dir = tmp_path / "photo" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(onnx_bytes)
    (version_dir / "model.json").write_text(json.dumps(card))

    buffer = io.BytesIO()
    photo(seed=3).save(buffer, format="PNG")
    picture = base64.b64encode(buffer.getvalue()).decode()
    with TestClient(create_app(make_settings(tmp_path, max_instances=256))) as client:
        response = client.post("/v1/models/photo/predict", json={"instances": [{"image_base64": picture}], "explain": True})
        assert response.status_code == 200, response.text
        (answer,) = response.json()["predictions"]
        assert isinstance(answer["typicality"], float) and isinstance(answer["warnings"], list)
        assert np.asarray(answer["explanation"]["map"]).shape == (24, 32)
        probabilities = np.array(list(answer["probabilities"].values()))
        assert abs(probabilities.sum() - 1.0) < 1e-4
        # Noise far from the model's pictures, sent as tensors in its layout, is flagged.
        noise = rng.uniform(-3, 3, (3, 24, 32, 3)).astype(np.float32)
        v2 = client.post("/v2/models/photo/infer", json={"inputs": [{"name": "pixel_values", "shape": [3, 24, 32, 3],
                                                                     "datatype": "FP32", "data": noise.ravel().tolist()}]})
        assert v2.status_code == 200, v2.text
        warnings = v2.json()["parameters"]["warnings"]
        assert all(any(w["code"] == "out_of_distribution" for w in row) for row in warnings)
