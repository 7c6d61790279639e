"""ONNX Runtime sessions: which execution providers can really run here, session options, warm-up.

Asking onnxruntime-gpu for CUDA on a host without a GPU (or without the CUDA 13 / cuDNN 9
libraries) makes ONNX Runtime print a long error and silently run on CPU. `ProviderResolver`
finds out why before any session is built, logs one warning that says it, and drops the provider,
so every session is created with providers that work. What each session really runs on is read
back from `session.get_providers()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Providers that need NVIDIA's libraries, and the onnxruntime library that links against them.
GPU_PROVIDER_LIBRARIES = {
    CUDA: "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}

InferFn = Callable[[np.ndarray], np.ndarray]
LOADAVG = "/proc/loadavg"


def _gpu_unavailable_reason(provider: str) -> str | None:
    """Why `provider` cannot run on this host, or None when its libraries load."""
    if provider not in ort.get_available_providers():
        return f"this onnxruntime build has no {provider} (install onnxruntime-gpu)"
    if os.name != "posix":  # the library probes below are Linux-specific; let ONNX Runtime decide
        return None
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver found (libcuda.so.1 cannot be loaded): this host has no usable GPU"
    if importlib.util.find_spec("nvidia") is not None:
        # CUDA / cuDNN installed from PyPI (the 'gpu' extra) live in site-packages; load them first.
        with contextlib.redirect_stdout(io.StringIO()):
            ort.preload_dlls()
    library = Path(ort.__file__).parent / "capi" / GPU_PROVIDER_LIBRARIES[provider]
    try:
        ctypes.CDLL(str(library))
    except OSError as error:
        return f"the CUDA 13 / cuDNN 9 libraries it needs are missing ({error}); install onnxruntime-gpu[cuda,cudnn]"
    return None


def gpu_serves(requested: list[str]) -> bool:
    """Whether sessions built for `requested` will run on a GPU: a GPU provider comes before the CPU in it and
    its libraries load here. Quiet: the resolver in each worker says why a provider is not used."""
    for provider in requested:
        if provider == CPU:
            return False
        if provider in GPU_PROVIDER_LIBRARIES and _gpu_unavailable_reason(provider) is None:
            return True
    return False


class ProviderResolver:
    """Turns the configured provider list into the providers that can run here, warning once per cause."""

    def __init__(self, requested: list[str]) -> None:
        self.requested = list(requested) or [CPU]
        self._unusable: dict[str, str] = {}  # provider -> why it is not used
        self._probed = False
        self._lock = threading.Lock()

    def usable(self) -> list[str]:
        """The requested providers that can run here, in order, always ending with CPU."""
        with self._lock:
            if not self._probed:
                self._probe()
            chosen = [p for p in self.requested if p not in self._unusable]
        return chosen if CPU in chosen else [*chosen, CPU]

    def unusable(self) -> dict[str, str]:
        with self._lock:
            return dict(self._unusable)

    def _probe(self) -> None:
        available = ort.get_available_providers()
        for provider in self.requested:
            if provider in GPU_PROVIDER_LIBRARIES:
                reason = _gpu_unavailable_reason(provider)
            elif provider not in available:
                reason = f"not available in this onnxruntime build (available: {', '.join(available)})"
            else:
                reason = None
            if reason:
                self._mark_unusable(provider, reason)
        self._probed = True

    def _mark_unusable(self, provider: str, reason: str) -> None:
        self._unusable[provider] = reason
        logger.warning(
            "%s was requested but cannot be used: %s. Serving on %s.",
            provider,
            reason,
            ", ".join(p for p in self.requested if p not in self._unusable) or CPU,
            extra={"provider": provider, "reason": reason},
        )

    def confirm(self, tried: list[str], actual: list[str]) -> None:
        """Record a provider ONNX Runtime dropped although its libraries loaded (e.g. a GPU it cannot use)."""
        with self._lock:
            for provider in tried:
                if provider not in actual and provider not in self._unusable:
                    self._mark_unusable(provider, "ONNX Runtime could not start it on this host (see its log above)")


def session_options(intra_op_threads: int, inter_op_threads: int, *, spinning: bool = True) -> ort.SessionOptions:
    """`spinning`: ONNX Runtime's pool threads poll for work between operators (its default). Off for a session
    whose threads share the cores with other workers' runs: polling threads burn the CPU those runs need
    (bench/results/runtime-choices-resnet18-bench.md)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def cuda_options(conv_algo_search: str) -> dict[str, str]:
    """The CUDA provider's options. TF32 off: ONNX Runtime turns it on by default, and it rounds what convolutions
    and matrix products read to 10-bit mantissas, so probabilities would differ from the CPU's (by up to 2e-3 on
    an H200 for the shipped models), while runs of up to 64 images (the default batch) gained no speed from it."""
    return {"use_tf32": "0", "cudnn_conv_algo_search": conv_algo_search.upper()}


def create_session(
    model_bytes: bytes,
    resolver: ProviderResolver,
    *,
    intra_op_threads: int,
    inter_op_threads: int,
    cuda_conv_algo_search: str = "heuristic",
    spinning: bool = True,
    allowed: list[str] | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session on the best usable providers (raises on a file ONNX Runtime rejects).
    `allowed`: the providers this model may use (a model's own setting), in the resolver's order; the CPU always."""
    providers = resolver.usable()
    if allowed is not None:
        providers = [p for p in providers if p in allowed or p == CPU]
    session = ort.InferenceSession(
        model_bytes,
        sess_options=session_options(intra_op_threads, inter_op_threads, spinning=spinning),
        providers=[(p, cuda_options(cuda_conv_algo_search)) if p == CUDA else p for p in providers],
    )
    resolver.confirm(providers, session.get_providers())
    return session


class _LocalCount:
    """A multiprocessing Value's interface for one process (a Value of its own would start multiprocessing's
    resource tracker process)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def get_lock(self) -> threading.Lock:
        return self._lock


# Runs of models with a solo session under way in the whole service: shared memory that the supervisor hands every
# worker process (service.workers), else this process's own count.
_model_runs = _LocalCount()


def share_model_runs(counter) -> None:
    """Count runs in `counter` (a multiprocessing Value shared by all the worker processes)."""
    global _model_runs
    _model_runs = counter


def with_solo_session(shared: InferFn, solo: InferFn, extra_threads: int, cpus: int) -> InferFn:
    """Runs of one picture on `solo` (a session with `extra_threads` more threads) when no other such run is under
    way in any worker and that many cores are idle; everything else on `shared`. Under load the cores are busy
    with the other workers' runs and every run keeps to its one thread; a picture alone on an idle machine gets
    the idle cores as well (bench/results/runtime-choices-resnet18-bench.md)."""
    runs = _model_runs

    def infer(images: np.ndarray) -> np.ndarray:
        with runs.get_lock():
            runs.value += 1
            alone = runs.value == 1
        try:
            if alone and len(images) == 1 and idle_cores(extra_threads, cpus):
                return solo(images)
            return shared(images)
        finally:
            with runs.get_lock():
                runs.value -= 1

    return infer


def idle_cores(wanted: int, cpus: int) -> bool:
    """Whether `wanted` more threads would find idle cores now, from the threads runnable on the host this instant
    (the fourth field of /proc/loadavg). The caller's own thread is one of them, and one more is allowed for: the
    worker's event loop, often still finishing the step that handed the picture over. Under load the other workers'
    runs and decodes keep more than that runnable. Linux; False elsewhere. A read costs microseconds."""
    try:
        with open(LOADAVG, "rb") as file:
            runnable = int(file.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return False
    return runnable + wanted <= cpus + 1


def make_infer_fn(
    session: ort.InferenceSession, input_name: str, output_name: str, *, logits: bool = False, fixed_batch: int | None = None,
    typicality_output: str | None = None,
) -> InferFn:
    """A blocking callable: the model's input batch -> float32 [N,C] probabilities, or [N,C+1] with the typicality
    score as the last column when `typicality_output` is given (one array keeps the runners' batching unchanged).
    ONNX Runtime releases the GIL in run(). `logits`: the graph answers logits, turned into probabilities here;
    `fixed_batch`: the graph takes exactly that many pictures a run (an export without a dynamic batch axis), so a
    batch runs in such slices."""
    run = session.run
    if typicality_output is None:
        outputs = [output_name]

        def infer(images: np.ndarray) -> np.ndarray:
            return run(outputs, {input_name: images})[0]
    else:
        both = [output_name, typicality_output]

        def infer(images: np.ndarray) -> np.ndarray:
            answer, typicality = run(both, {input_name: images})
            return np.concatenate([answer, typicality.reshape(-1, 1).astype(answer.dtype, copy=False)], axis=1)

    if fixed_batch is not None:
        whole = infer

        def infer(images: np.ndarray) -> np.ndarray:
            count = len(images)
            padded = -count % fixed_batch
            if padded:  # the last slice is filled up with copies of the last picture, and their answers dropped
                images = np.concatenate([images, np.repeat(images[-1:], padded, axis=0)])
            parts = [whole(images[start : start + fixed_batch]) for start in range(0, len(images), fixed_batch)]
            return np.concatenate(parts)[:count]

    output_type = next(o.type for o in session.get_outputs() if o.name == output_name)
    if logits or output_type != "tensor(float)":  # float16 answers are served as float32
        raw = infer
        classes = slice(None, -1) if typicality_output else slice(None)

        def infer(images: np.ndarray) -> np.ndarray:
            answer = np.asarray(raw(images), dtype=np.float32)
            if logits:
                answer[:, classes] = softmax(answer[:, classes])
            return answer

    return infer


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def warm_up(
    infer: InferFn, num_classes: int, instance_shape: tuple = (1, 28, 28), dtype: np.dtype = np.dtype(np.float32),
    extra_columns: int = 0,
) -> np.ndarray:
    """One inference on a blank picture, so the first request does not pay for lazy initialisation;
    also proves the model answers probabilities of the declared width (then `extra_columns`, e.g. typicality)."""
    answer = np.asarray(infer(np.zeros((1, *instance_shape), dtype=dtype)))
    if answer.shape != (1, num_classes + extra_columns):
        raise ValueError(f"warm-up answered shape {list(answer.shape)}, expected [1, {num_classes + extra_columns}]")
    probabilities = answer[:, :num_classes]
    if not np.isfinite(probabilities).all() or abs(float(probabilities.sum()) - 1.0) > 1e-3:
        raise ValueError(f"warm-up answered {probabilities.tolist()}, which are not softmax probabilities")
    return probabilities
