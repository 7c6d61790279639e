"""Service settings, read from environment variables (prefix PIXELSERVE_) or a .env file."""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The shipped model repository sits beside the package in a checkout.
DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "models"

PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


# A model whose one-picture run takes this long on CPU gets a solo session by default (ort_solo_threads).
SOLO_MIN_RUN_MS = 10.0

# A container's CPU limit (cgroup v2): CPU time per period, "max 100000" (none) or "200000 100000" (2 CPUs).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus() -> int:
    """The CPUs this process may use: those it may run on, capped by its cgroup's CPU quota (a container's CPU
    limit, which the CPUs it may run on do not show)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
    except (OSError, ValueError):
        return cpus
    return cpus if quota == "max" else max(1, min(cpus, math.ceil(int(quota) / int(period))))


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ModelRuntime(BaseModel):
    """ONNX Runtime for one model; a field left out takes the global setting."""

    model_config = ConfigDict(extra="forbid")
    intra_op_threads: int | None = Field(None, ge=0)
    inter_op_threads: int | None = Field(None, ge=0)
    solo_threads: int | None = Field(None, ge=0)
    providers: list[str] | None = None

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: object) -> object:
        return _provider_names(value)


def _provider_names(value: object) -> object:
    value = _split_commas(value)
    if isinstance(value, list):
        return [PROVIDER_ALIASES.get(str(p).lower(), str(p)) for p in value]
    return value


class ModelBatching(BaseModel):
    """Batching for one model; a field left out takes the global setting."""

    model_config = ConfigDict(extra="forbid")
    batching: bool | None = None
    max_batch_size: int | None = Field(None, ge=1)
    max_delay_ms: float | None = Field(None, ge=0)


class Settings(BaseSettings):
    # An empty variable means "the default" (compose files list every setting as ${VAR:-default}).
    model_config = SettingsConfigDict(env_prefix="PIXELSERVE_", env_file=".env", extra="ignore", env_ignore_empty=True)

    model_repository: Path = Field(DEFAULT_REPOSITORY, description="Directory holding <name>/<version>/model.onnx")
    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: a free one, logged at start)")
    workers: int | None = Field(
        None, ge=1,
        description="Worker processes, each with its own listening socket on the port (SO_REUSEPORT: the kernel "
        "spreads connections across them) and its own copy of every model. Default: one per CPU this process may "
        "use (its CPU affinity, capped by a container's CPU limit), each running ONNX Runtime on 1 thread "
        "(ort_intra_op_threads, ort_inter_op_threads), so that together they do not oversubscribe the cores; one "
        "when a GPU serves, since processes sharing a GPU take turns on it and each holds a CUDA context",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference (comma-separated; cuda, cpu)",
    )
    cuda_conv_algo_search: Literal["heuristic", "exhaustive", "default"] = Field(
        "heuristic",
        description="How cuDNN picks a convolution algorithm on the CUDA provider. 'exhaustive' (ONNX Runtime's default) "
        "times every algorithm the first time it meets an input shape, and a dynamic batcher meets a new shape with "
        "every new batch size; 'heuristic' picks from cuDNN's tables at once",
    )
    ort_intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads inside one operator (0 = ORT default)")
    ort_inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads across operators (0 = ORT default)")
    ort_solo_threads: int | None = Field(
        None, ge=0,
        description="Threads for a run of one picture alone, through a second session of the model (its weights held "
        "twice) without spinning: light load gets the idle cores, while batches under load keep ort_intra_op_threads. "
        f"Default: every CPU the worker may use, for a model whose one-picture run takes {SOLO_MIN_RUN_MS:g} ms or more "
        "on CPU (a ResNet-18 at 224x224: 1.6 times the requests/s at one connection, the same at 16), else none; 0: never",
    )
    model_runtime: dict[str, ModelRuntime] = Field(
        default_factory=dict,
        description='Per-model ONNX Runtime settings over the global ones, as JSON: {"resnet18": {"solo_threads": 0, '
        '"intra_op_threads": 2}, "mnist-convnet": {"providers": ["cpu"]}} (providers: which of the global providers '
        "the model may use; the CPU always)",
    )

    batching: bool = Field(True, description="Coalesce concurrent requests into one ONNX Runtime run")
    max_batch_size: int = Field(64, ge=1, description="Most images in one coalesced run")
    max_delay_ms: float = Field(
        0.0, ge=0,
        description="Longest a request waits for others to join its batch. 0: each run takes what queued while the "
        "previous one ran, which measured fastest on CPU, and on a GPU as well (an H200, one image per request)",
    )
    max_queue: int = Field(2048, ge=1, description="Images waiting per model version before answering 503")
    inline_inference_ms: float = Field(
        2.0, ge=0,
        description="Runs expected to take at most this long run on the event loop itself; longer ones run on the "
        "model's inference thread. Handing a run to a thread costs about 0.1 ms, more than a small model's whole run; "
        "2 ms lets a full batch of 64 digits (about 1 ms) run in place. 0: every run on the thread",
    )
    model_batching: dict[str, ModelBatching] = Field(
        default_factory=dict,
        description='Per-model batching over the global settings, as JSON: {"mnist-convnet": {"max_batch_size": 16, "max_delay_ms": 1}}',
    )

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above); a model's predict and infer routes accept more where its pictures need it (see max_request_tensor_bytes)")
    max_image_pixels: int = Field(40_000_000, ge=784, description="Largest decoded picture, in pixels (413 above)")
    max_instances: int = Field(
        256, ge=1,
        description="Most images in one request, for a model with small pictures; a model with larger ones takes fewer "
        "(see max_request_tensor_bytes)",
    )
    max_request_tensor_bytes: int = Field(
        64 * 1024 * 1024, ge=4096,
        description="Byte budget of one request's pictures as float32 tensors: a model takes at most this many bytes' "
        "worth of its input per request (224x224 RGB: 111 pictures), at most max_instances. The body limit of its "
        "predict and infer routes grows to match (12 bytes a value, as JSON numbers), never below max_body_bytes",
    )
    max_request_pixels: int = Field(
        160_000_000, ge=784,
        description="Most pixels decoded for one request, all its pictures together (413 above; read from the pictures' "
        "headers before any is decoded): bounds the CPU time one request can take. A JPEG counts at the reduced scale "
        "it is decoded at",
    )
    memory_limit_bytes: int | None = Field(
        None, ge=64 << 20,
        description="The memory the whole service may use (all its processes). Default: the container's limit (the "
        "cgroup's memory.max), else the machine's memory. Each worker process sizes its decode and body budgets from "
        "its part of it (docs/limits.md)",
    )
    decode_budget_bytes: int | None = Field(
        None, ge=1 << 20,
        description="Memory for decoding pictures at once in one worker process, estimated from each picture's header "
        "before it is decoded: a request waits its turn (budget_wait_s), 503 with Retry-After past that, 413 for a "
        "picture that needs more than the whole budget. Default: 55% of what a worker has left of its part of "
        "memory_limit_bytes once its models are loaded, at least 32 MiB",
    )
    body_budget_bytes: int | None = Field(
        None, ge=1 << 20,
        description="Memory for request bodies over 64 KiB being received and held at once in one worker process (each "
        "counts twice its length; a chunked one, twice max_body_bytes): a request waits its turn before its body is "
        "read (budget_wait_s), 503 with Retry-After past that. Default: 25% of what a worker has left of its part "
        "of memory_limit_bytes, at least twice max_body_bytes",
    )
    budget_wait_s: float = Field(5.0, ge=0, description="Longest a request waits for the decode or body budget before 503")
    return_memory: bool = Field(
        True,
        description="Give memory back to the system after large requests (glibc: a fixed 32 MiB mmap threshold, two "
        "malloc arenas, malloc_trim after a burst of decoding); measured in docs/limits.md",
    )
    default_top_k: int = Field(3, ge=1, description="How many best classes a v1 prediction lists by default")

    api_key: SecretStr | None = Field(None, description="When set, predict and reload endpoints require this key")
    allow_reload: bool = Field(
        True,
        description="Whether POST /v1/models/{name}/reload may rescan a model's directory. false: it answers 403 (the "
        "repository watcher, watch_interval_s, still picks up new versions). Reloads at any rate coalesce into one "
        "pending rescan per process",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Allowed CORS origins (comma-separated)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    log_format: Literal["json", "text"] = Field("json", description="Structured JSON logs or plain text")
    watch_interval_s: float = Field(2.0, ge=0, description="Seconds between scans of the repository for new versions (0 = off)")

    # Connections (service/http/protocol.py): every limit holds per worker process, without a proxy in front.
    max_request_line_bytes: int = Field(
        8 * 1024, ge=256, description="Longest request target (the URL in the request line); 414 and the connection closed above",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Most bytes of request line and headers together; 431 and the connection closed above",
    )
    header_timeout_s: float = Field(
        10.0, gt=0,
        description="Seconds a client has to send a request's line and headers, counted from the connection's start or "
        "the end of the previous response; 408 and the connection closed after",
    )
    body_timeout_s: float = Field(
        10.0, gt=0,
        description="Seconds a request body may go without a byte arriving; also the grace period after which the body "
        "must arrive at min_body_rate_bytes per second on average. 408 and the connection closed otherwise",
    )
    min_body_rate_bytes: int = Field(
        4096, ge=0,
        description="Slowest average rate, in bytes per second, at which a request body may arrive once body_timeout_s "
        "has passed since its headers (0: no minimum rate)",
    )
    max_connections: int = Field(
        1000, ge=1,
        description="Most open connections per worker process; one over it is answered 503 with Retry-After and closed",
    )
    restart_backoff_s: float = Field(
        0.25, ge=0, description="Delay before restarting a worker process that died; doubled each time its replacement dies again soon",
    )
    restart_backoff_max_s: float = Field(10.0, ge=0, description="Longest delay before restarting a worker process")

    def worker_count(self, gpu_serves: bool) -> int:
        """The worker processes to start: as configured, else one per CPU, or one when a GPU serves."""
        if self.workers is not None:
            return self.workers
        return 1 if gpu_serves else available_cpus()

    def batching_for(self, model: str) -> ModelBatching:
        """The batching one model runs with: its own settings where given, else the global ones."""
        own = self.model_batching.get(model, ModelBatching())
        return ModelBatching(
            batching=self.batching if own.batching is None else own.batching,
            max_batch_size=own.max_batch_size or self.max_batch_size,
            max_delay_ms=self.max_delay_ms if own.max_delay_ms is None else own.max_delay_ms,
        )

    def runtime_for(self, model: str) -> ModelRuntime:
        """The ONNX Runtime settings one model runs with: its own where given, else the global ones
        (solo_threads None: decided by the model's run time)."""
        own = self.model_runtime.get(model, ModelRuntime())
        return ModelRuntime(
            intra_op_threads=self.ort_intra_op_threads if own.intra_op_threads is None else own.intra_op_threads,
            inter_op_threads=self.ort_inter_op_threads if own.inter_op_threads is None else own.inter_op_threads,
            solo_threads=self.ort_solo_threads if own.solo_threads is None else own.solo_threads,
            providers=own.providers,
        )

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: object) -> object:
        return _provider_names(value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        return _split_commas(value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
