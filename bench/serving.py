"""Serving benchmark: every server on loopback, driven by wrk, in one run.

    .venv/bin/python bench/serving.py                 # the full run (about 9 minutes)
    .venv/bin/python bench/serving.py --only service-on:v1-json,ceiling --rounds 1 --duration 3   # a quick look

Measures requests/s and p50 / p90 / p99 latency at 1, 8 and 64 connections (wrk -t1, one test
picture of the model's dataset per request, an MNIST digit or a Fashion-MNIST item, or `--images N`) for: this service at its default worker count with batching on and off,
each over v1 JSON, v2 JSON and v2 binary; a naive FastAPI + ONNX Runtime app; the same with
PyTorch eager; the ceiling, a raw ASGI app that only parses the JSON body into numpy, run as
one uvicorn process and again with as many SO_REUSEPORT workers as the service; and the minimal
per-request server, the ceiling plus one ONNX Runtime run, as one uvicorn process. Every server is
first checked to answer the right probabilities (ONNX Runtime's, computed here) and is then warmed
up before being timed. The whole sequence runs `--rounds` times, each server started anew each round,
and every figure reported is the median over the rounds. Writes bench/results/serving.json,
serving.md and serving.png.

A photo model (`--model NAME` whose card's preprocessing is resize-crop, resize or letterbox, e.g. the
ResNet-18 of bench/resnet18.py) is driven with uploads of a 640x480 JPEG to its top 5 instead, against
pixelserve (batching on and off), the naive FastAPI + Pillow + ONNX Runtime app and the model's floor
(bench/serving_photos.py); results go to serving-NAME.json / .md / .png:

    .venv/bin/python bench/resnet18.py --repository /tmp/bench-models
    .venv/bin/python bench/serving.py --repository /tmp/bench-models --model resnet18-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_floor import floor_inputs, measure as floor_points, summarise as summarise_floor  # noqa: E402
from photo_inputs import is_photo_model  # noqa: E402
from serving_bodies import Body, decode_answer, make_bodies, test_pictures  # noqa: E402
from serving_photos import answer_matches, photo_paths, photo_request, photo_targets  # noqa: E402
from serving_report import check_targets, write_markdown, write_plot  # noqa: E402
from service.config import available_cpus  # noqa: E402
BASELINES = ROOT / "bench" / "baselines"
LUA = ROOT / "bench" / "wrk" / "post.lua"
PROTOCOLS = ("v1-json", "v2-json", "v2-binary")


@dataclass
class Server:
    key: str
    label: str
    command: list[str]
    env: dict[str, str]
    paths: dict[str, str]  # protocol -> URL path
    workers: int


@dataclass
class Point:
    connections: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_ms_per_request: float  # CPU time of every server process, per answered request
    errors: dict[str, int]


@dataclass
class Series:
    server: str
    label: str
    protocol: str
    workers: int
    points: list[Point] = field(default_factory=list)  # per connection count: the median over the rounds
    rounds: list[list[Point]] = field(default_factory=list)  # every round's points, as measured


def median_point(points: tuple[Point, ...]) -> Point:
    """Each figure's median over the rounds of one connection count; requests and errors summed."""

    def median(key: str) -> float:
        return float(np.median([getattr(p, key) for p in points]))

    errors: dict[str, int] = {}
    for point in points:
        for kind, count in point.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    return Point(
        connections=points[0].connections, requests=sum(p.requests for p in points),
        requests_per_s=round(median("requests_per_s"), 1), p50_ms=median("p50_ms"), p90_ms=median("p90_ms"),
        p99_ms=median("p99_ms"), max_ms=max(p.max_ms for p in points),
        server_cpu_ms_per_request=round(median("server_cpu_ms_per_request"), 3), errors=errors,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def servers(model_dir: Path, repository: Path, service_env: dict[str, str], service_workers: int, photo: bool = False) -> list[Server]:
    python = sys.executable
    name = model_dir.parent.name
    service_paths = {
        "v1-json": f"/v1/models/{name}/predict",
        "v2-json": f"/v2/models/{name}/infer",
        "v2-binary": f"/v2/models/{name}/infer",
    }
    service_env = {"PIXELSERVE_MODEL_REPOSITORY": str(repository), "PIXELSERVE_LOG_LEVEL": "warning", **service_env}
    uvicorn = [python, "-m", "uvicorn", "--app-dir", str(BASELINES), "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]
    model_env = {"BENCH_MODEL": str(model_dir / "model.onnx")}
    if photo:
        paths = photo_paths(name)
        return [
            Server("service-on", "pixelserve, batching on", [python, "-m", "service"],
                   {**service_env, "PIXELSERVE_BATCHING": "true"}, paths, service_workers),
            Server("service-off", "pixelserve, batching off", [python, "-m", "service"],
                   {**service_env, "PIXELSERVE_BATCHING": "false"}, paths, service_workers),
            Server("naive-photo", "naive FastAPI + Pillow + ONNX Runtime", [*uvicorn, "--workers", "2", "naive_photo:app"],
                   {"BENCH_MODEL_DIR": str(model_dir)}, paths, 2),
        ]
    return [
        Server("service-on", "pixelserve, batching on", [python, "-m", "service"], {**service_env, "PIXELSERVE_BATCHING": "true"},
               service_paths, service_workers),
        Server("service-off", "pixelserve, batching off", [python, "-m", "service"], {**service_env, "PIXELSERVE_BATCHING": "false"},
               service_paths, service_workers),
        Server("naive-ort", "naive FastAPI + ONNX Runtime", [*uvicorn, "--workers", "2", "naive_ort:app"], model_env,
               {"v1-json": "/predict"}, 2),
        Server("naive-torch", "naive FastAPI + PyTorch eager", [*uvicorn, "--workers", "2", "naive_torch:app"], model_env,
               {"v1-json": "/predict"}, 2),
        Server("minimal-ort", "minimal: raw ASGI + orjson + ONNX Runtime", [*uvicorn, "minimal_ort:app"], model_env,
               {"v1-json": "/predict"}, 1),
        # The ceiling as the figures define it (one uvicorn process), and at the service's worker count
        # with the service's SO_REUSEPORT workers.
        Server("ceiling", "ceiling: raw ASGI + orjson", [*uvicorn, "ceiling:app"], {}, {"v1-json": "/predict"}, 1),
        *([Server("ceiling-workers", f"ceiling: raw ASGI + orjson, {service_workers} workers",
                  [python, str(BASELINES / "reuseport.py"), "ceiling:app", "--workers", str(service_workers)], {},
                  {"v1-json": "/predict"}, service_workers)] if service_workers > 1 else []),
    ]


class Running:
    """A server process on a free loopback port, stopped (its whole process group) on exit."""

    def __init__(self, server: Server, log_dir: Path) -> None:
        self.server = server
        self.port = free_port()
        self.log = log_dir / f"{server.key}.log"
        command = [*server.command, "--port", str(self.port)]
        if server.command[1:3] == ["-m", "service"]:
            command += ["--host", "127.0.0.1", "--workers", str(server.workers)]
        env = {**os.environ, **server.env, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, protocol: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.server.paths[protocol]}"

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def post(client: httpx.Client, url: str, body: Body) -> httpx.Response:
    headers = {"Content-Type": body.content_type}
    if body.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(body.header_length)
    return client.post(url, content=body.content, headers=headers)


def check_answers(running: Running, bodies: dict[str, Body], expected: np.ndarray, classes: list[str]) -> None:
    """Wait until the server answers, then insist on the right probabilities for every protocol."""
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=10) as client:
        for protocol in running.server.paths:
            last = "no answer"
            while True:
                if running.process.poll() is not None:
                    raise SystemExit(f"{running.server.label} exited; its log:\n{running.log.read_text()[-3000:]}")
                try:
                    response = post(client, running.url(protocol), bodies[protocol])
                    if response.status_code == 200:
                        break
                    last = f"{response.status_code} {response.text[:500]}"
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{running.server.label} did not answer {protocol} (its last answer: {last}); "
                                     f"its log:\n{running.log.read_text()[-3000:]}")
                time.sleep(0.25)
            if protocol == "upload":
                matches, top = answer_matches(response.content, expected, classes)
                if not matches:
                    raise SystemExit(f"{running.server.label} answered the top 5 {top}; the reference's probabilities differ")
                continue
            answered = decode_answer(protocol, {k.lower(): v for k, v in response.headers.items()}, response.content, classes)
            want = np.full((1, 10), 0.1) if running.server.key.startswith("ceiling") else expected  # the ceiling's constant
            if answered.shape != want.shape or not np.allclose(answered, want, atol=1e-4):
                raise SystemExit(f"{running.server.label} {protocol} answered {answered.round(5).tolist()}, expected {want.round(5).tolist()}")


def group_cpu_seconds(process_group: int) -> float:
    """User + system CPU time of every live process in a process group (a server and its workers)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == process_group:  # fields after the name: state, ppid, pgrp, ...
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: Body, body_file: Path, connections: int, duration_s: int, process_group: int,
        timeout_s: int = 5) -> Point:
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_CONTENT_TYPE": body.content_type,
           "BENCH_HEADER_LENGTH": "" if body.header_length is None else str(body.header_length)}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", f"{timeout_s}s", "--latency", "-s", str(LUA), url]
    cpu_before = group_cpu_seconds(process_group)
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    cpu_seconds = group_cpu_seconds(process_group) - cpu_before
    line = next(line for line in result.stdout.splitlines() if line.startswith("BENCH_JSON "))
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = {k: v for k, v in raw["errors"].items() if v}
    return Point(
        connections=connections,
        requests=raw["requests"],
        requests_per_s=round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000, max_ms=raw["max_us"] / 1000,
        server_cpu_ms_per_request=round(1000 * cpu_seconds / max(raw["requests"], 1), 3),
        errors=errors,
    )


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    versions = {}
    for package in ("uvicorn", "uvloop", "httptools", "fastapi", "starlette", "pydantic", "orjson", "numpy", "onnxruntime-gpu", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "wrk": wrk_version, "packages": versions}


def latest_version(repository: Path, name: str) -> Path:
    versions = [p for p in (repository / name).iterdir() if p.name.isdigit() and p.is_dir()]
    if not versions:
        raise SystemExit(f"no versions of {name} in {repository}")
    return max(versions, key=lambda p: int(p.name))


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    temp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models", help="model repository (default models/)")
    parser.add_argument("--model", default="mnist-convnet", help="model to serve (default %(default)s)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per measured point (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every server is started and measured; each figure is the median over the rounds (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each series is timed (default %(default)s)")
    parser.add_argument("--connections", default=None,
                        help="comma-separated connection counts (default 1,8,64; 1,16 for a photo model)")
    parser.add_argument("--images", type=int, default=1,
                        help="MNIST digits per request (default %(default)s; the targets are for one)")
    parser.add_argument("--only", help="comma-separated series to run, as server[:protocol], e.g. service-on:v1-json,ceiling "
                        "(for a photo model: service-on, service-off, naive-photo, floor)")
    parser.add_argument("--floor-batch-sizes", default="1,2,4,8,16",
                        help="batch sizes of the model's floor, for a photo model (default %(default)s)")
    parser.add_argument("--timeout", type=int, default=None,
                        help="wrk's per-request timeout in seconds (default 5; 60 for a photo model)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a PIXELSERVE_* variable for the service (repeatable), e.g. PIXELSERVE_MAX_DELAY_MS=0")
    parser.add_argument("--service-workers", type=int, default=available_cpus(),
                        help="worker processes of the service and of the second ceiling (default %(default)s: the service's "
                        "default, one per CPU)")
    parser.add_argument("--version", type=int, default=None,
                        help="the model version to serve (default: the highest, as the service does). The naive PyTorch "
                        "baseline rebuilds only plain layer chains: the shipped digit models' version 1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder (default bench/results)")
    args = parser.parse_args(argv)

    repository = args.repository.resolve()
    model_dir = latest_version(repository, args.model)
    if args.version is not None:
        # A repository of that one version (a link to its directory), so that the service's default is that version.
        chosen = repository / args.model / str(args.version)
        if not (chosen / "model.json").is_file():
            raise SystemExit(f"no version {args.version} of {args.model} in {repository}")
        repository = Path(tempfile.mkdtemp(prefix="bench-repository-"))
        (repository / args.model).mkdir()
        (repository / args.model / str(args.version)).symlink_to(chosen)
        model_dir = repository / args.model / str(args.version)
    card = json.loads((model_dir / "model.json").read_text())
    photo = is_photo_model(card)
    connections = [int(c) for c in (args.connections or ("1,16" if photo else "1,8,64")).split(",")]
    timeout = args.timeout or (60 if photo else 5)
    service_env = dict(item.split("=", 1) for item in args.set)
    wanted = {tuple(item.split(":", 1)) if ":" in item else (item, None) for item in args.only.split(",")} if args.only else None

    preprocessing_cost = None
    if photo:
        bodies, expected, preprocessing_cost = photo_request(card, str(model_dir / card["onnx"]["file"]))
    else:
        images = test_pictures(args.images, card.get("training", {}).get("dataset", "mnist"))
        bodies = make_bodies(images)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        expected = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]

    want_floor = photo and (wanted is None or ("floor", None) in wanted)
    floor_batches = [int(b) for b in args.floor_batch_sizes.split(",")]
    floor_rounds: list[list[dict]] = []
    floor_input = floor_inputs(model_dir) if want_floor else None  # decoded once, measured every round
    started = time.time()
    load_before = os.getloadavg()
    measured: dict[tuple[str, str], Series] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        scratch_dir = Path(scratch)
        for protocol, body in bodies.items():
            (scratch_dir / protocol).write_bytes(body.content)
        # Rounds rather than repeats of one point: noise from the shared machine (slow spells of tens of
        # seconds) falls on different servers in each round, and a fresh start redraws how connections
        # spread over workers.
        lineup = servers(model_dir, repository, service_env, args.service_workers, photo)
        for round_number in range(1, args.rounds + 1):
            shift = (round_number - 1) * len(lineup) // args.rounds  # each round starts elsewhere in the line-up
            for server in lineup[shift:] + lineup[:shift]:
                protocols = [p for p in server.paths if wanted is None or (server.key, p) in wanted or (server.key, None) in wanted]
                if not protocols:
                    continue
                with Running(server, scratch_dir) as running:
                    check_answers(running, bodies, expected, card["classes"])
                    for protocol in protocols:
                        series = measured.setdefault((server.key, protocol), Series(server.key, server.label, protocol, server.workers))
                        body_file = scratch_dir / protocol
                        group = running.process.pid
                        wrk(running.url(protocol), bodies[protocol], body_file, max(connections), args.warmup, group, timeout)
                        points = []
                        for count in connections:
                            point = wrk(running.url(protocol), bodies[protocol], body_file, count, args.duration, group, timeout)
                            points.append(point)
                            print(f"round {round_number} {server.label:32} {protocol:9} c={count:<3} {point.requests_per_s:9.0f} req/s  "
                                  f"p50 {point.p50_ms:7.2f} ms  p99 {point.p99_ms:7.2f} ms  cpu {point.server_cpu_ms_per_request:.3f} ms/req  {point.errors or ''}", flush=True)
                        series.rounds.append(points)
            if want_floor:  # in every round, in turn with the servers, so that the machine's drift falls on both
                floor_rounds.append(floor_points(*floor_input, args.service_workers, floor_batches, args.duration))
    results = list(measured.values())
    for series in results:
        series.points = [median_point(points) for points in zip(*series.rounds)]
    floor = summarise_floor(floor_rounds, args.service_workers, args.duration) if want_floor else None

    report = {
        "command": " ".join([os.path.relpath(sys.executable, ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable,
                             "bench/serving.py", *(sys.argv[1:] if argv is None else argv)]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_time_s": round(time.time() - started, 1),
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "model": {"name": card["name"], "version": card["version"], "sha256": card["onnx"]["sha256"],
                  "architecture": card.get("architecture", {}).get("description")},
        "request": ("one 640x480 JPEG (quality 90, scikit-image's astronaut) uploaded per request (multipart), "
                    "top 5 answered; wrk -t1 --latency") if photo else
                   f"{'one MNIST test digit' if args.images == 1 else f'{args.images} MNIST test digits'} per request "
                   "(784 float pixels in [0, 1] each); wrk -t1 --latency",
        "images_per_request": args.images,
        "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds, "connections": connections,
        "service_settings": {**service_env, "workers": args.service_workers},
        "series": [asdict(s) for s in results],
    }
    if photo:
        report.update({"floor": floor, "preprocessing_cost": preprocessing_cost, "wrk_timeout_s": timeout})
        report["targets"] = photo_targets(report)
    else:
        report["targets"] = check_targets(report) if args.images == 1 else []
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"serving-{card['name']}" if photo else "serving"
    write_atomically(args.out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    markdown = write_markdown(report)
    write_atomically(args.out / f"{stem}.md", markdown)
    write_plot(report, args.out / f"{stem}.png")
    print()
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
