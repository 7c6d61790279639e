"""Row 9 of issue 19: staging directories left by an export that was killed are never served (no phantom model)
and are removed by the next export; those of an export still running are left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from tests.faults.served import serving
from tests.onnx_models import make_card, make_classifier, write_version
from service.model_import.publish import STALE_STAGING_S, _host, publish


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # reaped: no process has it (the kernel hands pids out in turn, not again at once)


def test_killed_exports_leave_no_model_and_the_next_export_cleans_up(tmp_path):
    root = tmp_path / "models"
    write_version(root, "digits", 1)
    # A killed first export of a new model; a killed export of a new digits version, on this host and old;
    # one of an export still running (this test's parent process, on this host).
    killed_first = root / "fresh" / f".tmp-{dead_pid()}-{_host()}-a1"
    killed_old = root / "digits" / ".tmp-abcd1234"  # written by an older trainer: its age tells
    running = root / "digits" / f".tmp-{os.getppid()}-{_host()}-b2"
    for path in (killed_first, killed_old, running):
        path.mkdir(parents=True)
        (path / "model.onnx").write_bytes(b"half written")
    old = time.time() - STALE_STAGING_S - 60
    os.utime(killed_old, (old, old))

    with serving(root) as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
        assert [m["name"] for m in models] == ["digits"]  # no phantom "fresh" model
        assert [v["version"] for v in models[0]["versions"]] == [1]
        assert httpx.post(f"{server.url}/v1/models/fresh/reload", timeout=10).status_code == 404
        assert httpx.get(f"{server.url}/", timeout=10).text.count("fresh") == 0

    proto = make_classifier(seed=3)
    card = make_card("digits", 0, b"")
    del card["version"]  # the exporter numbers the version
    published = publish(root, "digits", proto, card)
    assert published.name == "2" and json.loads((published / "model.json").read_text())["version"] == 2
    assert not killed_first.exists() and not killed_first.parent.exists()  # the empty model directory too
    assert not killed_old.exists()
    assert running.exists()  # its writer is alive
    assert sorted(p.name for p in (root / "digits").iterdir()) == sorted(["1", "2", running.name])
