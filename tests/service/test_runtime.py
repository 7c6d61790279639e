"""Execution providers, sessions and warm-up."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from service.inference import runtime
from tests.onnx_models import make_classifier, reference_probabilities


def test_unknown_providers_are_dropped_with_one_warning_and_cpu_is_always_last(caplog):
    caplog.set_level(logging.WARNING, logger="service.inference.runtime")
    resolver = runtime.ProviderResolver(["FancyExecutionProvider"])
    assert resolver.usable() == ["CPUExecutionProvider"]
    assert resolver.usable() == ["CPUExecutionProvider"]  # probed once
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.inference.runtime"]
    assert len(warnings) == 1 and "FancyExecutionProvider" in warnings[0] and "not available" in warnings[0]
    assert "FancyExecutionProvider" in resolver.unusable()


def test_a_provider_onnx_runtime_drops_at_session_creation_is_reported_once(caplog):
    caplog.set_level(logging.WARNING, logger="service.inference.runtime")
    resolver = runtime.ProviderResolver(["CPUExecutionProvider"])
    resolver.usable()
    resolver.confirm(["SomeGpuProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    resolver.confirm(["SomeGpuProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.inference.runtime"]
    assert len(warnings) == 1 and "could not start it" in warnings[0]


def test_session_runs_on_the_reported_providers_and_warm_up_checks_the_output():
    resolver = runtime.ProviderResolver(["CPUExecutionProvider"])
    session = runtime.create_session(make_classifier(seed=4).SerializeToString(), resolver, intra_op_threads=1, inter_op_threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    infer = runtime.make_infer_fn(session, "input", "probabilities")
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(infer(x), reference_probabilities(x, seed=4), atol=1e-5)
    assert runtime.warm_up(infer, 10).shape == (1, 10)
    with pytest.raises(ValueError, match=r"expected \[1, 3\]"):
        runtime.warm_up(infer, 3)
    with pytest.raises(ValueError, match="not softmax"):
        runtime.warm_up(lambda images: np.full((1, 10), 0.5, dtype=np.float32), 10)


def test_gpu_serves_only_when_a_usable_gpu_provider_comes_before_the_cpu(monkeypatch):
    assert not runtime.gpu_serves(["CUDAExecutionProvider", "CPUExecutionProvider"])  # this host has no NVIDIA driver
    monkeypatch.setattr(runtime, "_gpu_unavailable_reason", lambda provider: None)  # as on a GPU host
    assert runtime.gpu_serves(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert not runtime.gpu_serves(["CPUExecutionProvider", "CUDAExecutionProvider"])
    assert not runtime.gpu_serves(["FancyExecutionProvider"])


def test_cuda_sessions_get_tf32_off_and_the_configured_convolution_search(monkeypatch):
    asked = {}

    class RecordingSession:
        def __init__(self, model, sess_options, providers):
            asked["providers"] = providers

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    resolver = runtime.ProviderResolver(["CUDAExecutionProvider"])
    monkeypatch.setattr(resolver, "usable", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(runtime.ort, "InferenceSession", RecordingSession)
    runtime.create_session(b"model", resolver, intra_op_threads=1, inter_op_threads=1, cuda_conv_algo_search="exhaustive")
    assert asked["providers"] == [
        ("CUDAExecutionProvider", {"use_tf32": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}),
        "CPUExecutionProvider",
    ]
