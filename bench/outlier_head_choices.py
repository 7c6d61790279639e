"""How a digit model's outlier head was chosen: its typicality refitted in memory (nothing is published) under each
recipe, and what each flags of bench/trust.py's held-out sets, at the threshold the recipe's own rule picks and at
thresholds that flag a fixed share of 800 photos of test digits (a set none of the recipes is fitted or thresholded
on). Photos of digits against drawings that are not digits is the trade every fit makes (docs/trust.md, "Photos
against drawings"): comparing recipes at the same share of photos flagged separates a better head from a looser
threshold.

    python -m bench.outlier_head_choices [--model mnist-convnet] [--recipes before,networks,photos,now]

Recipes (each changes training/trust.py's and the head's settings for the one fit, then puts them back):
  before    one network of 64 units, 400 training photos weighed as pictures, threshold at 5% of 100 validation photos
  networks  four networks of 32 units, otherwise as before
  photos    four networks, 1,600 training photos weighed as a group, threshold at 5% of 100 validation photos
  now       the code's settings: four networks, 1,600 photos as a group, threshold at 9% of 400 validation photos
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import service.trust.fit as fit_module
import training.trust as trust
from bench.trust import latest_version, picture_sets, score
from service.trust.graph import folded_temperature, strip_trust
from service.trust.outlier_head import fit_outlier_head
from training.data import load_splits

RESULTS = Path(__file__).resolve().parent / "results"
SETS = ("own", "other_dataset", "scribble", "shapes", "letters", "thick_scribbles", "own_enlarged", "own_photos")
PHOTO_SHARES = (0.05, 0.075, 0.10)
HELD_PHOTOS, HELD_PHOTO_SEED = 800, 99
RECIPES = {
    "before": {"served_train": 400, "served_validation": 100, "photo_rate": 0.05, "heads": 1, "hidden": 64, "groups": False},
    "networks": {"served_train": 400, "served_validation": 100, "photo_rate": 0.05, "heads": 4, "hidden": 128, "groups": False},
    "photos": {"served_train": 1600, "served_validation": 100, "photo_rate": 0.05, "heads": 4, "hidden": 128, "groups": True},
    "now": {},
}


@contextmanager
def recipe(settings: dict, dataset: str):
    saved = (trust.SERVED_TRAIN, trust.SERVED_VALIDATION, trust.PHOTO_FLAG_RATE, fit_module.fit_outlier_head)
    try:
        trust.SERVED_TRAIN = settings.get("served_train", trust.SERVED_TRAIN)
        trust.SERVED_VALIDATION = settings.get("served_validation", trust.SERVED_VALIDATION)
        if "photo_rate" in settings:
            trust.PHOTO_FLAG_RATE = {**trust.PHOTO_FLAG_RATE, dataset: settings["photo_rate"]}
        if "heads" in settings:
            head = partial(fit_outlier_head, hidden=settings["hidden"], heads=settings["heads"])
            fit_module.fit_outlier_head = head if settings["groups"] else (lambda i, o, inlier_groups=None: head(i, o))
        yield
    finally:
        trust.SERVED_TRAIN, trust.SERVED_VALIDATION, trust.PHOTO_FLAG_RATE, fit_module.fit_outlier_head = saved


def typicality(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return score(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), x)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-convnet")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--held-out", type=int, default=300)
    args = parser.parse_args()
    version_dir = latest_version(args.models_dir, args.model)
    card = json.loads((version_dir / "model.json").read_text())
    dataset, method = card["training"]["dataset"], card["preprocessing"]["method"]
    sets = picture_sets(dataset, method, {}, args.count, args.held_out)
    served = onnx.load(version_dir / "model.onnx")
    temperature = folded_temperature(served) or card["calibration"]["temperature"]
    proto = strip_trust(served)
    del proto.metadata_props[:]
    splits = load_splits(dataset, seed=card["training"].get("seed", 0))
    held_photos, _ = trust.photos_as_served(splits.test_images, splits.test_labels, dataset, HELD_PHOTOS, HELD_PHOTO_SEED)
    options = {k: v for k, v in card["typicality"]["fit_options"].items() if k != "outlier_exposure"}
    rows = []
    for name in args.recipes.split(","):
        with recipe(RECIPES[name], dataset):
            fit = trust.fit_on_splits(proto, card, splits, temperature=temperature, served=trust.served_pictures(splits, dataset),
                                      outlier_exposure=True, **options)
        scores = {s: (typicality(fit.model, sets[s]["uploaded"][0]), sets[s]["uploaded"][1]) for s in SETS}
        photo_scores = typicality(fit.model, held_photos)
        thresholds = {"the fit's own": fit.typicality["threshold"], **{f"{share:.1%} of held photos": float(np.quantile(photo_scores, share)) for share in PHOTO_SHARES}}
        for at, threshold in thresholds.items():
            flagged = {s: round(100 * ((t < threshold).sum() + refused) / (len(t) + refused), 1) for s, (t, refused) in scores.items()}
            rows.append({"recipe": name, "threshold": at, "held_photos": round(100 * float((photo_scores < threshold).mean()), 1), **flagged})
        print(json.dumps(rows[-len(thresholds):]), flush=True)
    lines = [f"# {args.model}: outlier-head recipes", "",
             f"Written by `python -m bench.outlier_head_choices --model {args.model} --recipes {args.recipes}`: % flagged of each set "
             f"uploaded as PNG (bench/trust.py's sets, {args.count} / {args.held_out} pictures), held photos: {HELD_PHOTOS} photos of test digits (seed {HELD_PHOTO_SEED}).", "",
             "| recipe | threshold | held photos | " + " | ".join(SETS) + " |", "|---|---|---|" + "---|" * len(SETS)]
    lines += [f"| {r['recipe']} | {r['threshold']} | {r['held_photos']} | " + " | ".join(str(r[s]) for s in SETS) + " |" for r in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"outlier-head-choices-{args.model}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"outlier-head-choices-{args.model}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
