"""Real phone photos of clothes for fine-tuning: the CC0 "clothing-dataset-small" (Alexey Grigorev and its
contributors, github.com/alexeygrigorev/clothing-dataset-small), its train/ and validation/ folders, labelled
with Fashion-MNIST's classes in `tests/data/real_clothes_train.csv` (no image data: the dataset's path, the
file's sha256 and the label).

The folders map onto the classes (FOLDER_LABELS); each shoe photo was labelled by looking at it (Sneaker,
Sandal or Ankle boot; heels, flats, formal shoes, slippers and tall boots are left out), and the folders of
no Fashion-MNIST class (hat, shorts, skirt) are left out. No photo of the real test set
(tests/data/real_photos.csv) nor an exact copy of one is listed (tests/training/test_real_clothes.py).

Each photo is run once through the service's own fashion-fit preprocessing (exactly what an upload of it
becomes) and the 28x28 results are cached under data/real-clothes/, keyed by the manifest and the
preprocessing code's hash. Training draws a share of each batch from the train/ rows
(`python -m training train ... --real-photos DIR --real-mix P`); the validation/ rows judge recipes:

    python -m training.real_clothes --photos DIR models/fashion-convnet/3 [more version folders]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import PROJECT_ROOT, get_spec
from training.real_photos import checked_bytes

MANIFEST = PROJECT_ROOT / "tests" / "data" / "real_clothes_train.csv"
CACHE_DIR = PROJECT_ROOT / "data" / "real-clothes"
DATASET = "github.com/alexeygrigorev/clothing-dataset-small"
DATASET_COMMIT = "11961516512414bf9f6c150a832cfd21b54a6b54"
LICENCE = "CC0-1.0"
SPLITS = ("train", "validation")
# The dataset's folders and the Fashion-MNIST class each becomes. "longsleeve" holds sweaters, sweatshirts and
# long-sleeved T-shirts (and a few blouses and cardigans): all Pullover, as the real test set labels them.
FOLDER_LABELS = {
    "t-shirt": "T-shirt/top", "pants": "Trouser", "dress": "Dress", "outwear": "Coat",
    "shirt": "Shirt", "longsleeve": "Pullover",
}
SHOE_LABELS = ("Sneaker", "Sandal", "Ankle boot")  # "shoes" rows: each labelled by looking at the photo
CLASSES = get_spec("fashion-mnist").classes


@dataclass(frozen=True)
class RealClothesPhoto:
    split: str  # "train" | "validation": the dataset's own folders
    source: str  # path inside the dataset, e.g. train/shoes/<id>.jpg
    sha256: str
    label: str


def read_manifest(path: Path = MANIFEST) -> list[RealClothesPhoto]:
    with path.open(newline="") as handle:
        return [RealClothesPhoto(**row) for row in csv.DictReader(handle)]


def write_manifest(photos: list[RealClothesPhoto], path: Path = MANIFEST) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["split", "source", "sha256", "label"], lineterminator="\n")
        writer.writeheader()
        for photo in photos:
            writer.writerow(photo.__dict__)


def load(photo: RealClothesPhoto, directory: Path) -> bytes:
    return checked_bytes(directory, photo.source, photo.sha256)


def manifest_key(photos: list[RealClothesPhoto]) -> str:
    digest = hashlib.sha256()
    for photo in photos:
        digest.update(f"{photo.source},{photo.sha256},{photo.label}\n".encode())
    return digest.hexdigest()[:10]


def processed(directory: Path, split: str, manifest: Path = MANIFEST) -> tuple[np.ndarray, np.ndarray]:
    """The `split` rows of the manifest as the service's fashion-fit preprocessing makes them: uint8
    [n, 28, 28] and their class indices; a photo the preprocessing refuses (it would get an error, not an
    answer) is left out. Cached under data/real-clothes/."""
    from service.errors import InvalidInput
    from service.imaging import to_model_input  # the service's own preprocessing, exactly as served
    from training.photo_mix import preprocessing_hash

    if split not in SPLITS:
        raise ValueError(f"split is one of {', '.join(SPLITS)}, got {split!r}")
    photos = [p for p in read_manifest(manifest) if p.split == split]
    path = CACHE_DIR / f"{split}-{len(photos)}-{manifest_key(photos)}-{preprocessing_hash()}.npz"
    if path.exists():
        cached = np.load(path)
        return cached["photos"], cached["labels"]
    inputs = np.zeros((len(photos), 28, 28), np.uint8)
    kept = np.ones(len(photos), bool)
    started = time.perf_counter()
    for n, photo in enumerate(photos):
        data = load(photo, directory)
        try:
            x = to_model_input(data, "fashion-fit", max_pixels=40_000_000)[0]
        except InvalidInput as exc:  # refused by the preprocessing: no answer to learn from
            print(f"{photo.source}: refused ({exc})", file=sys.stderr)
            kept[n] = False
            continue
        inputs[n] = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
        if (n + 1) % 200 == 0:
            print(f"real photos ({split}): {n + 1}/{len(photos)} ({time.perf_counter() - started:.0f}s)",
                  file=sys.stderr, flush=True)
    labels = np.array([CLASSES.index(p.label) for p in photos], np.int64)
    inputs, labels = inputs[kept], labels[kept]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, photos=inputs, labels=labels)
    return inputs, labels


def description(count: int, share: float) -> str:
    """What the card's training split says about the real photos."""
    return (f"{count} real phone photos of clothes ({DATASET}@{DATASET_COMMIT[:12]}, {LICENCE}, its train/ folder "
            f"labelled as {MANIFEST.relative_to(PROJECT_ROOT)} lists) run through the service's fashion-fit "
            f"preprocessing, a share {share} of each batch drawn from them")


def accuracy_of(version_dir: Path, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, str]]:
    """A published model's accuracy on processed photos (ONNX Runtime, as served), overall and per class."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: (inputs.astype(np.float32) / 255.0)[:, None]}
    predicted = session.run(["probabilities"], feed)[0].argmax(1)
    per_class = {}
    for index, name in enumerate(CLASSES):
        mask = labels == index
        if mask.any():
            per_class[name] = f"{int((predicted[mask] == index).sum())}/{int(mask.sum())}"
    return float((predicted == labels).mean()), per_class


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.real_clothes", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="*", help="published version folders to measure")
    parser.add_argument("--photos", type=Path, required=True, help="the dataset's folder (train/ and validation/ in it)")
    parser.add_argument("--split", default="validation", choices=SPLITS, help="which rows to measure on")
    args = parser.parse_args(argv)
    inputs, labels = processed(args.photos, args.split)
    for version_dir in args.models:
        accuracy, per_class = accuracy_of(version_dir, inputs, labels)
        print(f"{version_dir}: {args.split} {accuracy:.1%} of {len(labels)} | "
              + ", ".join(f"{k} {v}" for k, v in per_class.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
