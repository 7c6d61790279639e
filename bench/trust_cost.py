"""What the typicality output costs ONNX Runtime itself: `session.run` of a model's version 1 (probabilities only)
against its served version (temperature and typicality folded in), and optionally the served version as it was at
an earlier git revision, side by side on one thread.

    python -m bench.trust_cost [--model mnist-convnet] [--before REV] [--rounds 21] [--batches 1,16,64]

Each round runs every graph in turn (interleaved, so slow spells of a shared machine fall on all of them), a fixed
number of runs per graph, on MNIST test digits; the figures are the medians over the rounds of the time per run:
wall-clock, and the calling thread's CPU time (ONNX Runtime on one thread runs on the caller's thread), which a
loaded machine disturbs far less than the wall clock. Writes bench/results/trust-cost.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def one_thread_session(model: bytes) -> ort.InferenceSession:
    """As the service makes them (service.inference.runtime.session_options), on one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def served_version(model: str) -> Path:
    return max((p for p in (ROOT / "models" / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def graphs(model: str, before: str | None) -> dict[str, bytes]:
    """label -> ONNX bytes: version 1, the served version at `before` (a git revision), the served version now."""
    served = served_version(model)
    found = {"v1": (ROOT / "models" / model / "1" / "model.onnx").read_bytes()}
    if before:
        path = served.relative_to(ROOT) / "model.onnx"
        found[f"v{served.name} at {before}"] = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{before}:{path.as_posix()}"], check=True, capture_output=True).stdout
    found[f"v{served.name} now"] = (served / "model.onnx").read_bytes()
    return found


def node_count(model: bytes) -> int:
    import onnx  # the dev extra; only to count nodes

    return len(onnx.load_from_string(model).graph.node)


def measure(sessions: dict[str, ort.InferenceSession], pictures: np.ndarray, batches: list[int], rounds: int) -> dict:
    """{batch: {label: {"wall_us": median, "cpu_us": median}}}."""
    results = {}
    for batch in batches:
        x = pictures[:batch]
        runs = max(5, 640 // batch)
        wall = {label: [] for label in sessions}
        cpu = {label: [] for label in sessions}
        for session in sessions.values():  # warm up
            for _ in range(runs):
                session.run(None, {"input": x})
        for _ in range(rounds):
            for label, session in sessions.items():
                w0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(runs):
                    session.run(None, {"input": x})
                cpu[label].append((time.thread_time() - c0) / runs * 1e6)
                wall[label].append((time.perf_counter() - w0) / runs * 1e6)
        results[batch] = {label: {"wall_us": round(statistics.median(wall[label]), 1), "cpu_us": round(statistics.median(cpu[label]), 1)}
                          for label in sessions}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-convnet")
    parser.add_argument("--before", default=None, help="a git revision: also measure the served version as it was there")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    from training.data import load_splits

    pictures = (load_splits("mnist").test_images[:64].astype(np.float32) / 255.0)[:, None]
    models = graphs(args.model, args.before)
    sessions = {label: one_thread_session(data) for label, data in models.items()}
    batches = [int(b) for b in args.batches.split(",")]
    results = measure(sessions, pictures, batches, args.rounds)
    command = f"python -m bench.trust_cost --model {args.model}" + (f" --before {args.before}" if args.before else "") + f" --rounds {args.rounds}"
    report = {"command": command, "model": args.model, "nodes": {label: node_count(m) for label, m in models.items()}, "microseconds_per_run": results}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"trust-cost-{args.model}.json").write_text(json.dumps(report, indent=2) + "\n")
    labels = list(models)
    lines = [f"# What typicality costs ONNX Runtime: {args.model}", "",
             f"`{command}`: one `session.run` on one thread, medians of {args.rounds} interleaved rounds, in microseconds "
             "(CPU time of the calling thread, and wall-clock); the ratio is to version 1's CPU time.", "",
             "| batch | " + " | ".join(f"{label} ({report['nodes'][label]} nodes)" for label in labels) + " |",
             "|---|" + "---|" * len(labels)]
    for batch, row in results.items():
        base = row[labels[0]]["cpu_us"]
        cells = [f"{row[label]['cpu_us']:.0f} cpu / {row[label]['wall_us']:.0f} wall ({row[label]['cpu_us'] / base:.2f}x)" for label in labels]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    (args.results / f"trust-cost-{args.model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
