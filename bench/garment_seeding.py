"""How GrabCut is started on a natural photo of clothes, side by side: seeded by colour (the pixels unlike every
border colour as probable item, the rest as probable surface: the preprocessing before the whole-item start) against
the served start (everything inside the border probable item). For each, the share of the clothing dataset's photos a
model answers right and the median preprocessing time of a photo, both seedings alternated in one run on one core.

    python -m bench.garment_seeding --photos DIR [--split validation] [--model models/fashion-convnet/3] [--rounds 2]

DIR is the clothing dataset's folder (docs/photos.md, "Learning from real photos of clothes"). Pick a model that did
not learn from the split measured (version 3 learned from none of them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

import service.imaging.garments as garments
from service.imaging import to_model_input
from training import real_clothes


def grabcut_seeded_by_colour(small: np.ndarray) -> np.ndarray | None:
    """The preprocessing's `_grabcut` as it was before the whole-item start (commit 4bfbd18)."""
    pixels = np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)
    ring = garments._border(small.shape[:2])
    seeds = np.full(small.shape[:2], cv2.GC_PR_BGD, np.uint8)
    seeds[garments._unlike_border(small)] = cv2.GC_PR_FGD
    seeds[ring] = cv2.GC_BGD
    if not (seeds == cv2.GC_PR_FGD).any():
        height, width = seeds.shape
        seeds[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = cv2.GC_PR_FGD
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(pixels, seeds, None, background, foreground, garments.GRABCUT_ROUNDS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    item = garments._kept_pieces((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD))
    share = float(item.mean())
    return item if 0.01 <= share <= 0.9 else None


SEEDINGS = {"seeded by colour (before)": grabcut_seeded_by_colour, "whole item (served)": garments._grabcut}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.garment_seeding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="the clothing dataset's folder")
    parser.add_argument("--split", choices=real_clothes.SPLITS, default="validation")
    parser.add_argument("--model", type=Path, default=Path("models/fashion-convnet/3"), help="a published version folder")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the photos, each seeding in turn")
    args = parser.parse_args(argv)

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core, as the service's workers run it
    photos = [p for p in real_clothes.read_manifest() if p.split == args.split]
    data = [real_clothes.load(p, args.photos) for p in photos]
    labels = np.array([real_clothes.CLASSES.index(p.label) for p in photos])
    session = ort.InferenceSession(str(args.model / "model.onnx"), providers=["CPUExecutionProvider"])
    served = garments._grabcut
    times: dict[str, list[float]] = {name: [] for name in SEEDINGS}
    inputs: dict[str, np.ndarray] = {}
    try:
        for round_ in range(args.rounds):
            order = list(SEEDINGS) if round_ % 2 == 0 else list(SEEDINGS)[::-1]
            for name in order:
                garments._grabcut = SEEDINGS[name]
                made = []
                for picture in data:
                    started = time.process_time()
                    made.append(to_model_input(picture, "fashion-fit", max_pixels=40_000_000))
                    times[name].append(time.process_time() - started)
                inputs[name] = np.stack(made)
    finally:
        garments._grabcut = served
        cv2.setNumThreads(threads)
    print(f"{len(photos)} {args.split} photos, {args.model}, {args.rounds} rounds\n")
    print("| GrabCut start | right | median ms a photo |\n|---|---|---|")
    for name in SEEDINGS:
        predicted = session.run(["probabilities"], {session.get_inputs()[0].name: inputs[name]})[0].argmax(1)
        print(f"| {name} | {(predicted == labels).mean():.1%} | {statistics.median(times[name]) * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
