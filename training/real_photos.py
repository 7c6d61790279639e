"""Real photos with clear licences, per condition of issue 18, uploaded to `/v1/models/{name}/predict/image`.

`tests/data/real_photos.csv` lists each photo: its file (relative to the photo folder), condition, label
(looked at by a person), sha256, licence, author and source. The photos themselves are not in the
repository (see docs/photos.md): they are looked for in `$PIXELSERVE_REAL_PHOTOS`, then `tests/data/real/`,
and each must match its sha256, so the set is fixed.

    python -m training.real_photos                    # the highest versions in models/
    python -m training.real_photos --photos DIR --version 1
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from training.photo_eval import PHOTO_SETS

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "data" / "real_photos.csv"
MODEL_FOR = {"digit-photo": "mnist-convnet", "digit-card": "mnist-convnet",
             "product-shot": "fashion-convnet", "natural-clothes": "fashion-convnet"}
GOALS = {spec.condition: spec.goal for spec in PHOTO_SETS}  # the goals, as for the synthetic set


@dataclass(frozen=True)
class RealPhoto:
    file: str
    condition: str
    label: str
    sha256: str
    licence: str
    author: str
    source: str


def read_manifest(path: Path = MANIFEST) -> list[RealPhoto]:
    with path.open(newline="") as handle:
        return [RealPhoto(**row) for row in csv.DictReader(handle)]


def photos_dir() -> Path | None:
    """The first folder that holds the photos: the environment's, then the repository's."""
    candidates = [Path(os.environ["PIXELSERVE_REAL_PHOTOS"])] if os.environ.get("PIXELSERVE_REAL_PHOTOS") else []
    candidates += [ROOT / "tests" / "data" / "real"]
    return next((c for c in candidates if c.is_dir()), None)


def load(photo: RealPhoto, directory: Path) -> bytes:
    return checked_bytes(directory, photo.file, photo.sha256)


def checked_bytes(directory: Path, name: str, sha256: str) -> bytes:
    """A listed photo's bytes, refused when they are not the ones the manifest's label was given to."""
    data = (directory / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{name} is not the file the manifest lists (sha256 differs)")
    return data


def measure(client, photos: list[RealPhoto], directory: Path, version: int | None = None) -> dict:
    """Upload each photo of one condition; the accuracy, and each photo answered wrongly or refused."""
    model = MODEL_FOR[photos[0].condition]
    params = {"version": version} if version else {}
    wrong = []
    for photo in photos:
        response = client.post(f"/v1/models/{model}/predict/image", params=params,
                               files={"file": (Path(photo.file).name, load(photo, directory))})
        if response.status_code != 200:
            wrong.append((photo.file, photo.label, f"refused {response.status_code}"))
        elif (answer := response.json()["predictions"][0]["label"]) != photo.label:
            wrong.append((photo.file, photo.label, answer))
    return {"model": model, "count": len(photos), "correct": len(photos) - len(wrong),
            "accuracy": 1 - len(wrong) / len(photos), "wrong": wrong}


def by_condition(photos: list[RealPhoto]) -> dict[str, list[RealPhoto]]:
    groups: dict[str, list[RealPhoto]] = {}
    for photo in photos:
        groups.setdefault(photo.condition, []).append(photo)
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.real_photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=None, help="the photo folder (default: the first found)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models", help="model repository to serve")
    parser.add_argument("--version", type=int, default=None, help="model version (default: the highest)")
    parser.add_argument("--show-wrong", action="store_true", help="list each photo answered wrongly")
    args = parser.parse_args(argv)
    directory = args.photos or photos_dir()
    if directory is None:
        parser.error("no photo folder found: give --photos DIR (the module's docstring says where it is looked for)")

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings

    settings = Settings(model_repository=args.models_dir.resolve(), providers=["cpu"], watch_interval_s=0, log_level="warning")
    print("| condition | photos | model | version | accuracy | goal |")
    print("| --- | --- | --- | --- | --- | --- |")
    with TestClient(create_app(settings)) as client:
        for condition, photos in by_condition(read_manifest()).items():
            result = measure(client, photos, directory, args.version)
            print(f"| {condition} | {result['count']} | {result['model']} | {args.version or 'latest'} | "
                  f"{result['correct']}/{result['count']} = {result['accuracy']:.1%} | {GOALS[condition]:.0%} |", flush=True)
            if args.show_wrong:
                for file, label, answer in result["wrong"]:
                    print(f"    {file}: {label} -> {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
