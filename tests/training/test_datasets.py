import numpy as np
import pytest

from training.data import (
    DATASETS, MNIST_DIR, PROJECT_ROOT, TEST_IMAGES, TEST_LABELS, DatasetCorrupt, DatasetNotFound, load_splits,
    verified_file,
)


def test_mnist_with_only_the_test_file_trains_on_the_first_8000(mnist_t10k_dir):
    splits = load_splits("mnist", mnist_t10k_dir, validation_fraction=0.1, seed=0)
    assert len(splits.train_labels) == 7200 and len(splits.val_labels) == 800
    assert len(splits.test_labels) == 600
    assert splits.test_split == "mnist t10k images 8000-8599"
    assert "t10k images 0-7999" in splits.split and "7200 for training, 800 held out" in splits.split
    # Train and validation come from the first 8,000 and do not overlap; test is the rest.
    train_and_val = np.concatenate([splits.train_images, splits.val_images]).reshape(8000, -1)
    assert len(np.unique(train_and_val, axis=0)) == 8000
    assert splits.train_labels.dtype == np.int64


def test_official_split_when_training_files_exist(full_dataset_dir):
    splits = load_splits("mnist", full_dataset_dir, validation_fraction=0.2, seed=0)
    assert (len(splits.train_labels), len(splits.val_labels), len(splits.test_labels)) == (2400, 600, 600)
    assert splits.test_split == "mnist official test set (600 images)"
    assert splits.split.startswith("mnist official training set (3000 images)")


def test_validation_split_is_seeded(full_dataset_dir):
    a = load_splits("fashion-mnist", full_dataset_dir, seed=3)
    b = load_splits("fashion-mnist", full_dataset_dir, seed=3)
    c = load_splits("fashion-mnist", full_dataset_dir, seed=4)
    np.testing.assert_array_equal(a.val_images, b.val_images)
    assert not np.array_equal(a.val_images, c.val_images)


def test_fashion_needs_its_training_files(mnist_t10k_dir):
    with pytest.raises(DatasetNotFound) as caught:
        load_splits("fashion-mnist", mnist_t10k_dir)
    message = str(caught.value)
    assert str(mnist_t10k_dir) in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message and "--download" in message


def test_missing_mnist_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFound, match=rf"not found in {tmp_path} .*--data-dir.*--download"):
        load_splits("mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; choose one of: mnist, fashion-mnist"):
        load_splits("cifar")


def test_the_vendored_mnist_test_files_are_the_published_ones():
    """datasets/mnist/ in the repository holds the official t10k files; their sha256 match our table."""
    assert DATASETS["mnist"].default_dir == MNIST_DIR and MNIST_DIR.is_relative_to(PROJECT_ROOT)
    for name in (TEST_IMAGES, TEST_LABELS):
        assert verified_file("mnist", name) == MNIST_DIR / name


def test_mnist_loads_from_the_repository_by_default():
    splits = load_splits("mnist")
    assert splits.data_dir == MNIST_DIR
    assert (len(splits.train_labels) + len(splits.val_labels), len(splits.test_labels)) == (8000, 2000)
    assert sorted(np.unique(splits.test_labels)) == list(range(10))


def test_a_file_that_is_not_the_published_one_is_refused(tmp_path):
    (tmp_path / TEST_IMAGES).write_bytes((MNIST_DIR / TEST_IMAGES).read_bytes()[:-1])
    with pytest.raises(DatasetCorrupt, match="not the published"):
        verified_file("mnist", TEST_IMAGES, tmp_path)
    with pytest.raises(DatasetNotFound, match=TEST_LABELS):
        verified_file("mnist", TEST_LABELS, tmp_path)
