"""The model repository: every models/<name>/<version>/ loaded into ONNX Runtime, kept in step with the disk.

A version is served only after its card is valid (service.inference.card), model.onnx matches the card's
sha256, the graph takes the input the card describes (name, rank, fixed dimensions, element type) and
answers [N,C] for the card's C classes, and a warm-up inference answered probabilities. Anything else leaves the version UNAVAILABLE with the reason in its status
and the log; the other versions and models keep serving.

New, changed and removed versions are picked up by `refresh()` (run every `watch_interval_s` and by
the reload endpoint, through `CoalescingRescans`: reloads at any rate cost one running and one pending scan). The table of served versions is replaced as a whole, so a request that already
holds a `ServedModel` finishes on it; a retired version stops its runner only once its requests are done.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from service.inference import runtime
from service.inference.batching import DirectRunner, DynamicBatcher
from service.inference.card import CardError, ModelCard, check_graph, fixed_batch, parse_card
from service.inference.model_input import ModelInput
from service.inference.rescans import CoalescingRescans
from service.config import SOLO_MIN_RUN_MS, Settings, available_cpus
from service.errors import ModelNotFound, ModelNotReady, VersionNotFound
from service.observability import Metrics
from service.trust.assess import TrustPolicy

logger = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION_DIR = re.compile(r"[1-9][0-9]{0,8}")
STAGING_PREFIX = ".tmp-"  # where service/model_import/publish.py writes a version before renaming it into place
NAME_RULE = "model names are 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def _not_ready(message: str, state: str) -> ModelNotReady:
    """A version still loading will serve soon: 503 with Retry-After. One that failed to load stays failed until its
    files change: 400, a status clients do not retry (as Triton answers for a model that is not ready)."""
    if state == LOADING:
        return ModelNotReady(message, status_code=503, headers={"Retry-After": "1"})
    return ModelNotReady(message + "; it serves again once its files are fixed", status_code=400)


class LoadError(Exception):
    """Why a version directory cannot be served."""


def check_model_name(name: str) -> None:
    """Reject names that are not plain directory names of the repository (e.g. '..', 'a/b', '%2e%2e')."""
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise ModelNotFound(f"{name!r} is not a valid model name: {NAME_RULE}", code="invalid_model_name")


class ServedModel:
    """One loaded model version: its card and a runner feeding its ONNX Runtime session."""

    def __init__(self, name: str, version: int, card: dict, path: Path, session, settings: Settings, metrics: Metrics | None,
                 solo_session: Callable[..., object] | None = None):
        """`solo_session(intra_op_threads=N)`: makes a second session of the model for runs of one picture
        (settings' ort_solo_threads), or None for none."""
        self.name = name
        self.version = version
        self.card = card
        self.spec: ModelCard = parse_card(card)
        self.path = path
        self.classes: list[str] = list(self.spec.classes)
        self.input = ModelInput(self.spec.input)
        self.input_name: str = self.spec.input.name
        self.output_name: str = self.spec.output.name
        # Request limits scale with the input: a request's float32 batch stays within the byte budget.
        self.max_instances = self.input.max_instances(settings.max_instances, settings.max_request_tensor_bytes)
        self.max_body_bytes = self.input.max_body_bytes(settings.max_body_bytes, self.max_instances)
        self.providers: list[str] = list(session.get_providers())
        self.trust = TrustPolicy.from_card(card)
        graph_outputs = {o.name for o in session.get_outputs()}
        # A card that names a typicality output the graph lacks is served without it (typicality null).
        self.has_typicality = self.trust.typicality_output is not None and self.trust.typicality_output in graph_outputs
        self._session = session
        raw_infer = self._infer_fn(session)
        self.solo_threads = 0
        if solo_session is not None and self.providers == [runtime.CPU]:
            threads = self._solo_threads(settings, raw_infer)
            shared_threads = max(settings.runtime_for(name).intra_op_threads, 1)
            if threads > shared_threads:
                solo_infer = self._infer_fn(solo_session(intra_op_threads=threads))
                raw_infer = runtime.with_solo_session(raw_infer, solo_infer, threads - shared_threads, available_cpus())
                self.solo_threads = threads
        self.infer = metrics.timed_inference(raw_infer, name, version) if metrics else raw_infer
        batching = settings.batching_for(name)
        # A run on the inference thread is timed by that thread's CPU time on CPU (which leaves out GIL waits), by the
        # wall clock on a GPU, where a run waits for the device. Runs on the event loop: always the wall clock.
        clock = time.thread_time if self.providers == [runtime.CPU] else time.perf_counter
        inline_below_s = settings.inline_inference_ms / 1000.0
        if batching.batching:
            self._runner = DynamicBatcher(
                self.infer,
                max_batch_size=batching.max_batch_size,
                max_delay_s=batching.max_delay_ms / 1000.0,
                max_queue=settings.max_queue,
                inline_below_s=inline_below_s,
                clock=clock,
            )
        else:
            self._runner = DirectRunner(self.infer, max_queue=settings.max_queue, inline_below_s=inline_below_s, clock=clock)
        self._in_flight = 0
        self._retired = False
        self._idle: asyncio.Event | None = None

    def _infer_fn(self, session) -> runtime.InferFn:
        """The session's blocking inference function, warmed up (which also proves it answers probabilities)."""
        typicality = self.trust.typicality_output if self.has_typicality else None
        infer = runtime.make_infer_fn(
            session, self.input_name, self.output_name,
            logits=self.spec.output.kind == "logits", fixed_batch=fixed_batch(session.get_inputs()), typicality_output=typicality,
        )
        runtime.warm_up(infer, len(self.classes), self.input.instance_shape, self.input.dtype, 1 if typicality else 0)
        return infer

    def _solo_threads(self, settings: Settings, infer: runtime.InferFn) -> int:
        """Threads for a run of one picture alone: the model's or the global setting, else every CPU this worker may
        use when one warm run takes SOLO_MIN_RUN_MS or more (threads do not pay on a run of a fraction of a ms)."""
        chosen = settings.runtime_for(self.name).solo_threads
        if chosen is not None:
            return chosen
        picture = np.zeros((1, *self.input.instance_shape), dtype=self.input.dtype)
        started = time.perf_counter()
        infer(picture)
        run_ms = 1000 * (time.perf_counter() - started)
        return available_cpus() if run_ms >= SOLO_MIN_RUN_MS else 0

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """The model's input batch [N, *instance_shape] -> float32 [N,C] probabilities, through this version's runner."""
        answer = await self._submit(images)
        return answer[:, : len(self.classes)] if self.has_typicality else answer

    async def predict_scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities [N,C], typicality [N] or None when the model has no typicality output)."""
        answer = await self._submit(images)
        if not self.has_typicality:
            return answer, None
        return answer[:, : len(self.classes)], answer[:, len(self.classes)]

    async def _submit(self, images: np.ndarray) -> np.ndarray:
        if self._retired:  # a request that got this version just before it was replaced
            return await asyncio.to_thread(self.infer, images)
        self._in_flight += 1
        try:
            return await self._runner.submit(images)
        finally:
            self._in_flight -= 1
            if self._retired and self._in_flight == 0 and self._idle is not None:
                self._idle.set()

    async def retire(self) -> None:
        """Stop the runner once every request already submitted to it has its answer."""
        self._retired = True
        if self._in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()
        await self._runner.close()


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # READY | UNAVAILABLE | LOADING
    reason: str | None = None
    providers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelDescription:
    name: str
    versions: list[VersionStatus]  # ascending
    default_version: int | None  # the highest READY version

    @property
    def state(self) -> str:
        if self.default_version is not None:
            return READY
        return LOADING if any(v.state == LOADING for v in self.versions) else UNAVAILABLE


@dataclass
class _Slot:
    status: VersionStatus
    fingerprint: tuple | None = None
    model: ServedModel | None = None


def _keep_serving(model: ServedModel, why: str | None, fingerprint: tuple | None = None) -> _Slot:
    """A version still served from its last good load, whose files on disk no longer load."""
    reason = f"serving the last good load; the files on disk do not load: {why}"
    return _Slot(VersionStatus(model.version, READY, reason, tuple(model.providers)), fingerprint, model)


# What the disk holds: name -> version -> (directory, fingerprint or None while incomplete).
_OnDisk = dict[str, dict[int, tuple[Path, tuple | None]]]


def _fingerprint(version_dir: Path) -> tuple | None:
    """Changes whenever the directory is replaced or its files are rewritten; None if a file is missing."""
    try:
        directory, card = version_dir.stat(), (version_dir / "model.json").stat()
        onnx_file = (version_dir / "model.onnx").stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (directory.st_ino, card.st_mtime_ns, card.st_size, onnx_file.st_mtime_ns, onnx_file.st_size)


def read_card(version_dir: Path, name: str, version: int) -> tuple[dict, bytes]:
    """The validated card and the ONNX bytes it vouches for (sha256 checked)."""
    try:
        card = json.loads((version_dir / "model.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LoadError(f"model.json is not readable JSON: {error}") from error
    if not isinstance(card, dict):
        raise LoadError("model.json must hold a JSON object")
    if card.get("name") != name or card.get("version") != version:
        raise LoadError(f"model.json describes {card.get('name')!r} version {card.get('version')!r}, not {name!r} version {version}")
    try:
        spec = parse_card(card)
    except CardError as error:
        raise LoadError(str(error)) from None
    if spec.onnx.file != "model.onnx":
        raise LoadError(f"model.json names ONNX file {spec.onnx.file!r}; the repository layout requires 'model.onnx'")
    model_bytes = (version_dir / "model.onnx").read_bytes()
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != spec.onnx.sha256.lower():
        raise LoadError(f"model.onnx sha256 is {digest} but model.json says {spec.onnx.sha256}")
    return card, model_bytes


def check_signature(session, card: dict) -> None:
    """The graph must take the card's input and answer [N,C] for its C classes (service.inference.card.check_graph)."""
    try:
        check_graph(session.get_inputs(), session.get_outputs(), parse_card(card))
    except CardError as error:
        raise LoadError(str(error)) from None


class ModelRepository:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.root = Path(settings.model_repository)
        self.metrics = metrics
        self.providers = runtime.ProviderResolver(settings.providers)
        self.started = False
        self._models: dict[str, dict[int, _Slot]] = {}
        self._defaults: dict[str, ServedModel] = {}  # each model's highest ready version, kept with _models
        self._lock = asyncio.Lock()
        self._watch_task: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()
        self._rescans = CoalescingRescans(self.refresh)  # reloads, the watcher, other worker processes

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory (set PIXELSERVE_MODEL_REPOSITORY)")
        await self.refresh()
        self.started = True
        if self.settings.watch_interval_s > 0:
            self._watch_task = asyncio.create_task(self._watch(), name="model-repository-watch")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        await self._rescans.stop()
        async with self._lock:
            models = [slot.model for versions in self._models.values() for slot in versions.values() if slot.model]
            self._models, self._defaults = {}, {}
        await asyncio.gather(*(model.retire() for model in models), *self._retiring)
        self.started = False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            try:
                await self._rescans.rescan()
            except Exception:  # logged where it failed; a scan that failed once (a directory vanishing mid-scan) is retried
                pass

    def refresh_soon(self) -> None:
        """Rescan the whole repository in the background (another worker process was asked to reload); joins a
        pending rescan if there is one."""
        if self.started:
            self._rescans.ask()

    # --- lookups (event loop, no awaits: they see one consistent table) -----------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def describe(self, name: str) -> ModelDescription:
        versions = self._versions(name)
        statuses = [versions[v].status for v in sorted(versions)]
        ready = [s.version for s in statuses if s.state == READY]
        return ModelDescription(name, statuses, max(ready) if ready else None)

    def get(self, name: str, version: int | None = None) -> ServedModel:
        if version is None:
            served = self._defaults.get(name)  # the common case, answered without building a description
            if served is not None:
                return served
        versions = self._versions(name)
        if version is None:
            description = self.describe(name)
            if description.default_version is None:
                why = "; ".join(f"version {s.version}: {s.state.lower()} ({s.reason})" for s in description.versions)
                raise _not_ready(f"model {name!r} has no version ready to serve ({why or 'no versions'})", description.state)
            version = description.default_version
        slot = versions.get(version)
        if slot is None:
            raise VersionNotFound(f"model {name!r} has no version {version} (versions: {sorted(versions) or 'none'})")
        if slot.model is None:
            raise _not_ready(f"version {version} of model {name!r} is {slot.status.state.lower()}: {slot.status.reason}", slot.status.state)
        return slot.model

    def _versions(self, name: str) -> dict[int, _Slot]:
        check_model_name(name)
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(f"no model named {name!r} (models: {', '.join(self.names()) or 'none'})")
        return versions

    # --- keeping in step with the disk -----------------------------------------------------------

    async def reload(self, name: str) -> ModelDescription:
        """Rescan one model's directory now (new, changed, removed versions) and describe the result."""
        check_model_name(name)
        await self._rescans.rescan(name)  # joins the pending rescan, if any: a storm of reloads costs one or two scans
        return self.describe(name)

    async def refresh(self, only: Collection[str] | None = None) -> None:
        """Rescan the whole repository, or only the directories of the models named in `only`."""
        async with self._lock:
            scan = await asyncio.to_thread(self._scan, only)
            names = sorted(only) if only is not None else sorted(set(self._models) | set(scan))
            retired: list[ServedModel] = []
            for name in names:
                on_disk = scan.get(name)
                if on_disk is None:
                    if name in self._models:
                        logger.info("model %s left the repository", name, extra={"model": name})
                        retired += [s.model for s in self._models[name].values() if s.model]
                        self._publish(name, None)
                    continue
                retired += await self._sync_model(name, on_disk)
        for model in retired:
            logger.info("retiring %s version %d", model.name, model.version, extra={"model": model.name, "version": model.version})
            replacement = self._models.get(model.name, {}).get(model.version)
            if self.metrics and not (replacement and replacement.model):  # a reloaded version keeps its gauge
                self.metrics.forget_model(model.name, model.version)
            task = asyncio.create_task(model.retire())
            self._retiring.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._retiring.discard)

    def _scan(self, only: Collection[str] | None) -> _OnDisk:
        scan: _OnDisk = {}
        model_dirs = [self.root / name for name in sorted(only)] if only is not None else sorted(self.root.iterdir())
        for model_dir in model_dirs:
            if not (MODEL_NAME.fullmatch(model_dir.name) and model_dir.is_dir()):
                continue
            try:
                entries = list(model_dir.iterdir())
                versions = {
                    int(version_dir.name): (version_dir, _fingerprint(version_dir))
                    for version_dir in entries  # '.tmp-*' staging directories do not match
                    if VERSION_DIR.fullmatch(version_dir.name) and version_dir.is_dir()
                }
            except FileNotFoundError:  # removed while we looked: gone
                continue
            if not versions and any(entry.name.startswith(STAGING_PREFIX) for entry in entries):
                continue  # only an export's staging directory: the first version of a model still being written, or left by a killed export
            scan[model_dir.name] = versions
        return scan

    async def _sync_model(self, name: str, on_disk: dict[int, tuple[Path, tuple | None]]) -> list[ServedModel]:
        """Load what is new or changed, drop what is gone; returns the versions to retire."""
        current = dict(self._models.get(name, {}))
        retired = [slot.model for v, slot in current.items() if v not in on_disk and slot.model]
        for version in [v for v in current if v not in on_disk]:
            del current[version]
        for version, (version_dir, fingerprint) in sorted(on_disk.items()):
            slot = current.get(version)
            if slot is not None and slot.fingerprint == fingerprint:
                continue
            serving = slot.model if slot is not None else None
            if fingerprint is None:  # a directory still being filled in place: look again next scan
                why = "waiting for model.json and model.onnx"
                current[version] = _keep_serving(serving, why) if serving else _Slot(VersionStatus(version, LOADING, why))
                continue
            if serving is None:  # a version a request may be waiting for: say it is loading meanwhile
                current[version] = _Slot(VersionStatus(version, LOADING, "loading"), fingerprint)
                self._publish(name, current)
                current = dict(current)
            loaded = await asyncio.to_thread(self._load, name, version, version_dir, fingerprint)
            if loaded.model is None and serving is not None:
                # Its files were edited in place (truncated, half copied) and no longer load: the last good load
                # goes on serving, with the failure in its status; the next change of the files is tried again.
                logger.error(
                    "%s version %d changed on disk and cannot be loaded; still serving its last good load",
                    name, version, extra={"model": name, "version": version},
                )
                current[version] = _keep_serving(serving, loaded.status.reason, fingerprint)
                continue
            if serving is not None:
                retired.append(serving)
            current[version] = loaded
        self._publish(name, current)
        return retired

    def _publish(self, name: str, versions: dict[int, _Slot] | None) -> None:
        """Swap in a new version table for one model (readers never see it half-built)."""
        models, defaults = dict(self._models), dict(self._defaults)
        defaults.pop(name, None)
        if versions is None:
            models.pop(name, None)
        else:
            models[name] = versions
            ready = [v for v, slot in versions.items() if slot.model is not None]
            if ready:
                defaults[name] = versions[max(ready)].model
        self._models, self._defaults = models, defaults

    def _load(self, name: str, version: int, version_dir: Path, fingerprint: tuple) -> _Slot:
        started = time.perf_counter()
        try:
            card, model_bytes = read_card(version_dir, name, version)
            try:
                own = self.settings.runtime_for(name)
                session = runtime.create_session(
                    model_bytes,
                    self.providers,
                    intra_op_threads=own.intra_op_threads,
                    inter_op_threads=own.inter_op_threads,
                    cuda_conv_algo_search=self.settings.cuda_conv_algo_search,
                    allowed=own.providers,
                )
            except Exception as error:  # ONNX Runtime raises its own exception types for bad graphs
                raise LoadError(f"ONNX Runtime cannot load model.onnx: {error}") from error
            check_signature(session, card)
            try:
                solo = partial(runtime.create_session, model_bytes, self.providers, inter_op_threads=1, spinning=False,
                               allowed=[runtime.CPU])
                model = ServedModel(name, version, card, version_dir, session, self.settings, self.metrics, solo)
            except Exception as error:  # the warm-up failed or answered something that is not probabilities
                raise LoadError(f"warm-up inference failed: {error}") from error
        except (LoadError, OSError) as error:
            reason = str(error)
            logger.error("cannot serve %s version %d: %s", name, version, reason, extra={"model": name, "version": version})
            if self.metrics:
                self.metrics.load_failures.labels(name, str(version)).inc()
            return _Slot(VersionStatus(version, UNAVAILABLE, reason), fingerprint)
        elapsed = time.perf_counter() - started
        logger.info(
            "loaded %s version %d on %s in %.3f s%s", name, version, ", ".join(model.providers), elapsed,
            f" (runs of one picture on {model.solo_threads} threads)" if model.solo_threads else "",
            extra={"model": name, "version": version, "providers": model.providers, "solo_threads": model.solo_threads},
        )
        if self.metrics:
            self.metrics.set_providers(name, version, model.providers)
        return _Slot(VersionStatus(version, READY, None, tuple(model.providers)), fingerprint, model)
