"""App-wide behaviour: request ids, API key, CORS, body limit, error format, metrics, providers, imports."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.observability import JsonFormatter, RequestIdFilter, request_id_var
from tests.service.conftest import PROJECT_ROOT, make_settings

ONE_IMAGE = {"instances": [[0.5] * 784]}


def samples(client: TestClient) -> list:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def value(all_samples: list, name: str, **labels) -> float | None:
    for sample in all_samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


# --- request id ---------------------------------------------------------------------------------------


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/v1/models", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"
    generated = client.get("/v1/models").headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert client.get("/v1/models").headers["x-request-id"] != generated
    unsafe = client.get("/v1/models", headers={"X-Request-ID": "x" * 300}).headers["x-request-id"]
    assert unsafe != "x" * 300 and len(unsafe) == 32
    # Errors carry it too.
    assert client.get("/nowhere", headers={"X-Request-ID": "trace-43"}).headers["x-request-id"] == "trace-43"


def test_json_log_lines_carry_the_request_id_and_extra_fields():
    record = logging.LogRecord("service.test", logging.INFO, __file__, 1, "loaded %s", ("digits",), None)
    record.model = "digits"
    token = request_id_var.set("abc123")
    try:
        assert RequestIdFilter().filter(record)
        line = orjson.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "loaded digits" and line["level"] == "info"
    assert line["request_id"] == "abc123" and line["model"] == "digits" and line["logger"] == "service.test"


# --- errors --------------------------------------------------------------------------------------------


def test_unknown_route_wrong_method_and_validation_errors_use_the_error_body(client):
    for response, status, code in [
        (client.get("/v1/nothing"), 404, "not_found"),
        (client.get("/v1/models/digits/predict"), 405, "method_not_allowed"),
        (client.get("/v1/models/digits", params={"version": "two"}), 422, "invalid_input"),
    ]:
        assert response.status_code == status
        assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def test_v2_paths_get_the_protocol_error_body(client):
    response = client.get("/v2/models/nope")
    assert response.status_code == 404 and isinstance(response.json()["error"], str)


def test_a_bug_answers_a_json_500_with_the_request_id(repository):
    app = create_app(make_settings(repository))

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error" and "bug-1" in response.json()["error"]["message"]
    assert response.headers["x-request-id"] == "bug-1"


# --- body limit ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limit_client(repository):
    with TestClient(create_app(make_settings(repository, max_body_bytes=4096))) as client:
        yield client


def test_body_limit_on_content_length(small_limit_client):
    body = orjson.dumps({"instances": [[0.5] * 784] * 3})
    assert len(body) > 4096
    response = small_limit_client.post("/v1/models/digits/predict", content=body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    v2 = small_limit_client.post("/v2/models/digits/infer", content=body)
    assert v2.status_code == 413 and isinstance(v2.json()["error"], str)


@pytest.mark.parametrize("path", ["/v1/models/digits/predict", "/v1/models/digits/predict/image"])
def test_body_limit_on_streamed_bytes_without_content_length(small_limit_client, path):
    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    headers = {"content-type": "multipart/form-data; boundary=b"} if path.endswith("image") else {}
    response = small_limit_client.post(path, content=chunks(), headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


def test_bodies_under_the_limit_are_served(small_limit_client):
    small = orjson.dumps({"instances": [[0] * 784]})
    assert len(small) < 4096
    assert small_limit_client.post("/v1/models/digits/predict", content=small).status_code == 200


# --- API key -----------------------------------------------------------------------------------------------


def test_api_key_protects_predict_and_reload_only(repository):
    with TestClient(create_app(make_settings(repository, api_key="s3cret"))) as client:
        for path in ("/v1/models/digits/predict", "/v1/models/digits/reload"):
            refused = client.post(path, json=ONE_IMAGE)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
            assert client.post(path, json=ONE_IMAGE, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v1/models/digits/predict/image", files={"file": ("a.png", b"x", "image/png")}).status_code == 401
        assert client.post("/v1/models/digits/predict", json=ONE_IMAGE, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.post("/v1/models/digits/predict", json=ONE_IMAGE, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/models/digits/reload", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post("/v1/models/digits/predict", json=ONE_IMAGE, headers={"Authorization": "Basic s3cret"}).status_code == 401
        document = client.get("/openapi.json").json()
        assert {"APIKeyHeader", "HTTPBearer"} <= set(document["components"]["securitySchemes"])
        assert {"APIKeyHeader": []} in document["paths"]["/v1/models/{name}/predict"]["post"]["security"]
        assert "security" not in document["paths"]["/v1/models"]["get"]


# --- CORS --------------------------------------------------------------------------------------------------


def test_cors_allows_configured_origins_only(repository):
    with TestClient(create_app(make_settings(repository, cors_origins=["https://example.org"]))) as client:
        preflight = client.options(
            "/v1/models/digits/predict",
            headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://example.org"
        simple = client.get("/v1/models", headers={"Origin": "https://example.org"})
        assert simple.headers["access-control-allow-origin"] == "https://example.org"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        assert "access-control-allow-origin" not in client.get("/v1/models", headers={"Origin": "https://evil.example"}).headers


# --- health ---------------------------------------------------------------------------------------------------


def test_health(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/healthz").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["models"] == {"broken": "UNAVAILABLE", "digits": "READY", "fashion": "READY"}


def test_health_probes_answer_head_and_stay_once_in_the_openapi_document(client):
    for path in ("/v2/health/live", "/healthz", "/v2/health/ready"):
        probe = client.head(path)
        assert probe.status_code == 200 and probe.content == b"", path
        assert "head" not in client.get("/openapi.json").json()["paths"][path]


def test_not_ready_when_no_model_can_serve(tmp_path):
    from tests.onnx_models import write_bad_onnx

    write_bad_onnx(tmp_path, "only-broken", 1)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert client.head("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200


# --- metrics ---------------------------------------------------------------------------------------------------


def test_metrics_count_requests_latency_inference_batches_failures_and_providers(client):
    for _ in range(3):
        assert client.post("/v1/models/digits/predict", json={"instances": [[0.5] * 784] * 2}).status_code == 200
    client.post("/v1/models/digits/predict", json={"instances": [[2.0] * 784]})
    found = samples(client)
    predict = "/v1/models/{name}/predict"
    assert value(found, "pixelserve_requests_total", endpoint=predict, model="digits", version="2", status="200") >= 3
    assert value(found, "pixelserve_requests_total", endpoint=predict, model="digits", version="2", status="422") >= 1
    assert value(found, "pixelserve_request_duration_seconds_count", endpoint=predict) >= 4
    assert value(found, "pixelserve_inference_duration_seconds_count", model="digits", version="2") >= 3
    assert value(found, "pixelserve_batch_size_sum", model="digits", version="2") >= 6
    assert value(found, "pixelserve_model_load_failures_total", model="digits", version="3") == 1
    assert value(found, "pixelserve_model_load_failures_total", model="broken", version="1") == 1
    assert value(found, "pixelserve_model_provider_info", model="digits", version="2", provider="CPUExecutionProvider") == 1
    assert value(found, "pixelserve_model_provider_info", model="digits", version="3") is None


# --- execution providers -------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="this host has an NVIDIA GPU: CUDA does not fall back")
def test_cuda_falls_back_to_cpu_with_one_warning_and_says_so_everywhere(repository, caplog):
    caplog.set_level(logging.WARNING, logger="service.inference.runtime")
    with TestClient(create_app(make_settings(repository, providers=["cuda", "cpu"]))) as client:
        warnings = [r for r in caplog.records if r.name == "service.inference.runtime" and r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        message = warnings[0].getMessage()
        assert "CUDAExecutionProvider" in message and "Serving on CPUExecutionProvider" in message
        assert "GPU" in message or "libraries" in message  # the reason
        assert client.get("/v1/models/digits").json()["providers"] == ["CPUExecutionProvider"]
        assert client.get("/v1/models/fashion").json()["providers"] == ["CPUExecutionProvider"]
        found = samples(client)
        assert value(found, "pixelserve_model_provider_info", model="digits", version="2", provider="CPUExecutionProvider") == 1
        assert value(found, "pixelserve_model_provider_info", provider="CUDAExecutionProvider") is None


# --- packaging ----------------------------------------------------------------------------------------------------


def test_the_service_never_imports_torch(repository):
    code = (
        "import sys\n"
        "import service.app\n"
        "from service.config import Settings\n"
        f"service.app.create_app(Settings(model_repository={str(repository)!r}, providers=['cpu']))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'training' not in sys.modules, 'training was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
