"""The model card: what a served model is, what it expects, how it was made and how well it does."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime
import onnxscript
import torch

from training.data import Splits
from training.photos import PhotoPreprocessing
from training.train import TrainConfig, TrainResult

PREPROCESSING = {
    "digits": {
        "method": "mnist-digit",
        "description": (
            "a picture becomes grey, white ink on black (inverted when the background is light), "
            "cropped to its ink, scaled to fit 20x20 and centred by centre of mass in 28x28, "
            "pixels scaled to [0, 1], as the MNIST digits were prepared"
        ),
    },
    "fashion": {
        "method": "fashion-fit",
        "description": (
            "a picture becomes grey, light object on black (inverted when the background is light), "
            "fitted into 28x28 keeping its aspect ratio and centred, pixels scaled to [0, 1], "
            "as the Fashion-MNIST product photos were prepared"
        ),
    },
}


def library_versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def build_card(
    *,
    name: str,
    splits: Splits,
    architecture: dict,
    config: TrainConfig,
    result: TrainResult,
    test_summary: dict,
    opset: int,
    photo: PhotoPreprocessing | None = None,
    dataset_options: dict | None = None,
) -> dict:
    """The card without `version` and `onnx.sha256`, which publishing fills in. `photo` is given for
    models of folders of pictures: their input, output and preprocessing sections take the generalised
    shape (docs/models.md); the digit models' sections stay as they always were."""
    spec = splits.dataset
    classes = list(spec.classes)
    hyperparameters = asdict(config)
    threads = hyperparameters.pop("threads")
    if photo is None:
        input_section = {
            "name": "input",
            "shape": ["N", 1, 28, 28],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "polarity": "white-on-black",
        }
        output = {"name": "probabilities", "shape": ["N", len(classes)], "dtype": "float32", "activation": "softmax"}
        preprocessing = PREPROCESSING[spec.task]
    else:
        input_section = photo.card_input()
        output = {"name": "probabilities", "kind": "probabilities", "shape": ["N", len(classes)], "dtype": "float32",
                  "activation": "softmax"}
        preprocessing = photo.card_preprocessing()
    training = {"dataset": spec.name}
    if dataset_options is not None:
        training["dataset_options"] = dataset_options
    return {
        "name": name,
        "task": spec.task,
        "classes": classes,
        "architecture": architecture,
        "input": input_section,
        "output": output,
        "preprocessing": preprocessing,
        "metrics": {
            "test_accuracy": round(test_summary["accuracy"], 4),
            "test_split": splits.test_split,
            "test_size": test_summary["size"],
            "validation_accuracy": round(result.best_val_accuracy, 4),
            "per_class_accuracy": test_summary["per_class_accuracy"],
            "measured_with": "onnxruntime on the exported model.onnx",
        },
        "training": {
            **training,
            "split": splits.split,
            "train_size": int(len(splits.train_labels)),
            "validation_size": int(len(splits.val_labels)),
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "seed": config.seed,
            "hyperparameters": hyperparameters,
            "wall_time_s": round(result.wall_time_s, 1),
            "images_per_s": round(result.images_per_s, 1),
            "cpu_threads": threads,
            "library_versions": library_versions(),
        },
        "onnx": {"file": "model.onnx", "opset": opset},
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
