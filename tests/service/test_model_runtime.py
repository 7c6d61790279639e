"""Per-model ONNX Runtime settings and the solo session: a picture alone on an idle machine runs on more threads."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from pydantic import ValidationError

from service.config import Settings
from service.inference import registry as registry_module
from service.inference import runtime
from service.inference.registry import ModelRepository
from tests.onnx_models import make_classifier, reference_probabilities, write_version
from tests.service.conftest import make_settings

X = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)


def test_per_model_settings_override_the_global_ones_and_name_providers_by_alias(monkeypatch):
    monkeypatch.setenv("PIXELSERVE_MODEL_RUNTIME", '{"big": {"solo_threads": 0, "intra_op_threads": 2, "providers": "cpu"}}')
    monkeypatch.setenv("PIXELSERVE_ORT_SOLO_THREADS", "3")
    settings = Settings()
    big, other = settings.runtime_for("big"), settings.runtime_for("other")
    assert (big.intra_op_threads, big.inter_op_threads, big.solo_threads, big.providers) == (2, 1, 0, ["CPUExecutionProvider"])
    assert (other.intra_op_threads, other.solo_threads, other.providers) == (1, 3, None)
    monkeypatch.setenv("PIXELSERVE_MODEL_RUNTIME", '{"big": {"threads": 2}}')
    with pytest.raises(ValidationError, match="threads"):
        Settings()


def test_a_model_kept_to_the_cpu_gets_a_cpu_session_whatever_the_global_providers():
    resolver = runtime.ProviderResolver(["CPUExecutionProvider"])
    session = runtime.create_session(make_classifier(seed=1).SerializeToString(), resolver, intra_op_threads=1,
                                     inter_op_threads=1, spinning=False, allowed=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize(("runnable", "idle"), [(1, True), (2, True), (3, False), (7, False)])
def test_idle_cores_reads_the_runnable_threads(tmp_path, monkeypatch, runnable, idle):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(f"0.50 0.40 0.30 {runnable}/180 4242\n")
    monkeypatch.setattr(runtime, "LOADAVG", str(loadavg))
    # Two cores, one more thread wanted: the caller and the event loop are not counted against it.
    assert runtime.idle_cores(1, 2) is idle


def test_idle_cores_says_no_where_it_cannot_tell(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "LOADAVG", str(tmp_path / "missing"))
    assert runtime.idle_cores(1, 64) is False


def test_the_solo_session_takes_a_picture_alone_and_only_while_no_other_run_is_under_way(monkeypatch):
    monkeypatch.setattr(runtime, "_model_runs", runtime._LocalCount())
    monkeypatch.setattr(runtime, "idle_cores", lambda wanted, cpus: True)
    calls: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def shared(images):
        calls.append(f"shared {len(images)}")
        if len(images) == 3:  # a long run: another picture arrives meanwhile
            inside.set()
            release.wait(5)
        return images

    def solo(images):
        calls.append(f"solo {len(images)}")
        return images

    infer = runtime.with_solo_session(shared, solo, extra_threads=1, cpus=2)
    infer(X[:1])
    infer(X[:2])
    long_run = threading.Thread(target=infer, args=(X,))
    long_run.start()
    assert inside.wait(5)
    infer(X[:1])  # another run is under way: the picture keeps to the shared session
    release.set()
    long_run.join(5)
    infer(X[:1])
    assert calls == ["solo 1", "shared 2", "shared 3", "shared 1", "solo 1"]
    assert runtime._model_runs.value == 0
    monkeypatch.setattr(runtime, "idle_cores", lambda wanted, cpus: False)
    infer(X[:1])
    assert calls[-1] == "shared 1"  # busy cores: no extra threads


def _served(tmp_path, monkeypatch, min_run_ms: float, **settings):
    write_version(tmp_path, "digits", 1, seed=5)
    monkeypatch.setattr(registry_module, "SOLO_MIN_RUN_MS", min_run_ms)
    monkeypatch.setattr(registry_module, "available_cpus", lambda: 4)
    monkeypatch.setattr(runtime, "idle_cores", lambda wanted, cpus: True)

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path, **settings))
        await repository.start()
        try:
            served = repository.get("digits")
            return served.solo_threads, await served.predict(X[:1]), await served.predict(X)
        finally:
            await repository.stop()

    return asyncio.run(scenario())


def test_a_model_whose_run_is_long_gets_a_solo_session_on_every_cpu_with_the_same_answers(tmp_path, monkeypatch):
    threads, alone, batch = _served(tmp_path, monkeypatch, min_run_ms=0.0)
    assert threads == 4
    np.testing.assert_allclose(alone, reference_probabilities(X[:1], seed=5), atol=1e-5)
    np.testing.assert_allclose(batch, reference_probabilities(X, seed=5), atol=1e-5)


def test_a_fast_model_gets_no_solo_session_and_the_setting_decides_over_the_run_time(tmp_path, monkeypatch):
    assert _served(tmp_path / "fast", monkeypatch, min_run_ms=1e9)[0] == 0
    assert _served(tmp_path / "forced", monkeypatch, min_run_ms=1e9, ort_solo_threads=2)[0] == 2
    assert _served(tmp_path / "off", monkeypatch, min_run_ms=0.0, model_runtime={"digits": {"solo_threads": 0}})[0] == 0
