"""A folder of your own pictures as a dataset: one sub-folder per class (torchvision's ImageFolder
layout), pictures of any size, colour or grey. When the folder has `train/` and `test/` sub-folders, each
holding the class folders, those are the splits; otherwise a share of each class is set aside as the test
split by a hash of its file name (the same files whatever the seed, and a picture added later does not
move the others). The validation split is drawn from the training pictures, per class, by the seed.

Every picture is decoded once, one at a time: the training pictures are kept (resized) for the random crops of
training, and the validation and test pictures are turned into exactly the input a server following
the card computes for them (training/photos.py)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.photos import (
    IMAGENET_GREY_MEAN, IMAGENET_GREY_STD, IMAGENET_MEAN, IMAGENET_STD, PhotoPreprocessing, PictureError,
    channel_statistics, decode, default_resize_shorter,
)

FOLDER_PREFIX = "folder:"
# The extensions torchvision's ImageFolder takes as pictures; other files are passed over.
PICTURE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
NORMALIZATIONS = ("dataset", "imagenet")
ERRORS_LISTED = 5


class FolderDatasetError(ValueError):
    """The folder is not a usable dataset; the message says what is wrong and what is expected."""


@dataclass(frozen=True)
class FolderOptions:
    """How a folder becomes a dataset; recorded in the card so that `evaluate` can rebuild the splits."""

    image_size: int = 64
    channels: int = 3
    resize: str = "resize-crop"  # "resize-crop" | "resize"
    resize_shorter: int | None = None  # resize-crop: default floor(image_size / 0.875)
    normalize: str = "dataset"  # "dataset": the training pictures' mean / std; "imagenet": ImageNet's
    test_fraction: float = 0.2  # share of each class set aside when there is no test/ folder

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FolderSpec:
    """What the card and the training code read from a dataset description, for a folder."""

    name: str  # "folder:PATH" as given
    task: str
    classes: tuple[str, ...]


@dataclass
class FolderSplits:
    """The same fields as the IDX datasets' `Splits`: training pictures as uint8 arrays of varying size
    (for the random crops), validation and test as the model's float32 input [N, C, S, S], plus the test
    views as uint8 for the plots."""

    dataset: FolderSpec
    data_dir: Path
    train_images: list[np.ndarray]
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    split: str
    test_split: str
    preprocessing: PhotoPreprocessing
    test_views: np.ndarray
    options: FolderOptions


def folder_path(dataset: str) -> Path | None:
    """The folder named by `folder:PATH`, or None for the named datasets."""
    return Path(dataset[len(FOLDER_PREFIX):]).expanduser() if dataset.startswith(FOLDER_PREFIX) else None


def _class_pictures(root: Path) -> dict[str, list[Path]]:
    """class name -> its picture files (recursively, sorted); refuses a layout that is not ImageFolder's."""
    if not root.is_dir():
        raise FolderDatasetError(f"{root} is not a folder; expected one sub-folder per class holding its pictures")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise FolderDatasetError(
            f"{root} holds {len(classes)} class folder(s); a classifier needs at least 2 sub-folders, one per "
            f"class, each holding that class's pictures ({', '.join(PICTURE_EXTENSIONS)})"
        )
    pictures: dict[str, list[Path]] = {}
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        found = [p for p in files if p.suffix.lower() in PICTURE_EXTENSIONS]
        if not found:
            others = f"; it holds {len(files)} other file(s), e.g. {files[0].name}" if files else ""
            raise FolderDatasetError(
                f"class folder {folder} holds no pictures{others}; each class needs pictures with one of the "
                f"extensions {', '.join(PICTURE_EXTENSIONS)} (or remove the folder)"
            )
        pictures[folder.name] = found
    return pictures


def _hash_fraction(relative: str) -> float:
    """A stable number in [0, 1) for a file name: the held-out test split does not depend on the seed."""
    return int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big") / 2**64


def _held_out(paths: list[Path], root: Path, fraction: float) -> tuple[list[Path], list[Path]]:
    """(kept, held out): the `fraction` of `paths` with the smallest name hashes, at least one of each
    when there are two or more."""
    if len(paths) < 2 or fraction <= 0:
        return list(paths), []
    ranked = sorted(paths, key=lambda p: _hash_fraction(p.relative_to(root).as_posix()))
    count = min(len(paths) - 1, max(1, round(len(paths) * fraction)))
    held = set(ranked[:count])
    return [p for p in paths if p not in held], [p for p in paths if p in held]


def _load(paths: list[Path], channels: int, keep) -> tuple[list, list[str]]:
    """`keep(picture)` of each picture, decoded one at a time (only the small arrays it makes stay in
    memory, not the decoded photos), and the messages of those that cannot be read."""
    kept, errors = [], []
    for path in paths:
        try:
            kept.append(keep(decode(path, channels)))
        except PictureError as exc:
            errors.append(str(exc))
    return kept, errors


def load_folder(
    dataset: str, options: FolderOptions, *, validation_fraction: float = 0.1, seed: int = 0
) -> FolderSplits:
    root = folder_path(dataset)
    if root is None:
        raise FolderDatasetError(f"{dataset!r} does not name a folder; write folder:PATH")
    if options.channels not in (1, 3):
        raise FolderDatasetError(f"--channels for pictures is 1 (grey) or 3 (RGB), got {options.channels}")
    if not 0 < options.test_fraction < 1:
        raise FolderDatasetError(f"the test fraction must be between 0 and 1, got {options.test_fraction}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files, test_files = _class_pictures(root / "train"), _class_pictures(root / "test")
        unknown = sorted(set(test_files) - set(train_files))
        if unknown:
            raise FolderDatasetError(
                f"{root / 'test'} has class folders that {root / 'train'} lacks: {', '.join(unknown)}; "
                "the test classes must be among the training classes"
            )
        classes = sorted(train_files)
        source, test_split = f"{root / 'train'}", f"the pictures in {root / 'test'}"
    else:
        all_files = _class_pictures(root)
        classes = sorted(all_files)
        train_files, test_files = {}, {}
        for name, paths in all_files.items():
            train_files[name], test_files[name] = _held_out(paths, root, options.test_fraction)
        source = str(root)
        test_split = (f"{options.test_fraction:.0%} of each class of {root} held out by a hash of the file "
                      "name (independent of the seed)")

    rng = np.random.default_rng(seed)
    train_paths, val_paths, test_paths = [], [], []
    for label, name in enumerate(classes):
        paths = train_files[name]
        order = rng.permutation(len(paths))
        n_val = 0
        if validation_fraction > 0 and len(paths) > 1:
            n_val = min(len(paths) - 1, max(1, round(len(paths) * validation_fraction)))
        val_paths += [(paths[i], label) for i in sorted(order[:n_val])]
        train_paths += [(paths[i], label) for i in sorted(order[n_val:])]
        test_paths += [(path, label) for path in test_files.get(name, [])]
    if not val_paths or not test_paths:
        raise FolderDatasetError(
            f"{root} has too few pictures for a {'validation' if not val_paths else 'test'} split "
            f"({sum(len(p) for p in train_files.values())} training pictures); add pictures or raise the fraction"
        )

    shorter = options.resize_shorter or default_resize_shorter(options.image_size)
    if options.resize == "resize-crop" and shorter < options.image_size:
        raise FolderDatasetError(f"--resize-shorter {shorter} is smaller than --image-size {options.image_size}")
    if options.normalize not in NORMALIZATIONS:
        raise FolderDatasetError(f"unknown normalisation {options.normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
    # The views (what the model sees) do not depend on the mean / std, which come from the training views.
    unnormalized = PhotoPreprocessing(options.image_size, options.channels, options.resize,
                                      shorter if options.resize == "resize-crop" else None,
                                      (0.0,) * options.channels, (1.0,) * options.channels)
    kept, errors = {}, []
    for role, items in (("train", train_paths), ("val", val_paths), ("test", test_paths)):
        keep = (lambda p: (unnormalized.view(p), unnormalized.training_source(p))) if role == "train" else unnormalized.view
        kept[role], role_errors = _load([path for path, _ in items], options.channels, keep)
        errors += role_errors
    if errors:
        more = f" (and {len(errors) - ERRORS_LISTED} more)" if len(errors) > ERRORS_LISTED else ""
        raise FolderDatasetError(
            f"{len(errors)} picture(s) in {root} cannot be read{more}: " + "; ".join(errors[:ERRORS_LISTED])
            + ". Remove or replace them; accepted are pictures Pillow reads "
            f"({', '.join(PICTURE_EXTENSIONS)})"
        )

    # The mean / std are measured on the training pictures as the model will see them (the centre views).
    if options.normalize == "dataset":
        mean, std = channel_statistics([view for view, _ in kept["train"]], options.channels)
    else:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if options.channels == 3 else (IMAGENET_GREY_MEAN, IMAGENET_GREY_STD)
    preprocessing = PhotoPreprocessing(options.image_size, options.channels, options.resize,
                                       unnormalized.resize_shorter, mean, std)
    test_views, val_views = np.stack(kept["test"]), np.stack(kept["val"])
    return FolderSplits(
        dataset=FolderSpec(name=FOLDER_PREFIX + str(root.resolve()), task="images", classes=tuple(classes)),
        data_dir=root,
        train_images=[source for _, source in kept["train"]],
        train_labels=np.array([label for _, label in train_paths], np.int64),
        val_images=preprocessing.to_input(val_views),
        val_labels=np.array([label for _, label in val_paths], np.int64),
        test_images=preprocessing.to_input(test_views),
        test_labels=np.array([label for _, label in test_paths], np.int64),
        split=(f"{source}, {len(classes)} classes: {len(train_paths)} pictures for training, {len(val_paths)} held "
               f"out for validation ({validation_fraction:.0%} of each class, random, seed {seed})"),
        test_split=f"{test_split} ({len(test_paths)} pictures)",
        preprocessing=preprocessing,
        test_views=test_views,
        options=options,
    )
