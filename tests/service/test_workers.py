"""`python -m service --workers 2`: worker processes each listening with SO_REUSEPORT, metrics added up across
them, restarts, shutdown, and the ways it refuses to start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from service import config
from service.workers import reserve_port, reuseport_socket
from tests.onnx_models import reference_probabilities, write_version
from tests.service.conftest import PROJECT_ROOT, ServerProcess, predict_across_sigterm

PREDICT = "/v1/models/{name}/predict"


def wait_for(condition: Callable[[], object], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still not true after {timeout_s} s: {condition}")
        time.sleep(0.05)


def listening_sockets(port: int) -> int:
    """LISTEN sockets on the port in the kernel's table: each worker opens its own once it serves."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[3] == "0A" and int(row.split()[1].rsplit(":", 1)[1], 16) == port)


def worker_pids(parent: int) -> set[int]:
    """The supervisor's worker processes (multiprocessing's resource tracker is its child too)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):  # the process ended meanwhile
            continue
        if ppid == parent and b"spawn_main" in command:
            pids.add(int(stat.parent.name))
    return pids


def metrics_dir(worker: int) -> Path:
    environment = dict(entry.split(b"=", 1) for entry in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0") if b"=" in entry)
    return Path(environment[b"PROMETHEUS_MULTIPROC_DIR"].decode())


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def scrape(url: str) -> dict[str, list]:
    """Every sample of /metrics by metric family name."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return {family.name: family.samples for family in families}


def predictions_answered(samples: list) -> float:
    return sum(s.value for s in samples if s.name == "pixelserve_requests_total" and s.labels["endpoint"] == PREDICT and s.labels["status"] == "200")


def predict_each_on_its_own_connection(url: str, count: int) -> None:
    x = np.random.default_rng(count).random((count, 1, 28, 28), dtype=np.float32)
    expected = reference_probabilities(x, seed=1)
    for image, want in zip(x, expected):
        # httpx.post opens a connection of its own for each request, which the kernel hands to one of the workers.
        response = httpx.post(f"{url}/v1/models/digits/predict", content=orjson.dumps({"instances": [image.reshape(784).tolist()]}))
        assert response.status_code == 200, response.text
        got = response.json()["predictions"][0]["probabilities"]
        np.testing.assert_allclose([got[str(c)] for c in range(10)], want, atol=1e-5)


def start_two_workers(root: Path) -> ServerProcess:
    write_version(root, "digits", 1)
    server = ServerProcess(root, args=("--workers", "2"))
    server.wait_ready()
    wait_for(lambda: listening_sockets(server.port) == 2 and len(worker_pids(server.process.pid)) == 2)
    return server


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> Iterator[ServerProcess]:
    server = start_two_workers(tmp_path_factory.mktemp("workers") / "models")
    try:
        yield server
    finally:
        server.stop()


def predictions_answered_by_each_worker(server: ServerProcess) -> dict[int, float]:
    """From each live worker's own file in the metrics directory (none yet: it has counted nothing)."""
    workers = worker_pids(server.process.pid)
    directory = metrics_dir(next(iter(workers)))
    answered = {}
    for pid in workers:
        counters = directory / f"counter_{pid}.db"
        families = MultiProcessCollector.merge([str(counters)]) if counters.exists() else []
        answered[pid] = sum(predictions_answered(family.samples) for family in families if family.name == "pixelserve_requests")
    return answered


def test_connections_spread_over_the_workers_and_metrics_add_up(two_workers):
    assert "server" not in httpx.get(f"{two_workers.url}/healthz").headers  # the workers get the same uvicorn options
    before = predictions_answered(scrape(two_workers.url)["pixelserve_requests"])
    each_before = predictions_answered_by_each_worker(two_workers)
    predict_each_on_its_own_connection(two_workers.url, 40)

    assert predictions_answered(scrape(two_workers.url)["pixelserve_requests"]) == before + 40
    each_after = predictions_answered_by_each_worker(two_workers)
    served = {pid: each_after[pid] - each_before[pid] for pid in each_after}
    assert sum(served.values()) == 40 and all(count > 0 for count in served.values()), served


def test_a_killed_worker_is_replaced_and_its_counts_kept(two_workers):
    before = predictions_answered(scrape(two_workers.url)["pixelserve_requests"])
    workers = worker_pids(two_workers.process.pid)
    killed = min(workers)
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: (pids := worker_pids(two_workers.process.pid)) != workers and len(pids) == 2 and listening_sockets(two_workers.port) == 2)

    predict_each_on_its_own_connection(two_workers.url, 10)
    samples = scrape(two_workers.url)
    assert predictions_answered(samples["pixelserve_requests"]) == before + 10
    # The dead worker's provider gauge went with it; the live ones still say 1.
    [provider] = samples["pixelserve_model_provider_info"]
    assert provider.labels == {"model": "digits", "version": "1", "provider": "CPUExecutionProvider"} and provider.value == 1
    log = two_workers.log()
    assert f"worker {killed} exited with code -9; starting another" in log


def test_sigterm_stops_every_worker_after_the_request_in_flight(tmp_path):
    server = start_two_workers(tmp_path / "models")
    try:
        workers = worker_pids(server.process.pid)
        directory = metrics_dir(next(iter(workers)))
        reply = predict_across_sigterm(server.port, server.process)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:500]
        assert server.process.wait(timeout=10) == 0
        assert not any(alive(pid) for pid in workers)
        assert not directory.exists()
    finally:
        server.stop()


def test_workers_that_cannot_start_are_given_up_on(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service", "--workers", "2", "--port", "0", "--model-repository", str(tmp_path / "missing"), "--log-format", "text"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    assert "is not a directory" in result.stderr  # the workers say why
    assert "a worker failed to start 3 times in a row" in result.stderr and "giving up" in result.stderr


def test_a_port_in_use_is_refused_with_a_clear_error(tmp_path):
    # Even a listener that set SO_REUSEPORT too, as another server's worker would.
    with reuseport_socket(socket.AF_INET, ("127.0.0.1", 0)) as taken:
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "service", "--workers", "2", "--port", str(port), "--model-repository", str(tmp_path), "--log-format", "text"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1 port {port}: [Errno 98] Address already in use" in result.stderr


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback address here")
def test_ipv6_port_reservation_is_shared_with_workers():
    with reserve_port("::1", 0) as reservation:
        assert reservation.family == socket.AF_INET6 and reservation.getsockname()[1] > 0
        with reuseport_socket(reservation.family, reservation.getsockname()) as worker:
            worker.listen()
            with socket.create_connection(("::1", reservation.getsockname()[1]), timeout=5):
                pass


def test_default_workers_follow_the_cpus_and_a_container_limit_and_are_one_on_a_gpu(monkeypatch, tmp_path):
    monkeypatch.delenv("PIXELSERVE_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    limit = tmp_path / "cpu.max"
    monkeypatch.setattr(config, "CGROUP_CPU_MAX", limit)
    limit.write_text("max 100000\n")
    settings = config.Settings(_env_file=None)
    assert settings.worker_count(gpu_serves=False) == 4
    assert settings.worker_count(gpu_serves=True) == 1  # processes sharing one GPU take turns on it
    monkeypatch.setenv("PIXELSERVE_WORKERS", "3")
    assert config.Settings(_env_file=None).worker_count(gpu_serves=True) == 3  # a configured count is kept
    limit.write_text("150000 100000\n")  # 1.5 CPUs
    assert config.available_cpus() == 2
    monkeypatch.setattr(config, "CGROUP_CPU_MAX", tmp_path / "absent")
    assert config.available_cpus() == 4


def test_a_reload_asked_of_one_worker_reaches_every_worker(tmp_path):
    root = tmp_path / "models"
    server = start_two_workers(root)  # the repository is not watched (PIXELSERVE_WATCH_INTERVAL_S=0)
    try:
        write_version(root, "digits", 2)
        answer = httpx.post(f"{server.url}/v1/models/digits/reload")
        assert answer.status_code == 200 and answer.json()["default_version"] == 2

        def every_worker_serves_version_2() -> bool:
            # Each request on a connection of its own: with 20 of them, both workers answer (all but 2 in 2**20 times).
            return all(httpx.get(f"{server.url}/v1/models/digits").json()["default_version"] == 2 for _ in range(20))

        wait_for(every_worker_serves_version_2, timeout_s=10)
        assert server.process.poll() is None and len(worker_pids(server.process.pid)) == 2
    finally:
        server.stop()


def test_a_worker_asks_only_its_own_supervisor_and_a_single_process_asks_nobody(monkeypatch):
    from service import workers

    received = []
    previous = signal.signal(workers.RESCAN_SIGNAL, lambda signum, frame: received.append(signum))
    try:
        monkeypatch.delenv(workers.SUPERVISOR_PID, raising=False)
        workers.ask_workers_to_rescan()  # a single process: nobody to ask
        # This test process stands in for the supervisor, first as some other process, then as the parent.
        monkeypatch.setenv(workers.SUPERVISOR_PID, str(os.getpid()))
        workers.ask_workers_to_rescan()
        monkeypatch.setattr(workers.os, "getppid", lambda: os.getpid())
        workers.ask_workers_to_rescan()
        wait_for(lambda: received, timeout_s=5)
        time.sleep(0.1)  # room for a second signal, were one sent
    finally:
        signal.signal(workers.RESCAN_SIGNAL, previous)
    assert received == [workers.RESCAN_SIGNAL]
