"""Fit the trust sections (service.trust) for a model trained on one of our datasets, and publish the result.

Used after training (the temperature on the validation split, the Gaussians on the training split, measured on
the test split) and by `python -m training calibrate` on an already published version: the next version gets the
same weights with the temperature folded in, the `typicality` output, the updated card and a reliability diagram.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import onnx

from service.trust.fit import TrustFit, fit_trust, with_trust
from training.data import Splits, load_splits
from training.export import publish
from training.report import plot_reliability

REPORT_FILES = ("report.json", "learning_curves.png", "confusion_matrix.png", "misclassified.png")


def model_inputs(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [0, 1], as the exported graph takes them."""
    return (np.asarray(images, dtype=np.float32) / 255.0)[:, np.newaxis]


def fit_on_splits(proto: onnx.ModelProto, card: dict, splits: Splits, layers: str = "input") -> TrustFit:
    return fit_trust(
        proto,
        output=card["output"]["name"],
        layers=layers,
        validation_inputs=model_inputs(splits.val_images), validation_labels=splits.val_labels,
        train_inputs=model_inputs(splits.train_images), train_labels=splits.train_labels,
        test_inputs=model_inputs(splits.test_images), test_labels=splits.test_labels,
        splits={
            "validation": f"the validation split ({len(splits.val_labels)} pictures) of {splits.split}",
            "train": f"the training split ({len(splits.train_labels)} pictures) of {splits.split}",
            "test": f"{splits.test_split} ({len(splits.test_labels)} pictures)",
        },
    )


def calibrate_published(
    version_dir: Path, data_dir: Path | None = None, *, download: bool = False, layers: str = "input"
) -> tuple[Path, dict]:
    """Fit trust on a published version and publish it as the next version of the same model."""
    version_dir = Path(version_dir)
    card = json.loads((version_dir / "model.json").read_text())
    proto = onnx.load(version_dir / card["onnx"]["file"])
    del proto.metadata_props[:]  # the card embedded by publish() is rewritten for the new version
    splits = load_splits(card["training"]["dataset"], data_dir, download=download, seed=card["training"].get("seed", 0))
    fit = fit_on_splits(proto, card, splits, layers)
    accuracy = fit.calibration["accuracy"]
    if not np.isclose(accuracy, card["metrics"]["test_accuracy"], atol=5e-4):
        raise RuntimeError(f"test accuracy {accuracy} differs from the card's {card['metrics']['test_accuracy']}")
    new_card = {k: v for k, v in with_trust(card, fit).items() if k not in ("version", "created_at")}
    new_card["derived_from"] = {"version": card["version"], "sha256": card["onnx"]["sha256"], "change": "temperature folded in, typicality output added"}
    new_card["onnx"] = {k: v for k, v in card["onnx"].items() if k != "sha256"}
    new_card["created_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def write_extras(directory: Path) -> None:
        for name in REPORT_FILES:
            if (version_dir / name).is_file():
                shutil.copy2(version_dir / name, directory / name)
        plot_reliability(fit.reliability, directory / "reliability.png", title=card["name"])

    published = publish(version_dir.parent.parent, card["name"], fit.model, new_card, write_extras)
    return published, json.loads((published / "model.json").read_text())
