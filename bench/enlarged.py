"""How often a digit model flags enlarged uploads of its own test digits, and how often it answers them right: each
MNIST test digit enlarged with Pillow to SIDE pixels (one filter), light on dark as in MNIST or inverted (dark on
light, as a drawing is), saved as PNG and run through the service's `mnist-digit` preprocessing, as an upload is.

    python -m bench.enlarged models/mnist-convnet/3 [--count 200] [--sides 28,56,84,140,280] [--filters ...]

Prints a table (and writes it with --out FILE): for each side and filter, the share flagged out_of_distribution
(typicality below the card's threshold) and the share answered right, per polarity.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from training.data import load_splits
from training.trust import FILTERS, enlarged_as_served


def measure(version_dir: Path, images: np.ndarray, labels: np.ndarray, sides: list[int], filters: list[str]) -> list[dict]:
    card = json.loads((version_dir / "model.json").read_text())
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    threshold = card["typicality"]["threshold"]
    rows = []
    for side in sides:
        for name in filters:
            row = {"side": side, "filter": name}
            for inverted in (False, True):
                x, kept = enlarged_as_served(images, [side] * len(images), [name] * len(images), [inverted] * len(images))
                probs, typicality = session.run(["probabilities", "typicality"], {"input": x})
                # A refused upload (a 422) gets no answer: counted as flagged and wrong.
                refused = len(images) - len(x)
                flagged = ((typicality < threshold).sum() + refused) / len(images)
                right = (probs.argmax(1) == labels[kept]).sum() / len(images)
                key = "dark_on_light" if inverted else "light_on_dark"
                row[key] = {"flagged": round(float(flagged), 4), "right": round(float(right), 4), "refused": refused}
            rows.append(row)
    return rows


def markdown(version_dir: Path, rows: list[dict], count: int, threshold: float) -> str:
    lines = [f"Enlarged uploads of the first {count} MNIST test digits (training's test split), {version_dir} "
             f"(threshold {threshold:.4f}): flagged out_of_distribution / answered right", "",
             "| side | filter | light on dark: flagged | right | dark on light: flagged | right |", "|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["light_on_dark"], r["dark_on_light"]
        lines.append(f"| {r['side']} | {r['filter']} | {a['flagged']:.1%} | {a['right']:.1%} | {b['flagged']:.1%} | {b['right']:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--sides", default="28,56,84,140,280")
    parser.add_argument("--filters", default=",".join(FILTERS))
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    splits = load_splits("mnist")
    images, labels = splits.test_images[: args.count], splits.test_labels[: args.count]
    started = time.perf_counter()
    rows = measure(args.version_dir, images, labels, [int(s) for s in args.sides.split(",")], args.filters.split(","))
    threshold = json.loads((args.version_dir / "model.json").read_text())["typicality"]["threshold"]
    text = markdown(args.version_dir, rows, args.count, threshold)
    print(text + f"\n({time.perf_counter() - started:.0f} s)")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
