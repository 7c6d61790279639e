"""How often each served model flags pictures as out of distribution: its own test pictures, the other
dataset's, uniform noise and blank pictures with a scribble, and held-out pictures of other kinds that nothing was
fitted on (shapes, letters, crops of scikit-image's sample photos, blurred noise and gratings); each as raw tensors
and as the model sees them when sent as uploads (through its preprocessing method). Also synthetic phone photos of
the model's own held-out pictures (training/photo_eval.py's fixed sets) and its own test pictures enlarged with Pillow
and uploaded (own_enlarged), which must mostly NOT be flagged. Side by
side with the max-softmax baseline (Hendrycks & Gimpel 2017) at the same 5%-of-own-test threshold rule. Also the
calibration figures from the cards.

    python -m bench.trust [--models-dir models] [--mnist-dir DIR] [--count 1000] [--versions served|all]

The served version of a model is its highest (what `python -m service` serves by default); `--versions all`
measures every version that has a typicality section. Writes bench/results/trust.json and bench/results/trust.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.ood_sets import HELD_OUT, as_uploaded, scribbles, small, uniform_noise, uploaded
from service.trust.typicality import threshold_for
from training.data import load_splits
from training.photo_eval import PHOTO_SETS, photo_set
from training.trust import FILTERS, enlarged_as_served

RESULTS = Path(__file__).parent / "results"
OTHER = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
GOALS = {  # the goals: share flagged at least (OOD sets) or at most (own pictures, photos of them)
    "digits": {"other_dataset": 0.95, "noise": 0.90, "scribble": 0.90, "own": 0.05, "own_photos": 0.10, "own_enlarged": 0.05},
    "fashion": {"other_dataset": 0.95, "own": 0.05, "own_enlarged": 0.05},
}
AT_MOST = ("own", "own_photos", "own_enlarged")  # sets whose goal is a ceiling
# own_enlarged: the own test pictures enlarged to one of these sides with one of these Pillow filters, every other
# 16 inverted, and uploaded (a small picture a person enlarged before sending it).
ENLARGED_SIDES = (56, 84, 140, 280)


def latest_version(models_dir: Path, name: str) -> Path:
    return max(versions(models_dir, name), key=lambda p: int(p.name))


def versions(models_dir: Path, name: str) -> list[Path]:
    return sorted((p for p in (models_dir / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def photo_inputs(dataset: str, method: str) -> tuple[np.ndarray, int]:
    """training/photo_eval.py's fixed photo sets of the dataset's held-out pictures, through the preprocessing."""
    from service.errors import InvalidInput
    from service.imaging import to_model_input

    kept, refused = [], 0
    for spec in PHOTO_SETS:
        if spec.dataset != dataset:
            continue
        for data, _ in photo_set(spec):
            try:
                kept.append(to_model_input(data, method, max_pixels=40_000_000))
            except InvalidInput:
                refused += 1
    return np.stack(kept), refused


def picture_sets(dataset: str, method: str, data_dirs: dict, count: int, held_out: int) -> dict:
    """name -> {form: (tensors, refused)} for every set measured on a model of `dataset` with `method`."""
    own = load_splits(dataset, data_dirs.get(dataset))
    other = load_splits(OTHER[dataset], data_dirs.get(OTHER[dataset]))
    pixels = lambda images: (images[:count].astype(np.float32) / 255.0)[:, None]  # noqa: E731
    raw = {"own": pixels(own.test_images), "other_dataset": pixels(other.test_images),
           "noise": uniform_noise(count, seed=1), "scribble": scribbles(count, seed=1)}
    sets = {name: {"raw": (x, 0), "uploaded": as_uploaded(x, method)} for name, x in raw.items()}
    for name, make in HELD_OUT.items():
        pictures = make(held_out, seed=7)
        sets[name] = {"raw": (small(pictures), 0), "uploaded": uploaded(pictures, method)}
    sets["own_photos"] = {"uploaded": photo_inputs(dataset, method)}
    sets["own_enlarged"] = {"uploaded": enlarged_inputs(own.test_images[:count], method)}
    return sets


def enlarged_inputs(images: np.ndarray, method: str) -> tuple[np.ndarray, int]:
    """Each picture enlarged (side, filter and polarity in turn) and uploaded as PNG through the preprocessing."""
    n = np.arange(len(images))
    sides = np.asarray(ENLARGED_SIDES)[n % len(ENLARGED_SIDES)]
    filters = np.asarray(list(FILTERS))[(n // len(ENLARGED_SIDES)) % len(FILTERS)]
    x, kept = enlarged_as_served(images, sides, filters, (n // 16) % 2 == 1, method)
    return x, len(images) - len(kept)


def score(session: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    chunks = [session.run(["probabilities", "typicality"], {"input": x[i : i + 500]}) for i in range(0, len(x), 500)]
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def measure(version_dir: Path, sets: dict) -> dict:
    card = json.loads((version_dir / "model.json").read_text())
    method, task = card["preprocessing"]["method"], card["task"]
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    threshold = card["typicality"]["threshold"]
    own_probs, _ = score(session, sets["own"]["raw"][0])
    msp_threshold = threshold_for(own_probs.max(1), 0.05)  # the baseline, held to the same 5% rule
    rows = {}
    for name, forms in sets.items():
        for form, (x, refused) in forms.items():
            probs, typicality = score(session, x) if len(x) else (np.zeros((0, 10)), np.zeros(0))
            total = len(x) + refused
            # A picture the preprocessing refuses (422) gets no answer at all: it counts as caught.
            rows[f"{name} ({form})"] = {
                "set": name, "form": form, "pictures": total, "refused": refused,
                "typicality_flagged": round(float(((typicality < threshold).sum() + refused) / total), 4),
                "max_softmax_flagged": round(float(((probs.max(1) < msp_threshold).sum() + refused) / total), 4),
            }
    return {
        "model": card["name"], "version": card["version"], "task": task, "preprocessing": method,
        "typicality_method": card["typicality"]["method"],
        "threshold": threshold, "max_softmax_threshold": round(msp_threshold, 6),
        "calibration": {k: card["calibration"][k] for k in ("temperature", "ece_before", "ece_after", "accuracy")},
        "rates": rows, "goals": GOALS.get(task, {}),
    }


def markdown(results: list[dict]) -> str:
    lines = ["# Trust: calibration and out-of-distribution flags", "",
             f"Written by `{COMMAND}`. Flagged = typicality below the card's threshold; the max-softmax",
             "baseline flags a top probability below the value that flags 5% of the model's own test pictures. Uploaded: each",
             "picture sent as a PNG through the model's preprocessing; those it refuses (422) count as flagged. own_photos:",
             "synthetic phone photos of held-out pictures of the model's own classes (training/photo_eval.py's fixed sets).",
             "own_enlarged: the own test pictures enlarged to 56, 84, 140 or 280 px (nearest, bilinear, bicubic or lanczos; half",
             "dark on light) and uploaded.",
             "shapes, letters, natural_crops, smooth_noise, thick_scribbles: held-out pictures nothing was fitted on (bench/ood_sets.py).", "",
             "| model | temperature | test ECE before | after | accuracy |", "|---|---|---|---|---|"]
    for r in results:
        c = r["calibration"]
        lines.append(f"| {r['model']} v{r['version']} | {c['temperature']:.3f} | {c['ece_before']:.4f} | {c['ece_after']:.4f} | {c['accuracy']:.4f} |")
    for r in results:
        lines += ["", f"## {r['model']} v{r['version']} ({r['preprocessing']}; typicality {r['typicality_method']})", "",
                  "| pictures | form | n | refused (422) | typicality flags | max-softmax flags | goal |", "|---|---|---|---|---|---|---|"]
        for row in r["rates"].values():
            goal = r["goals"].get(row["set"])
            goal_text = "" if goal is None else (f"<= {goal:.0%}" if row["set"] in AT_MOST else f">= {goal:.0%}")
            lines.append(f"| {row['set']} | {row['form']} | {row['pictures']} | {row['refused']} | {row['typicality_flagged']:.1%} | "
                         f"{row['max_softmax_flagged']:.1%} | {goal_text} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    global COMMAND
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--mnist-dir", type=Path, default=None, help="folder of the MNIST IDX files (default: training's)")
    parser.add_argument("--count", type=int, default=2000, help="pictures per set")
    parser.add_argument("--held-out", type=int, default=500, help="pictures per held-out set (shapes, letters, ...)")
    parser.add_argument("--models", default="mnist-convnet,mnist-mlp,fashion-convnet,fashion-mlp")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for trust.json and trust.md")
    parser.add_argument("--versions", choices=["served", "all"], default="served",
                        help="the served (highest) version of each model, or every version with a typicality section")
    args = parser.parse_args()
    COMMAND = f"python -m bench.trust --count {args.count} --held-out {args.held_out} --versions {args.versions}"
    data_dirs = {"mnist": args.mnist_dir} if args.mnist_dir else {}
    results, cached = [], {}
    for name in args.models.split(","):
        chosen = [latest_version(args.models_dir, name)] if args.versions == "served" else versions(args.models_dir, name)
        for version_dir in chosen:
            card = json.loads((version_dir / "model.json").read_text())
            if "typicality" not in card:
                continue
            key = (card["training"]["dataset"], card["preprocessing"]["method"])
            if key not in cached:
                cached[key] = picture_sets(*key, data_dirs, args.count, args.held_out)
            results.append(measure(version_dir, cached[key]))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "trust.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / "trust.md").write_text(markdown(results))
    print(markdown(results))


COMMAND = "python -m bench.trust"

if __name__ == "__main__":
    main()
