"""Pillow's reduced JPEG decoding (`Image.draft`) for a photo model's upload path: time per picture with
and without, and how far the model's input and probabilities move.

    .venv/bin/python bench/jpeg_draft.py --model-dir /tmp/bench-models/resnet18-bench/1

JPEG can decode at 1/2, 1/4 or 1/8 scale in the DCT domain, far cheaper than a full decode followed by a
resize. Pillow's `draft(mode, size)` picks the largest reduction that keeps the picture at least `size`;
the card's resize then runs on the smaller picture. Measured for the card's preprocessing on:

* 640x480 JPEGs (the benchmark's uploads) with `draft` asked for the card's resize target: Pillow keeps
  the full scale (1/2 would be 320x240, under the 256 shorter side), so nothing changes;
* the same pictures forced to 1/2 scale (`draft` to 320x240): decoded smaller, then resized *up* to 256;
* 1280x960 JPEGs of the same photos, `draft` to the resize target: 1/2 scale (640x480), then resized down.

For each: decode and resize CPU time per picture (process time, the median over `--repeats`), and the largest difference from
the full decode in the model's input tensor (in normalised units) and in its probabilities.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_inputs import CardInput, decode, resize, sample_photos, to_input  # noqa: E402


def timed(function, repeats: int) -> tuple[float, object]:
    """The median CPU time of `function` (process time: on a shared machine, time spent waiting for a
    core does not count), and its result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.process_time()
        result = function()
        times.append(time.process_time() - start)
    return statistics.median(times), result


def resize_target(size: tuple[int, int], card: CardInput) -> tuple[int, int]:
    """The size the card's resize brings a picture to (what `draft` may not go below)."""
    if card.method == "resize":
        return card.width, card.height
    width, height = size
    shorter = card.resize_shorter
    return (shorter, int(shorter * height / width)) if width <= height else (int(shorter * width / height), shorter)


def measure(jpegs: list[bytes], card: CardInput, session: ort.InferenceSession, draft_of, repeats: int) -> dict:
    """Per-picture medians of decode and resize, full against `draft_of(size)`, and the differences."""
    rows = {"decode_ms": [], "decode_draft_ms": [], "resize_ms": [], "resize_draft_ms": [],
            "input_diff": [], "probability_diff": [], "top5_same": [], "decoded_size": []}
    for jpeg in jpegs:
        size = Image.open(io.BytesIO(jpeg)).size
        draft = draft_of(size)
        full_decode, full = timed(lambda: decode(jpeg, card.channels), repeats)
        small_decode, small = timed(lambda: decode(jpeg, card.channels, draft), repeats)
        full_resize, full_view = timed(lambda: resize(full, card), repeats)
        small_resize, small_view = timed(lambda: resize(small, card), repeats)
        full_input, small_input = to_input(full_view, card), to_input(small_view, card)
        full_p = session.run(None, {card.name: full_input})[0][0]
        small_p = session.run(None, {card.name: small_input})[0][0]
        rows["decode_ms"].append(1000 * full_decode)
        rows["decode_draft_ms"].append(1000 * small_decode)
        rows["resize_ms"].append(1000 * full_resize)
        rows["resize_draft_ms"].append(1000 * small_resize)
        rows["input_diff"].append(float(np.abs(full_input - small_input).max()))
        rows["probability_diff"].append(float(np.abs(full_p - small_p).max()))
        rows["top5_same"].append(bool(list(np.argsort(-full_p)[:5]) == list(np.argsort(-small_p)[:5])))
        rows["decoded_size"].append(f"{size[0]}x{size[1]} -> {small.size[0]}x{small.size[1]}")
    full_ms = statistics.median(a + b for a, b in zip(rows["decode_ms"], rows["resize_ms"]))
    draft_ms = statistics.median(a + b for a, b in zip(rows["decode_draft_ms"], rows["resize_draft_ms"]))
    return {
        "decoded": sorted(set(rows["decoded_size"])),
        "full_decode_ms": round(statistics.median(rows["decode_ms"]), 3),
        "full_resize_ms": round(statistics.median(rows["resize_ms"]), 3),
        "draft_decode_ms": round(statistics.median(rows["decode_draft_ms"]), 3),
        "draft_resize_ms": round(statistics.median(rows["resize_draft_ms"]), 3),
        "full_total_ms": round(full_ms, 3),
        "draft_total_ms": round(draft_ms, 3),
        "max_input_difference": round(max(rows["input_diff"]), 5),
        "max_probability_difference": float(f"{max(rows['probability_diff']):.3g}"),
        "top5_unchanged": f"{sum(rows['top5_same'])} of {len(jpegs)}",
    }


def enlarged(jpegs: list[bytes], factor: int) -> list[bytes]:
    out = []
    for jpeg in jpegs:
        picture = Image.open(io.BytesIO(jpeg)).convert("RGB")
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a photo model's version directory")
    parser.add_argument("--pictures", type=int, default=5, help="sample photos (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timings per picture; the median counts")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    card_json = json.loads((args.model_dir / "model.json").read_text())
    card = CardInput.from_card(card_json)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(args.model_dir / card_json["onnx"]["file"]), options,
                                   providers=["CPUExecutionProvider"])
    jpegs = sample_photos(args.pictures)
    result = {
        "model": card_json["name"],
        "preprocessing": card_json["preprocessing"]["method"],
        "640x480, draft to the resize target (Pillow's choice)": measure(
            jpegs, card, session, lambda size: resize_target(size, card), args.repeats),
        "640x480, forced to 1/2 scale (draft to 320x240)": measure(
            jpegs, card, session, lambda size: (size[0] // 2, size[1] // 2), args.repeats),
        "1280x960, draft to the resize target (1/2 scale)": measure(
            enlarged(jpegs, 2), card, session, lambda size: resize_target(size, card), args.repeats),
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
