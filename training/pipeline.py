"""The two jobs the command line runs: train -> export -> check -> publish, and evaluate a published model."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from training.card import CARD_METADATA_KEY, build_card
from training.data import load_splits
from training.download import sha256_of
from training.export import OPSET, check_parity, export_onnx, onnx_probabilities, publish
from training.models import build_model, count_parameters
from training.report import plot_reliability, summarize, write_report
from training.train import TrainConfig, fit
from training.trust import fit_on_splits, with_trust


def train_and_publish(
    *,
    dataset: str,
    arch: str,
    name: str,
    models_dir: Path,
    config: TrainConfig,
    arch_options: dict | None = None,
    data_dir: Path | None = None,
    download: bool = False,
    mirrors: Sequence[str] = (),
    validation_fraction: float = 0.1,
    limit_train: int | None = None,
    progress: bool = True,
) -> tuple[Path, dict]:
    """Train a classifier, export it, check the export, and publish it as the next version of `name`."""
    arch_options = arch_options or {}
    splits = load_splits(
        dataset, data_dir, download=download, mirrors=mirrors,
        validation_fraction=validation_fraction, seed=config.seed,
    )
    if limit_train is not None:
        splits.train_images = splits.train_images[:limit_train]
        splits.train_labels = splits.train_labels[:limit_train]
        splits.split += f"; only the first {len(splits.train_labels)} training images used"
    classes = list(splits.dataset.classes)
    torch.manual_seed(config.seed)  # the seed governs the initial weights too
    classifier = build_model(arch, len(classes), **arch_options)
    result = fit(classifier, splits, config, progress=progress)

    proto = export_onnx(classifier)
    probabilities = check_parity(proto, classifier, splits.test_images)
    # Calibration and typicality: fitted on the exported graph, folded into the graph that is published.
    trust = fit_on_splits(proto, {"output": {"name": "probabilities"}}, splits)
    proto = trust.model
    probabilities = onnx_probabilities(proto, splits.test_images)
    summary = summarize(splits.test_labels, probabilities, classes)
    architecture = {
        "arch": arch,
        "parameters": count_parameters(classifier),
        "description": classifier.description,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in arch_options.items()},
    }
    card = build_card(
        name=name, splits=splits, architecture=architecture, config=config,
        result=result, test_summary=summary, opset=OPSET,
    )
    card = with_trust(card, trust)
    history = [asdict(stats) for stats in result.history]

    def write_extras(directory: Path) -> None:
        write_report(
            directory, summary=summary, history=history, classes=classes,
            test_images=splits.test_images, test_labels=splits.test_labels, probabilities=probabilities,
        )
        plot_reliability(trust.reliability, directory / "reliability.png", title=name)

    version_dir = publish(models_dir, name, proto, card, write_extras)
    return version_dir, json.loads((version_dir / "model.json").read_text())


class ModelCheckFailed(RuntimeError):
    """A published model's files do not match its card."""


def evaluate_published(version_dir: Path, data_dir: Path | None = None, *, download: bool = False) -> dict:
    """Check a published model against its card and measure it with ONNX Runtime on its test split."""
    card = json.loads((version_dir / "model.json").read_text())
    onnx_path = version_dir / card["onnx"]["file"]
    actual_sha = sha256_of(onnx_path)
    if actual_sha != card["onnx"]["sha256"]:
        raise ModelCheckFailed(f"{onnx_path}: sha256 {actual_sha} differs from the card's {card['onnx']['sha256']}")
    proto = onnx.load(onnx_path)
    embedded = {entry.key: entry.value for entry in proto.metadata_props}.get(CARD_METADATA_KEY)
    expected_embedded = {**card, "onnx": {k: v for k, v in card["onnx"].items() if k != "sha256"}}
    if embedded is None or json.loads(embedded) != expected_embedded:
        raise ModelCheckFailed(f"{onnx_path}: the card in its metadata differs from model.json")
    splits = load_splits(card["training"]["dataset"], data_dir, download=download)
    start = time.perf_counter()
    probabilities = onnx_probabilities(proto, splits.test_images)
    seconds = time.perf_counter() - start
    summary = summarize(splits.test_labels, probabilities, list(card["classes"]))
    return {
        "name": card["name"],
        "version": card["version"],
        "test_split": splits.test_split,
        "card_test_split": card["metrics"]["test_split"],
        "test_accuracy": summary["accuracy"],
        "card_test_accuracy": card["metrics"]["test_accuracy"],
        "test_size": summary["size"],
        "per_class_accuracy": summary["per_class_accuracy"],
        "inference_images_per_s": round(len(probabilities) / seconds, 1),
        "agrees_with_card": bool(
            splits.test_split == card["metrics"]["test_split"]
            and np.isclose(summary["accuracy"], card["metrics"]["test_accuracy"], atol=5e-5)
        ),
    }
