"""Publishing a version into the model repository, for training and the importer alike: models/<name>/<n>/
written into a hidden staging directory beside the versions and renamed to the next free number, so that a
server watching the repository sees the version complete or not at all. Staging left by a writer that was
killed is removed by the next publish."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)
CARD_METADATA_KEY = "model_card"  # where the card is copied into the ONNX metadata

# A staging directory is named .tmp-<pid>-<host>-<random>: the process that writes it, on which host (a models
# volume may be shared by containers, whose pids mean nothing to each other). The registry skips '.tmp-*'.
STAGING_PREFIX = ".tmp-"
_STAGING_NAME = re.compile(r"\.tmp-(?P<pid>[0-9]+)-(?P<host>[A-Za-z0-9]*)-")
# Staging left by a writer that is gone (killed mid-export) is removed at the next publish: at once where its pid
# is known dead on this host, else once older than this (a publish writes its directory within seconds).
STALE_STAGING_S = 30 * 60


def publish(repository: Path, name: str, model, card: dict, extras: Callable[[Path], None] | None = None) -> Path:
    """Publish `model` (an onnx.ModelProto) with its `card` as the next version of `name`; `extras` writes any
    other files (report, plots) into the staging directory first. Returns the version's directory."""
    for path in remove_stale_staging(repository):
        logger.info("removed %s, left by a publish that did not finish", path)
    model_root = Path(repository) / name
    created_root = not model_root.exists()
    model_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{_host()}-", dir=model_root))
    try:
        if extras is not None:
            extras(staging)
        while True:
            version = next_version(model_root)
            write_version(staging, model, card, version)
            os.chmod(staging, 0o755)  # mkdtemp makes it private; the published version is for everyone
            try:
                os.rename(staging, model_root / str(version))
                return model_root / str(version)
            except OSError:
                if not (model_root / str(version)).exists():
                    raise
                # Another publisher took this number meanwhile: take the next one.
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_root:
            with contextlib.suppress(OSError):
                model_root.rmdir()
        raise


def write_version(directory: Path, model, card: dict, version: int) -> dict:
    """model.onnx (the card in its metadata, without the file's own sha256, which cannot be inside the file it
    hashes) and model.json (with it) into `directory`; returns the card as written."""
    rest = {k: v for k, v in card.items() if k not in ("name", "version", "onnx")}
    card = {"name": card["name"], "version": version, **rest, "onnx": {k: v for k, v in card["onnx"].items() if k != "sha256"}}
    card["onnx"].setdefault("file", "model.onnx")
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, json.dumps(card)
    model_bytes = model.SerializeToString()
    (directory / card["onnx"]["file"]).write_bytes(model_bytes)
    card["onnx"]["sha256"] = hashlib.sha256(model_bytes).hexdigest()  # of the file exactly as it will be served
    (directory / "model.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card


def next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    return max(versions, default=0) + 1


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
    """Whether `path` is a publish's staging directory whose writer is gone."""
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


def remove_stale_staging(repository: Path) -> list[Path]:
    """Remove the staging directories that killed publishes left in every model of the repository, and a model
    directory that held nothing else (the first publish of a new model, killed). Returns what was removed."""
    removed = []
    for model_root in Path(repository).iterdir() if Path(repository).is_dir() else ():
        if not model_root.is_dir() or model_root.name.startswith("."):
            continue
        stale = [path for path in model_root.glob(STAGING_PREFIX + "*") if is_stale_staging(path)]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        if stale:
            with contextlib.suppress(OSError):  # not empty: it holds versions or a live publish
                model_root.rmdir()
    return removed
