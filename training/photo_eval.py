"""The fixed photo evaluation set of issue 18 and its measurement through the service's upload endpoint.

Each condition draws held-out pictures (MNIST t10k images 8000-9999, the Fashion-MNIST test set: never
trained on), the same number of each class, and turns them into synthetic photos with a fixed seed; the
photos are uploaded to `/v1/models/{name}/predict/image` of the app, as a person's would be.

    python -m training.photo_eval                          # the highest versions in models/
    python -m training.photo_eval --version 1 --models mnist-convnet fashion-convnet
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import DATASETS, MNIST_T10K_TRAIN
from training.synthetic_photos import photo


@dataclass(frozen=True)
class PhotoSet:
    condition: str
    dataset: str  # "mnist" | "fashion-mnist"
    per_class: int
    seed: int
    goal: float  # the goal on its held-out set of this condition


PHOTO_SETS = (
    PhotoSet("digit-photo", "mnist", 10, 1801, 0.97),
    PhotoSet("digit-card", "mnist", 4, 1802, 0.90),
    PhotoSet("product-shot", "fashion-mnist", 10, 1803, 0.95),
    PhotoSet("natural-clothes", "fashion-mnist", 10, 1804, 0.75),
)
MODELS_FOR = {"mnist": ("mnist-convnet", "mnist-mlp"), "fashion-mnist": ("fashion-convnet", "fashion-mlp")}


def _read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def dataset_dir(dataset: str) -> Path:
    """Where the dataset's IDX files are: the training CLI's default folder (MNIST: vendored in datasets/)."""
    return Path(DATASETS[dataset].default_dir)


def held_out(dataset: str, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pictures no shipped model trained on: MNIST t10k from 8000 on, the whole Fashion-MNIST test set."""
    directory = data_dir or dataset_dir(dataset)
    images = _read_idx(directory / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(directory / "t10k-labels-idx1-ubyte.gz")
    start = MNIST_T10K_TRAIN if dataset == "mnist" else 0
    return images[start:], labels[start:].astype(np.int64)


def photo_set(spec: PhotoSet, data_dir: Path | None = None) -> list[tuple[bytes, int]]:
    """The condition's photos and their labels: the same for every run (fixed seed)."""
    images, labels = held_out(spec.dataset, data_dir)
    rng = np.random.default_rng(spec.seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), spec.per_class, replace=False) for c in range(10)])
    backs = rng.choice(len(images), len(chosen))  # what is written on the back of the page
    return [
        (photo(spec.condition, images[i], rng, label=int(labels[i]), back=images[b]), int(labels[i]))
        for i, b in zip(chosen, backs, strict=True)
    ]


def measure(client, model: str, photos: list[tuple[bytes, int]], classes: list[str], version: int | None = None) -> dict:
    """Upload each photo to the model's image endpoint: accuracy, warnings and answers refused."""
    correct = refused = warned = 0
    for data, label in photos:
        params = {"version": version} if version else {}
        response = client.post(f"/v1/models/{model}/predict/image", files={"file": ("photo", data)}, params=params)
        if response.status_code != 200:
            refused += 1
            continue
        prediction = response.json()["predictions"][0]
        correct += prediction["label"] == classes[label]
        warned += bool(prediction.get("warnings"))
    return {"accuracy": correct / len(photos), "refused": refused, "warned": warned, "count": len(photos)}


def preprocessing_ms(photos: list[tuple[bytes, int]], method: str) -> float:
    """Median time to turn one photo into the model's input (decoding included), in milliseconds."""
    from service.imaging import to_model_input

    times = []
    for data, _ in photos:
        started = time.perf_counter()
        try:
            to_model_input(data, method, max_pixels=40_000_000)
        except Exception:  # a refused photo costs its time too
            pass
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.photo_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="model repository to serve")
    parser.add_argument("--version", type=int, default=None, help="model version (default: the highest)")
    parser.add_argument("--models", nargs="+", default=None, help="models to measure (default: all four)")
    parser.add_argument("--conditions", nargs="+", default=[s.condition for s in PHOTO_SETS], help="conditions to measure")
    parser.add_argument("--photos-cache", type=Path, default=None,
                        help="a pickle of the generated photos: read when present, else written (the set is fixed)")
    args = parser.parse_args(argv)

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings

    settings = Settings(model_repository=args.models_dir.resolve(), providers=["cpu"], watch_interval_s=0, log_level="warning")
    print("| condition | photos | model | version | accuracy | goal | refused | warned | preprocessing ms (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    cached = pickle.loads(args.photos_cache.read_bytes()) if args.photos_cache and args.photos_cache.exists() else {}
    with TestClient(create_app(settings)) as client:
        for spec in PHOTO_SETS:
            if spec.condition not in args.conditions:
                continue
            photos = cached[spec.condition] if spec.condition in cached else photo_set(spec)
            cached[spec.condition] = photos
            method = "mnist-digit" if spec.dataset == "mnist" else "fashion-fit"
            took = preprocessing_ms(photos, method)
            for model in MODELS_FOR[spec.dataset]:
                if args.models and model not in args.models:
                    continue
                detail = client.get(f"/v1/models/{model}", params={"version": args.version} if args.version else {}).json()
                result = measure(client, model, photos, detail["classes"], args.version)
                print(
                    f"| {spec.condition} | {result['count']} | {model} | {args.version or 'latest'} | "
                    f"{result['accuracy']:.1%} | {spec.goal:.0%} | {result['refused']} | {result['warned']} | {took:.1f} |",
                    flush=True,
                )
    if args.photos_cache:
        args.photos_cache.write_bytes(pickle.dumps(cached))
    return 0


if __name__ == "__main__":
    sys.exit(main())
