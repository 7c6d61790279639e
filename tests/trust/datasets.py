"""The datasets' test pictures for the trust tests, as the models take them (MNIST is vendored in datasets/;
a missing dataset fails the test with training's explanation)."""

from __future__ import annotations

import numpy as np

from training.data import load_splits


def dataset_pictures(dataset: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` pictures of the dataset's test split: float32 [N,1,28,28] in [0, 1], and labels."""
    splits = load_splits(dataset)
    return (splits.test_images[:count].astype(np.float32) / 255.0)[:, None], splits.test_labels[:count]
