"""The datasets' test pictures for the trust tests, as the models take them (MNIST_DIR names another folder of
the MNIST IDX files than training's default; a missing dataset fails the test with training's explanation)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from training.data import load_splits


def dataset_pictures(dataset: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` pictures of the dataset's test split: float32 [N,1,28,28] in [0, 1], and labels."""
    data_dir = Path(os.environ["MNIST_DIR"]) if dataset == "mnist" and os.environ.get("MNIST_DIR") else None
    splits = load_splits(dataset, data_dir)
    return (splits.test_images[:count].astype(np.float32) / 255.0)[:, None], splits.test_labels[:count]
