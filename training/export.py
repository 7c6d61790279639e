"""ONNX export with a parity check against PyTorch, and atomic publication into the model repository."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from training.card import embed_card
from training.download import sha256_of
from training.models import WithSoftmax
from training.train import to_tensor

logger = logging.getLogger(__name__)

OPSET = 18
MIN_PARITY_IMAGES = 512
PARITY_TOLERANCE = 1e-5


class ExportRefused(RuntimeError):
    """The exported graph is not faithful to the trained model (or not well-formed); nothing was published."""


def export_onnx(classifier: nn.Module, input_shape: tuple[int, int, int] = (1, 28, 28)) -> onnx.ModelProto:
    """Trace classifier + softmax into an ONNX graph: input `input` [N, *input_shape], output `probabilities` [N,C]."""
    model = WithSoftmax(classifier).eval()
    batch = torch.export.Dim("N", min=1, max=1 << 20)
    # The exporter narrates its steps and warns about optional packages; keep the console for training.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (torch.rand(2, *input_shape),),
            input_names=["input"],
            output_names=["probabilities"],
            opset_version=OPSET,
            dynamic_shapes={"input": {0: batch}},
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportRefused(f"the exported graph fails onnx.checker: {exc}") from exc
    return proto


def onnx_probabilities(proto: onnx.ModelProto, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    chunks = [
        session.run(["probabilities"], {"input": to_tensor(images[i : i + batch_size]).numpy()})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def check_parity(proto: onnx.ModelProto, classifier: nn.Module, images: np.ndarray) -> np.ndarray:
    """Compare ONNX Runtime with PyTorch on `images`; return the ONNX probabilities if they agree."""
    if len(images) < MIN_PARITY_IMAGES:
        raise ExportRefused(f"parity needs at least {MIN_PARITY_IMAGES} images, got {len(images)}")
    expected = []
    with torch.no_grad():
        model = WithSoftmax(classifier).eval()
        for i in range(0, len(images), 1000):
            expected.append(model(to_tensor(images[i : i + 1000])).numpy())
    expected = np.concatenate(expected)
    actual = onnx_probabilities(proto, images)
    if actual.shape != expected.shape:
        raise ExportRefused(f"ONNX output shape {actual.shape} differs from PyTorch's {expected.shape}")
    difference = float(np.abs(actual - expected).max())
    disagreements = int((actual.argmax(1) != expected.argmax(1)).sum())
    if difference > PARITY_TOLERANCE or disagreements:
        raise ExportRefused(
            f"ONNX Runtime and PyTorch disagree on {len(images)} images: max abs difference "
            f"{difference:.3g} (allowed {PARITY_TOLERANCE}), {disagreements} different top classes"
        )
    return actual


# A staging directory is named .tmp-<pid>-<host>-<random>: the process that writes it, on which host (a models
# volume may be shared by containers, whose pids mean nothing to each other).
STAGING_PREFIX = ".tmp-"
_STAGING_NAME = re.compile(r"\.tmp-(?P<pid>[0-9]+)-(?P<host>[A-Za-z0-9]*)-")
# Staging left by a writer that is gone (killed mid-export) is removed at the next export: at once where its pid is
# known dead on this host, else once older than this (an export writes its directory within seconds).
STALE_STAGING_S = 30 * 60


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def is_stale_staging(path: Path, *, now: float | None = None) -> bool:
    """Whether `path` is an export's staging directory whose writer is gone."""
    if not path.name.startswith(STAGING_PREFIX) or not path.is_dir():
        return False
    match = _STAGING_NAME.match(path.name)
    if match and match["host"] == _host() and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
        return True
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_STAGING_S


def remove_stale_staging(models_dir: Path) -> list[Path]:
    """Remove the staging directories that killed exports left in every model of the repository, and a model
    directory that held nothing else (the first export of a new model, killed). Returns what was removed."""
    removed = []
    for model_root in Path(models_dir).iterdir() if Path(models_dir).is_dir() else ():
        if not model_root.is_dir() or model_root.name.startswith("."):
            continue
        stale = [path for path in model_root.glob(STAGING_PREFIX + "*") if is_stale_staging(path)]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        if stale:
            with contextlib.suppress(OSError):  # not empty: it holds versions or a live export
                model_root.rmdir()
    return removed


def next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    return max(versions, default=0) + 1


def _write_model(directory: Path, proto: onnx.ModelProto, card: dict, version: int) -> dict:
    card = {"name": card["name"], "version": version, **card, "onnx": dict(card["onnx"])}
    embed_card(proto, card)
    onnx.save_model(proto, directory / card["onnx"]["file"])
    # The hash is taken last, of the file exactly as it will be served.
    card["onnx"]["sha256"] = sha256_of(directory / card["onnx"]["file"])
    (directory / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def publish(
    models_dir: Path,
    name: str,
    proto: onnx.ModelProto,
    card: dict,
    write_extras: Callable[[Path], None] | None = None,
) -> Path:
    """Write model.onnx + model.json (+ extras) into a hidden temporary directory beside the versions,
    then rename it to the next free version number, so the version appears complete or not at all."""
    for path in remove_stale_staging(models_dir):
        logger.info("removed %s, left by an export that did not finish", path)
    model_root = Path(models_dir) / name
    created_root = not model_root.exists()
    model_root.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{_host()}-", dir=model_root))
    try:
        if write_extras is not None:
            write_extras(temp)
        while True:
            version = next_version(model_root)
            _write_model(temp, proto, card, version)
            os.chmod(temp, 0o755)  # mkdtemp makes it private; the published version is for everyone
            try:
                os.rename(temp, model_root / str(version))
                return model_root / str(version)
            except OSError:
                if not (model_root / str(version)).exists():
                    raise
                # Another publisher took this number meanwhile: take the next one.
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if created_root:
            with contextlib.suppress(OSError):
                model_root.rmdir()
        raise
