"""The service's protocol is used while uvicorn has the internals it builds on; otherwise uvicorn's own, with
one warning that names what differs (service/http/uvicorn_compat.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import httpx
from uvicorn.protocols.http import httptools_impl

from service.http import uvicorn_compat
from service.http.protocol import HttpProtocol
from tests.onnx_models import write_version
from tests.service.conftest import PROJECT_ROOT, free_port
from tests.faults.conftest import wait_for


def test_the_installed_uvicorn_has_every_internal_the_protocol_uses(caplog):
    assert uvicorn_compat.missing_internals() == []
    with caplog.at_level(logging.WARNING, logger="service.http"):
        assert uvicorn_compat.http_protocol() is HttpProtocol
    assert not caplog.records


def test_a_missing_method_falls_back_to_uvicorns_protocol_with_one_warning(monkeypatch, caplog):
    monkeypatch.delattr(httptools_impl.HttpToolsProtocol, "_unset_keepalive_if_required")
    with caplog.at_level(logging.WARNING, logger="service.http"):
        assert uvicorn_compat.http_protocol() == "httptools"
    [record] = caplog.records
    assert "HttpToolsProtocol._unset_keepalive_if_required" in record.getMessage()
    assert "uvicorn's own httptools protocol" in record.getMessage()


def test_a_missing_module_name_or_attribute_is_named(monkeypatch):
    monkeypatch.delattr(httptools_impl, "HEADER_VALUE_RE")
    assert uvicorn_compat.missing_internals() == [f"{uvicorn_compat.MODULE}.HEADER_VALUE_RE"]
    monkeypatch.undo()
    monkeypatch.setitem(uvicorn_compat.ASSIGNED, "HttpToolsProtocol.__init__", ("pipeline", "a_future_name"))
    assert uvicorn_compat.missing_internals() == ["HttpToolsProtocol.a_future_name (set in __init__)"]


def test_the_server_serves_on_the_fallback_and_warns_once(tmp_path):
    write_version(tmp_path, "digits", 1)
    port = free_port()
    # A uvicorn whose protocol lacks a method the service's protocol calls, as seen by the check.
    launcher = (
        "import sys; from service.http import uvicorn_compat; "
        "uvicorn_compat.PROTOCOL_METHODS += ('_renamed_in_a_later_uvicorn',); "
        "from service.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIXELSERVE_")} | {
        "PIXELSERVE_PROVIDERS": "cpu", "PIXELSERVE_WORKERS": "2", "PIXELSERVE_WATCH_INTERVAL_S": "0", "PIXELSERVE_LOG_FORMAT": "text",
    }
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", launcher, "--port", str(port), "--model-repository", str(tmp_path)],
            cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(ready, timeout_s=120)
            for _ in range(10):
                response = httpx.post(f"{url}/v1/models/digits/predict", json={"instances": [[0.0] * 784]})
                assert response.status_code == 200, response.text
        finally:
            process.terminate()
            process.wait(timeout=30)
    text = log_path.read_text()
    assert text.count("_renamed_in_a_later_uvicorn") == 1, text  # one warning, from the supervisor, naming it
    assert "Serving with uvicorn's own httptools protocol" in text
