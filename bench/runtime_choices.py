"""How a photo model should run: worker processes, ONNX Runtime threads per worker and the batch cap,
measured side by side on one model (uploads of a 640x480 JPEG to its top 5, as bench/serving.py sends them).

    .venv/bin/python bench/resnet18.py --repository /tmp/bench-models
    .venv/bin/python bench/runtime_choices.py --repository /tmp/bench-models --model resnet18-bench

Each layout is `python -m service` with its settings given as PIXELSERVE_* variables (for one model among
others, the same choices go in PIXELSERVE_MODEL_RUNTIME and PIXELSERVE_MODEL_BATCHING). Rounds are
interleaved (every layout once, then again, each round starting elsewhere in the line-up) so that a slow
spell of a shared machine falls on different layouts, and each figure is the median over the rounds.
Writes bench/results/runtime-choices-NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_inputs import is_photo_model  # noqa: E402
from serving import Running, Server, Series, check_answers, latest_version, machine, median_point, write_atomically, wrk  # noqa: E402
from serving_photos import photo_paths, photo_request  # noqa: E402

from service.config import available_cpus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def layouts(cores: int) -> list[tuple[str, str, dict[str, str], int]]:
    """(key, label, settings, workers): the default and its alternatives on `cores` cores."""
    one = {"PIXELSERVE_ORT_INTRA_OP_THREADS": "1", "PIXELSERVE_ORT_SOLO_THREADS": "0"}
    spread = {"PIXELSERVE_ORT_INTRA_OP_THREADS": str(cores), "PIXELSERVE_ORT_SOLO_THREADS": "0"}
    return [
        ("default", f"{cores} workers x 1 thread, a picture alone on {cores} threads, batches up to 64 (the default)", {}, cores),
        ("no-solo", f"{cores} workers x 1 thread, batches up to 64", one, cores),
        ("batch-8", f"{cores} workers x 1 thread, batches up to 8", {**one, "PIXELSERVE_MAX_BATCH_SIZE": "8"}, cores),
        ("batch-1", f"{cores} workers x 1 thread, one picture a run", {**one, "PIXELSERVE_BATCHING": "false"}, cores),
        ("one-worker", f"1 worker x {cores} threads, batches up to 64", spread, 1),
        ("both", f"{cores} workers x {cores} threads, batches up to 64", spread, cores),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True, help="model repository holding the photo model")
    parser.add_argument("--model", default="resnet18-bench", help="photo model to serve (default %(default)s)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per measured point (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before a layout is timed (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians (default %(default)s)")
    parser.add_argument("--connections", default="1,16", help="comma-separated connection counts (default %(default)s)")
    parser.add_argument("--only", help="comma-separated layout keys (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder (default bench/results)")
    args = parser.parse_args(argv)

    repository = args.repository.resolve()
    model_dir = latest_version(repository, args.model)
    card = json.loads((model_dir / "model.json").read_text())
    if not is_photo_model(card):
        raise SystemExit(f"{args.model} is not a photo model (resize-crop, resize or letterbox)")
    connections = [int(c) for c in args.connections.split(",")]
    bodies, expected, _ = photo_request(card, str(model_dir / card["onnx"]["file"]))
    body = bodies["upload"]
    cores = available_cpus()
    chosen = layouts(cores)
    if args.only:
        keys = set(args.only.split(","))
        chosen = [layout for layout in chosen if layout[0] in keys]
    python = os.path.relpath(sys.executable, ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable
    base_env = {"PIXELSERVE_MODEL_REPOSITORY": str(repository), "PIXELSERVE_LOG_LEVEL": "warning"}
    lineup = [Server(key, label, [python, "-m", "service"], {**base_env, **env}, photo_paths(card["name"]), workers)
              for key, label, env, workers in chosen]

    started, load_before = time.time(), os.getloadavg()
    measured: dict[str, Series] = {}
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as scratch:
        scratch_dir = Path(scratch)
        body_file = scratch_dir / "upload"
        body_file.write_bytes(body.content)
        for round_number in range(1, args.rounds + 1):
            shift = (round_number - 1) * len(lineup) // args.rounds
            for server in lineup[shift:] + lineup[:shift]:
                with Running(server, scratch_dir) as running:
                    check_answers(running, bodies, expected, card["classes"])
                    group, url = running.process.pid, running.url("upload")
                    wrk(url, body, body_file, max(connections), args.warmup, group, 60)
                    points = []
                    for count in connections:
                        point = wrk(url, body, body_file, count, args.duration, group, 60)
                        points.append(point)
                        print(f"round {round_number} {server.label:48} c={count:<3} {point.requests_per_s:6.1f} req/s  "
                              f"p50 {point.p50_ms:7.1f} ms  p99 {point.p99_ms:7.1f} ms  cpu {point.server_cpu_ms_per_request:.1f} ms/req",
                              flush=True)
                    measured.setdefault(server.key, Series(server.key, server.label, "upload", server.workers)).rounds.append(points)
    for series in measured.values():
        series.points = [median_point(points) for points in zip(*series.rounds)]

    report = {
        "command": " ".join([python, "bench/runtime_choices.py", *(sys.argv[1:] if argv is None else argv)]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_time_s": round(time.time() - started, 1),
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "model": {"name": card["name"], "version": card["version"], "sha256": card["onnx"]["sha256"]},
        "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds, "connections": connections,
        "layouts": {key: {"label": label, "settings": env, "workers": workers} for key, label, env, workers in chosen},
        "series": [asdict(s) for s in measured.values()],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"runtime-choices-{card['name']}"
    write_atomically(args.out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    write_atomically(args.out / f"{stem}.md", markdown)
    print()
    print(markdown)
    return 0


def to_markdown(report: dict) -> str:
    m = report["machine"]
    head = " | ".join(f"{c} conn: req/s | p50 ms | p99 ms" for c in report["connections"])
    lines = [
        f"# Runtime choices for `{report['model']['name']}`",
        "",
        f"Uploads of one 640x480 JPEG, top 5 answered; wrk -t1; {report['duration_s']} s per point after "
        f"{report['warmup_s']} s of warm-up; medians of {report['rounds']} interleaved rounds.",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average before "
        f"{m['load_average_before'][0]}, after {m['load_average_after'][0]}.",
        f"Command: `{report['command']}` ({report['wall_time_s']:.0f} s).",
        "",
        f"| layout | {head} | server CPU ms/request at {max(report['connections'])} conn |",
        "|---|" + "---:|" * (3 * len(report["connections"]) + 1),
    ]
    for series in report["series"]:
        cells = " | ".join(f"{p['requests_per_s']:.1f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f}" for p in series["points"])
        lines.append(f"| {series['label']} | {cells} | {series['points'][-1]['server_cpu_ms_per_request']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
