"""Prometheus metrics and structured (JSON) logs carrying the request id.

Each app owns its own `Metrics` (its own CollectorRegistry), so several apps can live in one
process (tests) without clashing over metric names. With several worker processes (service/workers.py),
PROMETHEUS_MULTIPROC_DIR is set: every worker's samples go to files there, and /metrics adds up all workers'.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# prometheus_client picks its multiprocess mode from this variable when imported, as here.
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

# Set by the request middleware, read by every log record emitted while the request is handled.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pixelserve_requests_total", "HTTP requests answered",
            ["model", "version", "endpoint", "status"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "pixelserve_request_duration_seconds", "Time from receiving a request to sending its response",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "pixelserve_inference_duration_seconds", "Time of one ONNX Runtime run",
            ["model", "version"], buckets=INFERENCE_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "pixelserve_batch_size", "Images in one ONNX Runtime run",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.load_failures = Counter(
            "pixelserve_model_load_failures_total", "Failed loads of a model version (each worker process loads every version itself)",
            ["model", "version"], registry=self.registry,
        )
        # Across worker processes: 1 while any live worker runs the version on the provider (a dead worker's
        # values are dropped when the supervisor marks it dead).
        self.providers = Gauge(
            "pixelserve_model_provider_info", "1 for each execution provider a loaded model version runs on",
            ["model", "version", "provider"], registry=self.registry, multiprocess_mode="livemax",
        )
        self._provider_labels: dict[tuple[str, int], list[str]] = {}
        # Labelled children, looked up once: labels() costs more than the update itself.
        self._request_counters: dict[tuple[str, str, str, int], Counter] = {}
        self._request_timers: dict[str, Histogram] = {}

    def observe_request(self, endpoint: str, model: str, version: str, status: int, seconds: float) -> None:
        key = (model, version, endpoint, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(model, version, endpoint, str(status))
        counter.inc()
        timer = self._request_timers.get(endpoint)
        if timer is None:
            timer = self._request_timers[endpoint] = self.request_seconds.labels(endpoint)
        timer.observe(seconds)

    def timed_inference(
        self, infer: Callable[[np.ndarray], np.ndarray], model: str, version: int
    ) -> Callable[[np.ndarray], np.ndarray]:
        """Wrap a blocking inference function to record its run time and batch size."""
        run_seconds = self.inference_seconds.labels(model, str(version))
        batch_size = self.batch_size.labels(model, str(version))

        def timed(images: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            probabilities = infer(images)
            run_seconds.observe(time.perf_counter() - started)
            batch_size.observe(len(images))
            return probabilities

        return timed

    def set_providers(self, model: str, version: int, providers: list[str]) -> None:
        self.forget_model(model, version)
        for provider in providers:
            self.providers.labels(model, str(version), provider).set(1)
        self._provider_labels[(model, version)] = list(providers)

    def forget_model(self, model: str, version: int) -> None:
        for provider in self._provider_labels.pop((model, version), []):
            if MULTIPROCESS:
                # A series cannot be removed from the workers' files: 0 says this worker no longer runs it.
                self.providers.labels(model, str(version), provider).set(0)
            else:
                self.providers.remove(model, str(version), provider)


# Attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON.
_STANDARD_ATTRIBUTES = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "request_id", "color_message",  # uvicorn's copy of the message with terminal colours
}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "info", log_format: str = "json") -> None:
    """Send every log (ours and uvicorn's) to stderr, as JSON lines or plain text, with the request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.name = "pixelserve"
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    for existing in [h for h in root.handlers if h.name == "pixelserve"]:  # ours from an earlier call only
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # The request middleware logs every request itself, with the request id; uvicorn's line would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
