"""`--calibration-data FOLDER`: labelled pictures for fitting an imported model's trust sections, each made into
the model's input exactly as the server makes an upload's (service.imaging.picture_pixels, then the card's
ModelInput), so that what is fitted is what is served.

The folder is torchvision's ImageFolder layout: one sub-folder per class, named as a label. Split it with
`train/`, `val/` and `test/` sub-folders (each in that layout) to choose the parts; otherwise, and for a held-out
folder given alone (`test/` or `val/` only), each class is split in two by a seeded shuffle: validation (the
temperature, the typicality standardisation) and test (the ECE, the typicality threshold). `train/` pictures,
when given, fit the typicality's picture member (training/trust.py's default); without them the energy score is
the typicality. Refusals (CalibrationDataError) say what is wrong and what is expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLIT_NAMES = ("train", "val", "test")
# The test part must hold 20 pictures so that the 5% flag rate sets a threshold that flags one of them at least;
# the validation part as many, for the temperature and the standardisation's spread; train/ as many for its
# principal subspace.
MIN_TEST = 20
MIN_VALIDATION = 20
MIN_TRAIN = 20
SEED = 0
ERRORS_LISTED = 5


class CalibrationDataError(Exception):
    """The calibration folder cannot be used; the message says what is wrong and what is expected."""


@dataclass
class Part:
    """One part's pictures: (file, class index) pairs, and what the card calls it."""

    items: list[tuple[Path, int]]
    description: str
    inputs: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.items], np.int64)


@dataclass
class CalibrationData:
    validation: Part
    test: Part
    train: Part | None
    layout: str  # "classes" | "splits"
    per_class: dict[str, int] = field(default_factory=dict)  # every label -> its pictures, all parts together
    halved_from: str | None = None  # the folder split into the validation and test parts, if one was

    def splits(self) -> dict[str, str]:
        """fit_trust's `splits`: each part's description for the card."""
        named = {"validation": self.validation.description, "test": self.test.description}
        if self.train is not None:
            named["train"] = self.train.description
        return named

    def summary(self) -> str:
        return ", ".join(f"{label} {count}" for label, count in self.per_class.items())


def read_calibration_data(folder: Path, card, *, max_pixels: int) -> CalibrationData:
    """The folder's pictures as the model's inputs, split into parts; `card` is the parsed ModelCard."""
    data = list_calibration_data(Path(folder), list(card.classes))
    _make_inputs(data, Path(folder), card, max_pixels)
    return data


def list_calibration_data(folder: Path, labels: list[str]) -> CalibrationData:
    """The parts, as files and labels (nothing decoded yet); refuses a layout that does not fit the labels."""
    if not folder.is_dir():
        raise CalibrationDataError(f"--calibration-data {folder} is not a folder; expected one sub-folder per label holding its pictures")
    subfolders = _subfolders(folder)
    name = folder.resolve().name  # how the card names the folder ("." has no name of its own)
    halved_from = name
    is_split = bool(subfolders) and all(p.name in SPLIT_NAMES for p in subfolders) and not any(p.name in labels for p in subfolders)
    if is_split:
        parts = {p.name: _class_files(p, folder, labels) for p in subfolders}
        held = [split for split in ("val", "test") if split in parts]
        if not held:
            raise CalibrationDataError(
                f"{folder} has only train/; calibration needs labelled pictures the model is measured on: add test/ "
                "(and optionally val/), each with one sub-folder per label"
            )
        if len(held) == 2:
            validation = Part(parts["val"], f"{len(parts['val'])} pictures in {name}/val")
            test = Part(parts["test"], f"{len(parts['test'])} pictures in {name}/test")
            halved_from = None
        else:
            halved_from = f"{name}/{held[0]}"
            validation, test = _halves(parts[held[0]], halved_from)
        train = Part(parts["train"], f"{len(parts['train'])} pictures in {name}/train") if "train" in parts else None
    else:
        validation, test = _halves(_class_files(folder, folder, labels), name)
        train = None

    per_class = {label: 0 for label in labels}
    for part in (validation, test, train):
        for _, label in part.items if part else []:
            per_class[labels[label]] += 1
    data = CalibrationData(validation, test, train, "splits" if is_split else "classes", per_class, halved_from)
    _check_counts(data, folder)
    return data


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_files(root: Path, top: Path, labels: list[str]) -> list[tuple[Path, int]]:
    """(file, class index) for every file under root's class folders (recursively, hidden ones passed over)."""
    folders = _subfolders(root)
    index = {label: i for i, label in enumerate(labels)}
    unknown = [p.name for p in folders if p.name not in index]
    if unknown:
        shown = ", ".join(repr(label) for label in labels[:10]) + (f" and {len(labels) - 10} more" if len(labels) > 10 else "")
        raise CalibrationDataError(
            f"{_relative(root, top)} has folder(s) {', '.join(repr(n) for n in unknown)} that match no label; each "
            f"sub-folder must be named as one of the labels ({shown})"
            + (", or be train/, val/ or test/ holding such folders" if root == top else "")
        )
    if not folders:
        raise CalibrationDataError(f"{_relative(root, top)} holds no class folders; expected one sub-folder per label holding its pictures")
    items = []
    for sub in folders:
        files = sorted(p for p in sub.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(sub).parts))
        items += [(path, index[sub.name]) for path in files]
    return items


def _halves(items: list[tuple[Path, int]], where: str) -> tuple[Part, Part]:
    """Validation and test parts of `items`: each class shuffled by SEED, its pictures dealt to test and validation
    alternately, carried on across classes, so that every class is split evenly and the parts differ by one at most."""
    rng = np.random.default_rng(SEED)
    validation, test = [], []
    turn = 0
    for label in sorted({label for _, label in items}):
        members = [item for item in items if item[1] == label]
        for position in rng.permutation(len(members)):
            (test if turn % 2 == 0 else validation).append(members[position])
            turn += 1
    how = f"of each class of {where}, shuffled with seed {SEED}"
    return (Part(validation, f"{len(validation)} pictures: half {how}"),
            Part(test, f"{len(test)} pictures: the other half {how}"))


def _check_counts(data: CalibrationData, folder: Path) -> None:
    parts = [("validation", data.validation, MIN_VALIDATION), ("test", data.test, MIN_TEST)]
    if data.train is not None:
        parts.append(("train", data.train, MIN_TRAIN))
    short = [f"{name} has {len(part.items)}" for name, part, least in parts if len(part.items) < least]
    if short:
        if data.halved_from is not None:
            where = f"{data.halved_from} is split in two, so it needs {MIN_VALIDATION + MIN_TEST}"
        else:
            where = "given as val/ and test/"
        raise CalibrationDataError(
            f"too few pictures in {folder} to fit: {'; '.join(short)}. The validation and test parts need at least "
            f"{MIN_VALIDATION} pictures each ({where})" + (f", train/ at least {MIN_TRAIN}" if data.train is not None else "")
            + f". Pictures per label: {data.summary()}"
        )
    held_classes = {label for _, label in data.validation.items + data.test.items}
    if len(held_classes) < 2:
        raise CalibrationDataError(
            f"{folder} has labelled pictures of {len(held_classes)} label(s); calibration needs pictures of at least 2. "
            f"Pictures per label: {data.summary()}"
        )


def _make_inputs(data: CalibrationData, folder: Path, card, max_pixels: int) -> None:
    """Each part's model inputs, made as an upload's are; refuses naming the files that are not pictures."""
    from service.errors import ServiceError
    from service.imaging import picture_pixels
    from service.inference.model_input import ModelInput

    model_input = ModelInput(card.input)
    errors = []
    for part in (data.validation, data.test, data.train):
        if part is None:
            continue
        pixels, full_scale = [], 255.0
        for path, _ in part.items:
            try:
                one, full_scale = picture_pixels(path.read_bytes(), card, max_pixels=max_pixels)
            except (ServiceError, OSError) as error:
                errors.append(f"{_relative(path, folder)} ({error})")
                continue
            pixels.append(one)
        if not errors:
            part.inputs = model_input.from_pixels(np.stack(pixels), full_scale)
    if errors:
        more = f" (and {len(errors) - ERRORS_LISTED} more)" if len(errors) > ERRORS_LISTED else ""
        raise CalibrationDataError(
            f"{len(errors)} file(s) in {folder} are not pictures the server reads{more}: "
            + "; ".join(errors[:ERRORS_LISTED]) + ". Remove or replace them: class folders hold pictures only"
        )


def _relative(path: Path, top: Path) -> str:
    try:
        name = top.resolve().name
        return (Path(name) / path.relative_to(top)).as_posix() if path != top else name
    except ValueError:
        return str(path)
