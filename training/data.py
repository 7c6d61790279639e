"""The datasets: where their files live, how to fetch them, and how they split into train/validation/test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.download import download_verified, sha256_of
from training.idx import read_pair

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOWNLOAD_ROOT = PROJECT_ROOT / "data"
# The official MNIST test split, vendored in the repository (datasets/mnist/README.md: source, licence).
MNIST_DIR = PROJECT_ROOT / "datasets" / "mnist"

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"

# With only the official MNIST test file at hand, its first images train and its last ones test.
MNIST_T10K_TRAIN = 8000


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str  # "digits" | "fashion", as the model card names it
    classes: tuple[str, ...]
    default_dir: Path
    sha256: dict[str, str]  # file name -> published sha256 of the gzip file
    mirrors: tuple[str, ...]  # base URLs, tried in order
    how_to_get: str

    def urls(self, file_name: str, extra_mirrors: Sequence[str] = ()) -> list[str]:
        return [base.rstrip("/") + "/" + file_name for base in (*extra_mirrors, *self.mirrors)]


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        task="digits",
        classes=tuple(str(digit) for digit in range(10)),
        default_dir=MNIST_DIR,
        sha256={
            TRAIN_IMAGES: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            TRAIN_LABELS: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            TEST_IMAGES: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            TEST_LABELS: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist",
            "https://storage.googleapis.com/cvdf-datasets/mnist",
        ),
        how_to_get="pass --data-dir DIR holding the MNIST IDX files, or --download to fetch them",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        task="fashion",
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        default_dir=Path("/usr/share/datasets/fashion-mnist"),
        sha256={
            TRAIN_IMAGES: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            TRAIN_LABELS: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            TEST_IMAGES: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            TEST_LABELS: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        ),
        how_to_get=(
            "install it with `apt-get install dataset-fashion-mnist`, pass --data-dir DIR holding "
            "the IDX files, or --download to fetch them"
        ),
    ),
}


class DatasetNotFound(FileNotFoundError):
    """The dataset's files are not where we looked; the message says where and how to get them."""


class DatasetCorrupt(ValueError):
    """A dataset file's sha256 is not the published one (truncated, converted, or another file)."""


def verified_file(dataset: str, file_name: str, directory: Path | None = None) -> Path:
    """`directory/file_name` (default: the dataset's own folder), checked against its published sha256.

    For MNIST (vendored) and downloads; Debian's re-compressed Fashion-MNIST files have other checksums."""
    spec = get_spec(dataset)
    path = (directory or spec.default_dir) / file_name
    if not path.is_file():
        raise DatasetNotFound(f"{path} is missing; {spec.how_to_get}")
    if (actual := sha256_of(path)) != spec.sha256[file_name]:
        raise DatasetCorrupt(f"{path} has sha256 {actual}, not the published {spec.sha256[file_name]}")
    return path


@dataclass
class Splits:
    """Images as uint8 [N, 28, 28], labels as int64 [N]; the test split is for the final number only."""

    dataset: DatasetSpec
    data_dir: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    split: str  # how train/validation were carved, for the model card
    test_split: str  # what the test set is, for the model card


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


def download_dataset(
    spec: DatasetSpec, directory: Path, extra_mirrors: Sequence[str] = (), timeout: float = 60.0
) -> None:
    """Fetch every file of the dataset that `directory` lacks, each checked against its sha256."""
    for file_name, sha256 in spec.sha256.items():
        if not (directory / file_name).exists():
            print(f"downloading {file_name} into {directory}")
            download_verified(spec.urls(file_name, extra_mirrors), directory / file_name, sha256, timeout=timeout)


def resolve_data_dir(spec: DatasetSpec, data_dir: Path | None, download: bool) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    # Downloads go to a writable folder of the project; the default folders may be read-only.
    return DOWNLOAD_ROOT / spec.name if download else spec.default_dir


def load_splits(
    name: str,
    data_dir: Path | None = None,
    *,
    download: bool = False,
    mirrors: Sequence[str] = (),
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> Splits:
    spec = get_spec(name)
    directory = resolve_data_dir(spec, data_dir, download)
    if download:
        download_dataset(spec, directory, mirrors)
    present = {f for f in spec.sha256 if (directory / f).is_file()}
    if directory == MNIST_DIR:
        # The vendored copy must be the published files (not truncated, not an LFS pointer, not re-encoded).
        # Debian's Fashion-MNIST is re-compressed (other gzip bytes, same pictures): dpkg vouches for it.
        for file_name in present:
            verified_file(spec.name, file_name)
    has_test = {TEST_IMAGES, TEST_LABELS} <= present
    has_train = {TRAIN_IMAGES, TRAIN_LABELS} <= present
    num_classes = len(spec.classes)
    if has_test and has_train:
        train_x, train_y = read_pair(directory / TRAIN_IMAGES, directory / TRAIN_LABELS, num_classes)
        test_x, test_y = read_pair(directory / TEST_IMAGES, directory / TEST_LABELS, num_classes)
        source = f"{spec.name} official training set ({len(train_x)} images)"
        test_split = f"{spec.name} official test set ({len(test_x)} images)"
    elif has_test and spec.name == "mnist":
        images, labels = read_pair(directory / TEST_IMAGES, directory / TEST_LABELS, num_classes)
        train_x, train_y = images[:MNIST_T10K_TRAIN], labels[:MNIST_T10K_TRAIN]
        test_x, test_y = images[MNIST_T10K_TRAIN:], labels[MNIST_T10K_TRAIN:]
        source = f"mnist t10k images 0-{MNIST_T10K_TRAIN - 1} (official training files absent)"
        test_split = f"mnist t10k images {MNIST_T10K_TRAIN}-{len(images) - 1}"
    else:
        needed = sorted(spec.sha256) if spec.name != "mnist" else [TEST_IMAGES, TEST_LABELS]
        missing = ", ".join(f for f in needed if f not in present)
        raise DatasetNotFound(f"dataset {spec.name!r} not found in {directory} (missing {missing}); {spec.how_to_get}")

    order = np.random.default_rng(seed).permutation(len(train_x))
    n_val = max(1, int(round(len(train_x) * validation_fraction)))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return Splits(
        dataset=spec,
        data_dir=directory,
        train_images=train_x[train_idx],
        train_labels=train_y[train_idx].astype(np.int64),
        val_images=train_x[val_idx],
        val_labels=train_y[val_idx].astype(np.int64),
        test_images=test_x,
        test_labels=test_y.astype(np.int64),
        split=(
            f"{source}: {len(train_idx)} for training, {n_val} held out for validation "
            f"(random, seed {seed})"
        ),
        test_split=test_split,
    )
