"""The two jobs the command line runs: train -> export -> check -> publish, and evaluate a published model."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from service.model_import.publish import CARD_METADATA_KEY, publish
from service.trust.fit import with_trust
from training.card import build_card
from training.data import Splits, load_splits
from training.download import sha256_of
from training.export import MIN_PARITY_IMAGES, OPSET, check_parity, export_onnx, onnx_probabilities
from training.folders import FolderOptions, FolderSplits, folder_path, load_folder
from training.init_from import load_published_weights
from training.photo_batches import PhotoBatches
from training import real_clothes
from training.photo_mix import PhotoMixBatches, conditions_for, processed_pool
from training.models import build_model, count_parameters
from training.report import plot_reliability, summarize, write_report
from training.train import TrainConfig, fit
from training.trust import fit_on_splits


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
    folder_options: FolderOptions | None = None,
    augmentation: PhotoAugmentation | None = None,
    real_photos: Path | None = None,
) -> tuple[Path, dict]:
    """Train a classifier, export it, check the export, and publish it as the next version of `name`.

    `dataset` is a named dataset (mnist, fashion-mnist) or `folder:PATH`, a folder of pictures read with
    `folder_options` and trained with the photo `augmentation`. `real_photos` is the folder of the real
    clothes photos (training/real_clothes.py) a share `config.real_mix` of each batch is drawn from."""
    arch_options = arch_options or {}
    splits = load_dataset(dataset, data_dir, download=download, mirrors=mirrors,
                          validation_fraction=validation_fraction, seed=config.seed, folder_options=folder_options)
    if limit_train is not None:
        splits.train_images = splits.train_images[:limit_train]
        splits.train_labels = splits.train_labels[:limit_train]
        splits.split += f"; only the first {len(splits.train_labels)} training images used"
    classes = list(splits.dataset.classes)
    photo = splits.preprocessing if isinstance(splits, FolderSplits) else None
    shape = {"in_channels": photo.channels, "image_size": photo.size} if photo else {}
    torch.manual_seed(config.seed)  # the seed governs the initial weights too
    classifier = build_model(arch, len(classes), **arch_options, **shape)
    if config.init_from:
        load_published_weights(classifier, Path(config.init_from))
    batches = None
    pool = real = None
    if photo is None and config.photo_mix > 0 and config.photo_pool > 0:
        pool = processed_pool(splits.train_images, splits.train_labels, dataset, config.photo_pool, config.seed)
        splits.split += (
            f"; {len(pool[0])} of the training pictures also as synthetic photos ({', '.join(conditions_for(dataset))}) "
            f"run through the service's preprocessing, a share {config.photo_mix} of each batch drawn from them"
        )
    if photo is None and config.real_mix > 0:
        if real_photos is None or dataset != "fashion-mnist":
            raise ValueError("real photos (real_mix > 0) are clothes: give their folder, with fashion-mnist")
        real = real_clothes.processed(real_photos, "train")
        splits.split += "; " + real_clothes.description(len(real[1]), config.real_mix)
    if pool is not None or real is not None:
        batches = PhotoMixBatches(splits, config, pool, real)
    if photo is not None:
        augmentation = augmentation or PhotoAugmentation()
        batches = PhotoBatches(splits.train_images, splits.train_labels, photo, min_scale=augmentation.min_scale,
                               hflip=augmentation.hflip, jitter=augmentation.jitter)
    result = fit(classifier, splits, config, progress=progress, batches=batches)

    trust = None
    if photo is None:
        proto = export_onnx(classifier)
        probabilities = check_parity(proto, classifier, splits.test_images)
        # Calibration and typicality: fitted on the exported graph, folded into the graph that is published.
        # (Folder-trained photo models are published without them for now: see docs/trust.md.)
        trust = fit_on_splits(proto, {"output": {"name": "probabilities"}}, splits)
        proto = trust.model
        probabilities = onnx_probabilities(proto, splits.test_images)
        shown_images = splits.test_images
    else:
        proto = export_onnx(classifier, (photo.channels, photo.size, photo.size))
        probabilities = check_parity(proto, classifier, parity_inputs(splits, batches, config.seed))
        probabilities = probabilities[: len(splits.test_labels)]
        shown_images = splits.test_views
    summary = summarize(splits.test_labels, probabilities, classes)
    architecture = {
        "arch": arch,
        "parameters": count_parameters(classifier),
        "description": classifier.description,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in arch_options.items()},
    }
    dataset_options = None
    if photo is not None:
        dataset_options = {**splits.options.as_dict(), "validation_fraction": validation_fraction,
                           "augmentation": asdict(augmentation)}
    card = build_card(
        name=name, splits=splits, architecture=architecture, config=config,
        result=result, test_summary=summary, opset=OPSET, photo=photo, dataset_options=dataset_options,
    )
    if trust is not None:
        card = with_trust(card, trust)
    history = [asdict(stats) for stats in result.history]

    def write_extras(directory: Path) -> None:
        write_report(
            directory, summary=summary, history=history, classes=classes,
            test_images=shown_images, test_labels=splits.test_labels, probabilities=probabilities,
        )
        if trust is not None:
            plot_reliability(trust.reliability, directory / "reliability.png", title=name)

    version_dir = publish(models_dir, name, proto, card, write_extras)
    return version_dir, json.loads((version_dir / "model.json").read_text())


@dataclass(frozen=True)
class PhotoAugmentation:
    """The augmentations of training on pictures (training/photo_batches.py)."""

    min_scale: float = 0.35  # random resized crops cover this share of the area or more; 1 = no random crop
    hflip: bool = True
    jitter: float = 0.3  # brightness, contrast and saturation factors in [1 - jitter, 1 + jitter]; 0 = none


def load_dataset(
    dataset: str, data_dir: Path | None = None, *, download: bool = False, mirrors: Sequence[str] = (),
    validation_fraction: float = 0.1, seed: int = 0, folder_options: FolderOptions | None = None,
) -> Splits | FolderSplits:
    """A named dataset's splits, or a folder's (`folder:PATH`)."""
    if folder_path(dataset) is not None:
        return load_folder(dataset, folder_options or FolderOptions(), validation_fraction=validation_fraction, seed=seed)
    return load_splits(dataset, data_dir, download=download, mirrors=mirrors,
                       validation_fraction=validation_fraction, seed=seed)


def parity_inputs(splits: FolderSplits, batches: PhotoBatches, seed: int) -> np.ndarray:
    """The test inputs first, then validation, then augmented training views up to the parity gate's
    minimum: a folder of your own pictures may hold fewer test pictures than the gate wants."""
    inputs = [splits.test_images, splits.val_images]
    count = len(splits.test_images) + len(splits.val_images)
    generator = torch.Generator().manual_seed(seed)
    while count < MIN_PARITY_IMAGES:
        index = torch.randint(0, len(batches), (min(256, MIN_PARITY_IMAGES - count),), generator=generator)
        inputs.append(batches.batch(index, generator).numpy())
        count += len(index)
    return np.concatenate(inputs)


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
    training = card["training"]
    options = dict(training.get("dataset_options") or {})
    validation_fraction = options.pop("validation_fraction", 0.1)
    options.pop("augmentation", None)
    splits = load_dataset(training["dataset"], data_dir, download=download, validation_fraction=validation_fraction,
                          seed=training.get("seed", 0), folder_options=FolderOptions(**options) if options else None)
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
