"""How often each shipped model flags pictures as out of distribution: its own test pictures, the other
dataset's, uniform noise and blank pictures with a scribble; each as raw tensors and as the model sees them
when sent as uploads (through its preprocessing method). Side by side with the max-softmax baseline (Hendrycks &
Gimpel 2017) at the same 5%-of-own-test threshold rule. Also the calibration figures from the cards.

    python -m bench.trust [--models-dir models] [--mnist-dir DIR] [--count 2000]

Writes bench/results/trust.json and bench/results/trust.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.ood_sets import as_uploaded, scribbles, uniform_noise
from service.trust.typicality import threshold_for
from training.data import load_splits

RESULTS = Path(__file__).parent / "results"
OTHER = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
GOALS = {  # the goals: share flagged at least (OOD sets) or at most (own pictures)
    "digits": {"other_dataset": 0.95, "noise": 0.90, "scribble": 0.90, "own": 0.05},
    "fashion": {"other_dataset": 0.95, "own": 0.05},
}


def latest_version(models_dir: Path, name: str) -> Path:
    return max((p for p in (models_dir / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def score(session: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    chunks = [session.run(["probabilities", "typicality"], {"input": x[i : i + 500]}) for i in range(0, len(x), 500)]
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def measure(version_dir: Path, data_dirs: dict, count: int) -> dict:
    card = json.loads((version_dir / "model.json").read_text())
    dataset, method, task = card["training"]["dataset"], card["preprocessing"]["method"], card["task"]
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    own = load_splits(dataset, data_dirs.get(dataset))
    other = load_splits(OTHER[dataset], data_dirs.get(OTHER[dataset]))
    pixels = lambda images: (images[:count].astype(np.float32) / 255.0)[:, None]  # noqa: E731
    sets = {
        "own": pixels(own.test_images),
        "other_dataset": pixels(other.test_images),
        "noise": uniform_noise(count, seed=1),
        "scribble": scribbles(count, seed=1),
    }
    threshold = card["typicality"]["threshold"]
    own_probs, _ = score(session, sets["own"])
    msp_threshold = threshold_for(own_probs.max(1), 0.05)  # the baseline, held to the same 5% rule
    rows = {}
    for name, raw in sets.items():
        for form, (x, refused) in (("raw", (raw, 0)), ("uploaded", as_uploaded(raw, method))):
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
        "threshold": threshold, "max_softmax_threshold": round(msp_threshold, 6),
        "calibration": {k: card["calibration"][k] for k in ("temperature", "ece_before", "ece_after", "accuracy")},
        "rates": rows, "goals": GOALS.get(task, {}),
    }


def markdown(results: list[dict]) -> str:
    lines = ["# Trust: calibration and out-of-distribution flags", "",
             "Written by `python -m bench.trust`. Flagged = typicality below the card's threshold; the max-softmax",
             "baseline flags a top probability below the value that flags 5% of the model's own test pictures. Uploaded: each",
             "picture sent as a PNG through the model's preprocessing; those it refuses (422) count as flagged.", "",
             "| model | temperature | test ECE before | after | accuracy |", "|---|---|---|---|---|"]
    for r in results:
        c = r["calibration"]
        lines.append(f"| {r['model']} v{r['version']} | {c['temperature']:.3f} | {c['ece_before']:.4f} | {c['ece_after']:.4f} | {c['accuracy']:.4f} |")
    for r in results:
        lines += ["", f"## {r['model']} v{r['version']} ({r['preprocessing']})", "",
                  "| pictures | form | n | refused (422) | typicality flags | max-softmax flags | goal |", "|---|---|---|---|---|---|---|"]
        for row in r["rates"].values():
            goal = r["goals"].get(row["set"])
            goal_text = "" if goal is None else (f"<= {goal:.0%}" if row["set"] == "own" else f">= {goal:.0%}")
            lines.append(f"| {row['set']} | {row['form']} | {row['pictures']} | {row['refused']} | {row['typicality_flagged']:.1%} | "
                         f"{row['max_softmax_flagged']:.1%} | {goal_text} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--mnist-dir", type=Path, default=None, help="folder of the MNIST IDX files (default: training's)")
    parser.add_argument("--count", type=int, default=2000, help="pictures per set")
    parser.add_argument("--models", default="mnist-convnet,mnist-mlp,fashion-convnet,fashion-mlp")
    args = parser.parse_args()
    data_dirs = {"mnist": args.mnist_dir} if args.mnist_dir else {}
    results = [measure(latest_version(args.models_dir, name), data_dirs, args.count) for name in args.models.split(",")]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trust.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "trust.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
