"""The model's floor: ONNX Runtime alone, on the same cores as the servers, with the pictures already
decoded and preprocessed, at each batch size; no HTTP, no decoding. Its best images/s is what no server
of this model can beat on this machine.

    .venv/bin/python bench/model_floor.py --model-dir /tmp/bench-models/resnet18-bench/1

Two ways to use the cores are measured at every batch size: one session with as many intra-op threads as
there are cores, and one process per core with a 1-thread session each (the service's shape: a worker
per core). Each point runs a warm-up batch, then batches for at least `--duration` seconds (and at least
two); the figure is images / wall seconds, summed over the processes, and beside it the CPU time per
image (process time), which a shared machine's load does not inflate.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_inputs import CardInput, reference_input, sample_photos  # noqa: E402


def session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def run_batches(model: Path, input_name: str, batch: np.ndarray, threads: int, duration: float,
                start_at: float | None = None) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of back-to-back runs of `batch` for at least `duration` seconds."""
    runner = session(model, threads)
    runner.run(None, {input_name: batch})  # warm-up: the first run allocates
    if start_at is not None:  # processes start their timed runs together
        time.sleep(max(0.0, start_at - time.time()))
    images, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        runner.run(None, {input_name: batch})
        images += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= duration and images >= 2 * len(batch):
            return images, elapsed, time.process_time() - cpu_start


def _worker(args: tuple) -> tuple[int, float, float]:
    return run_batches(*args)


def measure(model: Path, input_name: str, inputs: np.ndarray, cores: int, batch_sizes: list[int],
            duration: float) -> list[dict]:
    points = []
    for size in batch_sizes:
        batch = np.ascontiguousarray(np.resize(inputs, (size, *inputs.shape[1:])))
        images, seconds, cpu = run_batches(model, input_name, batch, cores, duration)
        points.append({"layout": f"1 process x {cores} threads", "batch": size, "images_per_s": round(images / seconds, 2),
                       "ms_per_batch": round(1000 * seconds * size / images, 2),
                       "cpu_ms_per_image": round(1000 * cpu / images, 2)})
        print(f"floor: 1 process x {cores} threads, batch {size:3}: {images / seconds:8.2f} images/s", flush=True)
        if cores > 1:
            start_at = time.time() + 8  # time for the processes to load the model and warm up
            with multiprocessing.get_context("spawn").Pool(cores) as pool:
                results = pool.map(_worker, [(model, input_name, batch, 1, duration, start_at)] * cores)
            rate = sum(images / seconds for images, seconds, _ in results)
            cpu_per_image = sum(cpu for _, _, cpu in results) / sum(images for images, _, _ in results)
            points.append({"layout": f"{cores} processes x 1 thread", "batch": size, "images_per_s": round(rate, 2),
                           "ms_per_batch": round(1000 * cores * size / rate, 2),
                           "cpu_ms_per_image": round(1000 * cpu_per_image, 2)})
            print(f"floor: {cores} processes x 1 thread, batch {size:3}: {rate:8.2f} images/s", flush=True)
    return points


def floor_inputs(model_dir: Path) -> tuple[Path, str, np.ndarray]:
    """The model file, its input name and four decoded sample photos as the reference pipeline makes them."""
    card = json.loads((model_dir / "model.json").read_text())
    reading = CardInput.from_card(card)
    inputs = np.concatenate([reference_input(jpeg, reading) for jpeg in sample_photos(4)])
    return model_dir / card["onnx"]["file"], reading.name, inputs


def summarise(rounds: list[list[dict]], cores: int, duration: float) -> dict:
    """Each point's median over the rounds, then the best batch by that median. The best of single noisy
    points would be biased upward (the largest of several draws), so the floor is judged as the servers are:
    medians of rounds measured in turn with them."""
    points = []
    for same in zip(*rounds):
        point = dict(same[0])
        for key in ("images_per_s", "ms_per_batch", "cpu_ms_per_image"):
            point[key] = round(statistics.median(p[key] for p in same), 2)
        points.append(point)
    best = max(points, key=lambda p: p["images_per_s"])
    # On a shared machine wall-clock rates move with the load; CPU per image is the steadier figure.
    leanest = min(points, key=lambda p: p["cpu_ms_per_image"])
    return {"cores": cores, "duration_s": duration, "rounds": rounds, "points": points, "best": best,
            "leanest": leanest, "load_average": [round(x, 2) for x in os.getloadavg()]}


def floor(model_dir: Path, cores: int, batch_sizes: list[int], duration: float, rounds: int = 1) -> dict:
    model, name, inputs = floor_inputs(model_dir)
    return summarise([measure(model, name, inputs, cores, batch_sizes, duration) for _ in range(rounds)], cores, duration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a version directory (model.onnx + model.json)")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), help="cores to use (default: all)")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16", help="comma-separated (default %(default)s)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="times every point is measured; each figure is the median (default %(default)s)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    result = floor(args.model_dir, args.cores, [int(b) for b in args.batch_sizes.split(",")], args.duration, args.rounds)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
