"""Publishing an imported model: the next version of models/<name>/, appearing atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

CARD_METADATA_KEY = "model_card"  # where training puts the card in the ONNX metadata, too


def publish(repository: Path, name: str, model, card: dict, extras: dict[str, bytes] | None = None) -> Path:
    """Write model.onnx + model.json (and `extras`, file name -> bytes) into a hidden temporary directory beside
    the versions, then rename it to the next free version number, so the version appears complete or not at all
    (as training publishes)."""
    model_root = Path(repository) / name
    created_root = not model_root.exists()
    model_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_root))
    try:
        while True:
            version = max((int(p.name) for p in model_root.iterdir() if p.name.isdigit() and int(p.name) > 0), default=0) + 1
            card = {**card, "version": version, "onnx": {k: v for k, v in card["onnx"].items() if k != "sha256"}}
            del model.metadata_props[:]
            entry = model.metadata_props.add()
            entry.key, entry.value = CARD_METADATA_KEY, json.dumps(card)  # the file's own sha256 cannot be inside it
            model_bytes = model.SerializeToString()
            (staging / "model.onnx").write_bytes(model_bytes)
            card["onnx"]["sha256"] = hashlib.sha256(model_bytes).hexdigest()
            (staging / "model.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
            for file_name, content in (extras or {}).items():
                (staging / file_name).write_bytes(content)
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
            try:
                model_root.rmdir()
            except OSError:
                pass
        raise
