"""The combined soak of issue 19: predictions under a reload storm, a killed worker, slow clients and large uploads.

    nice -n 10 .venv/bin/python bench/soak.py [--seconds 60] [--connections 64] [--reload-connections 4]
        [--reloads-per-s 200] [--slow-clients 20] [--upload-connections 2] [--uploads-per-s 1] [--workers 2]
        [--memory-limit-bytes 1073741824]

Starts `python -m service` on a free loopback port over a copy of the shipped models (its memory limit set as
compose and Kubernetes give it), then for `--seconds`: `--connections` keep-alive connections send v1 predictions
(one digit each) as fast as they are answered; `--reload-connections` POST reload, each at most `--reloads-per-s`;
`--slow-clients` connections trickle a request header and as many trickle a body, one byte a second; large
uploads (4 RGB PNGs of 3000x3000) go out on `--upload-connections`, each at most `--uploads-per-s`; halfway, one worker process is killed with
SIGKILL. Every answer is counted by kind and status, every request that got no answer (connection reset or
closed) as lost, those within a second of the kill apart; the RSS of all the service's processes together is
sampled each second. At the end: is it still serving, and does SIGTERM stop it. Figures go to
bench/results/soak.{json,md}. Measured on whatever else the machine is running: say so with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "mnist-convnet"
DIGIT = json.dumps({"instances": [[0.0] * 300 + [1.0] * 184 + [0.0] * 300]}).encode()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending += [int(child) for child in children.read().split()]
        except OSError:
            pass
    return found


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def upload_body(pictures: int, side: int) -> tuple[bytes, str]:
    picture = Image.new("RGB", (side, side))
    ImageDraw.Draw(picture).rectangle((side // 3, side // 6, side // 2, 5 * side // 6), fill="white")
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=1)
    png = buffer.getvalue()
    parts = [b'--soak\r\nContent-Disposition: form-data; name="files"; filename="%d.png"\r\nContent-Type: image/png\r\n\r\n' % i
             + png + b"\r\n" for i in range(pictures)]
    return b"".join(parts) + b"--soak--\r\n", "multipart/form-data; boundary=soak"


class Tally:
    def __init__(self) -> None:
        self.statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.lost: dict[str, list[float]] = collections.defaultdict(list)  # kind -> times of requests without answer
        self.started = time.monotonic()

    def answer(self, kind: str, status: int) -> None:
        self.statuses[kind][status] += 1

    def lose(self, kind: str) -> None:
        self.lost[kind].append(time.monotonic() - self.started)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers


async def requester(port: int, kind: str, request: bytes, tally: Tally, until: float, pause_s: float = 0.0) -> None:
    """Send `request` over a keep-alive connection, again and again until `until`; reconnect when it closes."""
    writer = None
    while time.monotonic() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            status, headers = await asyncio.wait_for(read_response(reader), 60)
            tally.answer(kind, status)
            if headers.get(b"connection", b"").lower() == b"close":
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError, IndexError):
            tally.lose(kind)
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
        if pause_s:
            await asyncio.sleep(pause_s)
    if writer is not None:
        writer.close()


async def slow_client(port: int, data: bytes, outcomes: collections.Counter, until: float) -> None:
    """Trickle `data` one byte a second; note how the connection ended."""
    opened = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        outcomes["refused"] += 1
        return
    try:
        for byte in data:
            if time.monotonic() >= until:
                outcomes["still open at the end"] += 1
                return
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(1024), 1.0)
            except asyncio.TimeoutError:
                continue
            status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
            outcomes[f"{status} after {int(time.monotonic() - opened)} s" if status != "closed" else "closed by the server"] += 1
            return
        outcomes["sent whole"] += 1
    except OSError:
        outcomes["reset by the server"] += 1
    finally:
        writer.close()


async def sample_memory(pid: int, samples: list, until: float) -> None:
    while time.monotonic() < until:
        samples.append(sum(rss_bytes(p) for p in descendants(pid)))
        await asyncio.sleep(1.0)


async def kill_a_worker(pid: int, at: float, record: dict) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    workers = [p for p in descendants(pid) if p != pid]
    if not workers:
        record["killed"] = None
        return
    os.kill(workers[0], signal.SIGKILL)
    record.update(killed=workers[0], at_s=round(time.monotonic() - record["start"], 2))


async def soak(args: argparse.Namespace, port: int, pid: int) -> dict:
    tally = Tally()
    start = time.monotonic()
    until = start + args.seconds
    predict = (f"POST /v1/models/{MODEL}/predict HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(DIGIT)}\r\n\r\n").encode() + DIGIT
    reload = f"POST /v1/models/{MODEL}/reload HTTP/1.1\r\nHost: soak\r\nContent-Length: 0\r\n\r\n".encode()
    body, content_type = upload_body(4, 3000)
    upload = (f"POST /v1/models/{MODEL}/predict/image HTTP/1.1\r\nHost: soak\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    slow_header = b"GET /v1/models HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"a" * 10_000
    slow_body = (f"POST /v1/models/{MODEL}/predict HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(DIGIT)}\r\n\r\n").encode() + DIGIT
    slow_outcomes: dict[str, collections.Counter] = {"header": collections.Counter(), "body": collections.Counter()}
    memory: list[int] = []
    kill = {"start": start}
    tasks = [requester(port, "predict", predict, tally, until) for _ in range(args.connections)]
    if args.reloads_per_s > 0:
        tasks += [requester(port, "reload", reload, tally, until, pause_s=1.0 / args.reloads_per_s) for _ in range(args.reload_connections)]
    if args.uploads_per_s > 0:
        tasks += [requester(port, "upload", upload, tally, until, pause_s=1.0 / args.uploads_per_s) for _ in range(args.upload_connections)]
    tasks += [slow_client(port, slow_header, slow_outcomes["header"], until) for _ in range(args.slow_clients)]
    tasks += [slow_client(port, slow_body, slow_outcomes["body"], until) for _ in range(args.slow_clients)]
    tasks += [sample_memory(pid, memory, until), kill_a_worker(pid, start + args.seconds / 2, kill)]
    await asyncio.gather(*tasks)
    killed_at = kill.get("at_s")
    near_kill = {kind: sum(1 for t in times if killed_at is not None and killed_at <= t <= killed_at + 1.0) for kind, times in tally.lost.items()}
    return {
        "statuses": {kind: {str(k): v for k, v in sorted(counts.items())} for kind, counts in tally.statuses.items()},
        "lost": {kind: len(times) for kind, times in tally.lost.items()},
        "lost_within_1s_of_the_kill": near_kill,
        "killed_worker": {k: v for k, v in kill.items() if k != "start"},
        "slow_clients": {kind: dict(counts) for kind, counts in slow_outcomes.items()},
        "rss_mib_each_second": [round(sample / 2**20, 1) for sample in memory],
        "rss_mib_peak": round(max(memory, default=0) / 2**20, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--reload-connections", type=int, default=4)
    parser.add_argument("--reloads-per-s", type=float, default=200, help="per reload connection, at most")
    parser.add_argument("--slow-clients", type=int, default=20)
    parser.add_argument("--upload-connections", type=int, default=2)
    parser.add_argument("--uploads-per-s", type=float, default=1, help="per upload connection, at most")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit-bytes", type=int, default=1 << 30)
    parser.add_argument("--output", default="soak", help="file name (no suffix) under bench/results")
    args = parser.parse_args()

    models = Path(tempfile.mkdtemp(prefix="soak-")) / "models"
    shutil.copytree(ROOT / "models", models)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELSERVE_")}
    env |= {"PIXELSERVE_PROVIDERS": "cpu", "PIXELSERVE_MEMORY_LIMIT_BYTES": str(args.memory_limit_bytes),
            "PIXELSERVE_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
    log_path = models.parent / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
             "--model-repository", str(models)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            print(log_path.read_text(), file=sys.stderr)
            return 1
        time.sleep(0.2)
    load_before = os.getloadavg()
    try:
        figures = asyncio.run(soak(args, port, server.pid))
        time.sleep(1)
        try:
            serving = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code == 200 and httpx.post(
                f"http://127.0.0.1:{port}/v1/models/{MODEL}/predict", content=DIGIT, timeout=5).status_code == 200
        except httpx.TransportError:
            serving = False
    finally:
        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            exit_code = server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            exit_code = "killed: SIGTERM ignored for 40 s"
        stop_s = round(time.monotonic() - stopping, 2)
    log_text = log_path.read_text(errors="replace")
    figures |= {
        "serving_at_the_end": serving, "sigterm_exit": exit_code, "sigterm_seconds": stop_s,
        "tracebacks_in_log": log_text.count("Traceback"),
        "first_traceback": log_text[log_text.find("Traceback") - 300:][:3000] if "Traceback" in log_text else None,
        "warnings_and_errors_in_log": sum(1 for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line),
        "args": vars(args), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "memory_limit_mib": args.memory_limit_bytes >> 20,
    }
    five_xx = {kind: sum(v for k, v in counts.items() if k.startswith("5")) for kind, counts in figures["statuses"].items()}
    figures["5xx"] = five_xx
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(report(figures))
    print(report(figures))
    return 0


def report(f: dict) -> str:
    args = f["args"]
    lines = [
        f"# Soak: {args['seconds']:.0f} s, {args['connections']} connections predicting, {args['reload_connections']} reloading "
        f"(at most {args['reloads_per_s']}/s each), {args['slow_clients']} + {args['slow_clients']} slow clients, "
        f"{args['upload_connections']} uploading (at most {args['uploads_per_s']}/s each), a worker killed halfway",
        "",
        f"`bench/soak.py`; {args['workers']} workers, PIXELSERVE_MEMORY_LIMIT_BYTES = {f['memory_limit_mib']} MiB; {f['machine']}, "
        f"load average {f['load_average_before'][0]:.1f} before, {f['load_average_after'][0]:.1f} after (a shared machine: "
        "counts matter here, not rates).",
        "",
        "| requests | answers by status | 5xx | lost (no answer) | lost within 1 s of the kill |",
        "|---|---|---|---|---|",
    ]
    for kind in sorted(set(f["statuses"]) | set(f["lost"])):
        statuses = ", ".join(f"{k}: {v}" for k, v in f["statuses"].get(kind, {}).items())
        lines.append(f"| {kind} | {statuses} | {f['5xx'].get(kind, 0)} | {f['lost'].get(kind, 0)} | {f['lost_within_1s_of_the_kill'].get(kind, 0)} |")
    lines += [
        "",
        f"- killed worker: {f['killed_worker']}",
        f"- slow clients (header, body): {f['slow_clients']['header']}, {f['slow_clients']['body']}",
        f"- RSS of all service processes: peak {f['rss_mib_peak']} MiB (limit {f['memory_limit_mib']} MiB); each second: "
        f"{f['rss_mib_each_second']}",
        f"- serving at the end: {f['serving_at_the_end']}; SIGTERM: exit {f['sigterm_exit']} after {f['sigterm_seconds']} s; "
        f"tracebacks in the log: {f['tracebacks_in_log']}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
