"""Fixtures for the training tests: small synthetic datasets in the MNIST file layout."""

from pathlib import Path

import pytest
from tests.training.synthetic_data import synthetic_images, write_idx

from training.data import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS


@pytest.fixture(scope="session")
def mnist_t10k_dir(tmp_path_factory) -> Path:
    """An MNIST-style folder with only a 'test' file of 8,600 images: 8,000 to train on, 600 to test."""
    directory = tmp_path_factory.mktemp("mnist-t10k")
    images, labels = synthetic_images(8600, seed=1)
    write_idx(directory / TEST_IMAGES, images)
    write_idx(directory / TEST_LABELS, labels)
    return directory


@pytest.fixture(scope="session")
def full_dataset_dir(tmp_path_factory) -> Path:
    """A folder with all four files: 3,000 training and 600 test images."""
    directory = tmp_path_factory.mktemp("full")
    train_x, train_y = synthetic_images(3000, seed=2)
    test_x, test_y = synthetic_images(600, seed=3)
    write_idx(directory / TRAIN_IMAGES, train_x)
    write_idx(directory / TRAIN_LABELS, train_y)
    write_idx(directory / TEST_IMAGES, test_x)
    write_idx(directory / TEST_LABELS, test_y)
    return directory


@pytest.fixture(scope="session")
def published_model(tmp_path_factory, mnist_t10k_dir) -> Path:
    """A softmax regression trained for one epoch and published the way the CLI does it."""
    from training.pipeline import train_and_publish
    from training.train import TrainConfig

    models_dir = tmp_path_factory.mktemp("models")
    version_dir, _ = train_and_publish(
        dataset="mnist", arch="softmax", name="digits-softmax", models_dir=models_dir,
        config=TrainConfig(epochs=1, threads=1), data_dir=mnist_t10k_dir, limit_train=2000, progress=False,
    )
    return version_dir
