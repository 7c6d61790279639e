"""`serving.py --model NAME` for a photo model (a card whose preprocessing is resize-crop, resize or
letterbox, e.g. bench/resnet18.py's ResNet-18): uploads of a 640x480 JPEG instead of MNIST digits.

Series: pixelserve with batching on and off (`POST /v1/models/NAME/predict/image?top_k=5`, multipart
field `file`), the naive FastAPI + Pillow + ONNX Runtime app (bench/baselines/naive_photo.py, 2 workers,
one picture per run), and in every round after the servers the model's floor (bench/model_floor.py: ONNX Runtime
alone on the same cores, decoded pictures; each point the median of the rounds, its best batch size by that median). Each server must first answer the reference's
top 5 (bench/photo_inputs.py: Pillow, full decode, the card's resize, ONNX Runtime here) within 0.01.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnxruntime as ort

from photo_inputs import CardInput, decode, multipart, resize, same_top, sample_photos, to_input, top_of_answer
from serving_bodies import Body

TOP_K = 5
TOLERANCE = 0.01  # the tolerance for photo uploads against an independent reference
PROTOCOL = "upload"


def photo_request(card: dict, model_path: str) -> tuple[dict[str, Body], np.ndarray, dict]:
    """The upload body, the reference probabilities for its picture, and the preprocessing's CPU cost."""
    reading = CardInput.from_card(card)
    jpeg = sample_photos(1)[0]
    body, content_type = multipart(jpeg)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {reading.name: to_input(resize(decode(jpeg, reading.channels), reading), reading)})[0]
    return {PROTOCOL: Body(PROTOCOL, body, content_type)}, probabilities, preprocessing_cost(jpeg, reading)


def preprocessing_cost(jpeg: bytes, reading: CardInput, repeats: int = 15) -> dict:
    """CPU milliseconds (process time, median) to decode the JPEG and to resize it the card's way."""
    decode_times, resize_times, tensor_times = [], [], []
    for _ in range(repeats):
        start = time.process_time()
        picture = decode(jpeg, reading.channels)
        decoded = time.process_time()
        view = resize(picture, reading)
        resized = time.process_time()
        to_input(view, reading)
        decode_times.append(decoded - start)
        resize_times.append(resized - decoded)
        tensor_times.append(time.process_time() - resized)
    return {"decode_ms": round(1000 * statistics.median(decode_times), 3),
            "resize_ms": round(1000 * statistics.median(resize_times), 3),
            "to_tensor_ms": round(1000 * statistics.median(tensor_times), 3)}


def photo_paths(name: str) -> dict[str, str]:
    return {PROTOCOL: f"/v1/models/{name}/predict/image?top_k={TOP_K}"}


def answer_matches(content: bytes, expected: np.ndarray, classes: list[str]) -> tuple[bool, list]:
    answered = top_of_answer(content)
    return same_top(answered, expected[0], classes, TOP_K, TOLERANCE), answered


def photo_targets(report: dict) -> list[dict]:
    """The issue's targets for a ResNet-18-sized model, as ratios within this one run."""
    from serving_report import _point, _target  # here: serving_report imports this module

    high = max(report["connections"])
    service = {c: _point(report, "service-on", PROTOCOL, c) for c in (1, high)}
    naive = {c: _point(report, "naive-photo", PROTOCOL, c) for c in (1, high)}
    floor = (report.get("floor") or {}).get("best")

    def ratio(a: dict | None, b: dict | None, key: str) -> float | None:
        return a[key] / b[key] if a and b and b[key] else None

    return [
        _target(f"req/s at {high} connections > naive FastAPI + Pillow + ONNX Runtime's",
                ratio(service[high], naive[high], "requests_per_s"), 1.0, unit="x"),
        _target(f"p99 at {high} connections < the naive app's", ratio(service[high], naive[high], "p99_ms"), 1.0,
                at_most=True, unit="x"),
        _target("req/s at 1 connection no lower than the naive app's", ratio(service[1], naive[1], "requests_per_s"),
                1.0, unit="x"),
        _target(f"req/s at {high} connections >= 85% of the model's floor (ONNX Runtime alone, best batch)",
                service[high]["requests_per_s"] / floor["images_per_s"] if service[high] and floor else None, 0.85, unit="x"),
    ]


def floor_lines(report: dict) -> list[str]:
    """The floor and where a request's CPU goes, for the Markdown report."""
    floor = report.get("floor")
    if not floor:
        return []
    best, leanest, cores = floor["best"], floor["leanest"], floor["cores"]
    lines = ["", f"The model's floor, ONNX Runtime alone on {cores} cores with the picture already decoded: "
             f"**{best['images_per_s']:.1f} images/s** ({best['layout']}, batch {best['batch']}; medians of "
             f"{len(floor.get('rounds') or [1])} rounds, each measured after that round's servers; load average "
             f"{floor['load_average'][0]} at its end).", "",
             "| floor layout | batch | images/s | CPU ms per image |", "|---|---:|---:|---:|"]
    lines += [f"| {p['layout']} | {p['batch']} | {p['images_per_s']:.1f} | {p['cpu_ms_per_image']:.1f} |"
              for p in floor["points"]]
    model_ms = leanest["cpu_ms_per_image"]
    cost = report.get("preprocessing_cost") or {}
    picture_ms = cost.get("decode_ms", 0) + cost.get("resize_ms", 0) + cost.get("to_tensor_ms", 0)
    lines += ["", f"Where a request's CPU goes (process time, so the machine's load does not inflate it): the model "
              f"{model_ms:.1f} ms per image at its leanest ({leanest['layout']}, batch {leanest['batch']}); decoding "
              f"the JPEG {cost.get('decode_ms', 0):.1f} ms, the card's resize {cost.get('resize_ms', 0):.1f} ms, the "
              f"tensor {cost.get('to_tensor_ms', 0):.2f} ms (measured in the benchmark's own process)."]
    high = max(report["connections"])
    for series in report["series"]:
        point = next((p for p in series["points"] if p["connections"] == high), None)
        if point:
            cpu = point["server_cpu_ms_per_request"]
            lines.append(f"- {series['label']} at {high} connections: {cpu:.1f} ms of server CPU per request "
                         f"(the floor's model CPU is {model_ms / cpu:.0%} of it; the picture "
                         f"{picture_ms / cpu:.0%}; the rest, {cpu - model_ms - picture_ms:.1f} ms, HTTP, multipart, "
                         f"the answer and the model run's own overhead); {point['requests_per_s'] / best['images_per_s']:.0%} "
                         "of the floor's images/s")
    return lines
