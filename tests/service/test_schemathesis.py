"""Schema-driven fuzzing of the whole app (every router in its OpenAPI document): no input gets a 5xx."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from tests.onnx_models import write_version
from tests.service.conftest import make_settings

# The schema is loaded when the module is collected, so its repository is made here (removed at exit).
_REPOSITORY = tempfile.TemporaryDirectory(prefix="fuzz-models-")
_ROOT = Path(_REPOSITORY.name)
# Named like the shipped model the OpenAPI examples mention, so generated requests reach a real model.
write_version(_ROOT, "mnist-convnet", 1)
write_version(_ROOT, "fashion-convnet", 1, task="fashion")

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(make_settings(_ROOT, log_level="error")))


@schema.parametrize()
@settings(max_examples=15, deadline=2000, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    content_type = (response.headers.get("content-type") or [""])[0]
    if response.status_code >= 400 and content_type.startswith("application/json"):
        assert "error" in response.json(), response.text[:500]
