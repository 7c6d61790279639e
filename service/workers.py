"""Several worker processes serving one port.

Each worker listens on a socket of its own, bound to the same address with SO_REUSEPORT, and the kernel
spreads new connections across those sockets by hash. (With one listening socket shared, whichever worker
accepts first keeps the connection, and the split can be very uneven: 56 of 64 on one of two workers.)
The supervisor restarts a worker that dies, gives up on workers that cannot start, and on SIGTERM or
SIGINT stops them all, letting them finish the requests in flight.

A reload asked of one worker reaches them all: that worker sends the supervisor SIGUSR1, and the supervisor
sends SIGUSR1 to every worker, each of which then rescans the model repository (`ask_workers_to_rescan`,
`rescan_on_request`).

Prometheus metrics use prometheus_client's multiprocess mode: each worker writes its samples to files in a
directory made for this run (PROMETHEUS_MULTIPROC_DIR), and /metrics adds them up (service/api/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("service.workers")

# Spawn, not fork: each worker is a fresh interpreter that copies nothing of the parent (no threads, locks or
# half-initialised libraries) and imports prometheus_client after PROMETHEUS_MULTIPROC_DIR is set. multiprocessing
# rather than subprocess: it hands the worker function its arguments (an address, uvicorn options, an event)
# with no command line to build and parse, and gives back a sentinel to wait on.
SPAWN = multiprocessing.get_context("spawn")
# A worker that dies this many times in a row before serving will not start: the app itself cannot (a missing
# model repository, bad settings). Give up rather than restart it forever.
STARTS_BEFORE_GIVING_UP = 3
# How soon a stop signal is acted on: the wait for a worker's exit resumes after a signal handler runs.
POLL_INTERVAL_S = 0.2
# Set in the workers' environment: the process to ask for a rescan of every worker (none: a single process).
SUPERVISOR_PID = "PIXELSERVE_SUPERVISOR_PID"
RESCAN_SIGNAL = signal.SIGUSR1


def ask_workers_to_rescan() -> None:
    """From a worker: have every worker rescan the model repository (a no-op in a single process)."""
    supervisor = os.environ.get(SUPERVISOR_PID)
    # Only while the supervisor is this process's parent: had it died, its pid could name another process.
    if supervisor and int(supervisor) == os.getppid():
        os.kill(int(supervisor), RESCAN_SIGNAL)


def rescan_on_request(rescan: Callable[[], None]) -> None:
    """In a worker's event loop: call `rescan` whenever the supervisor passes a rescan on."""
    if SUPERVISOR_PID in os.environ:
        asyncio.get_running_loop().add_signal_handler(RESCAN_SIGNAL, rescan)


def reuseport_socket(family: socket.AddressFamily, address: tuple) -> socket.socket:
    """A TCP socket bound to address, which it shares with the other sockets that set SO_REUSEPORT."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to host:port that keeps the port for the workers and tells which port the
    kernel picked for port 0. Raises OSError when the address is unusable or another program holds the port."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    # First without SO_REUSEPORT, which fails wherever any socket listens on the port: also where another server of
    # this user set SO_REUSEPORT, whose connections the workers would otherwise silently share.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections left in TIME_WAIT are no conflict
        probe.bind(address)
        address = probe.getsockname()
    return reuseport_socket(family, address)


class _ReportingServer(uvicorn.Server):
    """uvicorn's server, setting `serving` once its app has started and it accepts connections."""

    def __init__(self, config: uvicorn.Config, serving: Event) -> None:
        super().__init__(config)
        self.serving = serving

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.serving.set()


def _run_worker(app: str, factory: bool, family: socket.AddressFamily, address: tuple, uvicorn_options: dict, serving: Event) -> None:
    # Bound, not yet listening: uvicorn listens once the app has started, so the kernel sends no connection to a
    # worker still loading its models (or failing to).
    sock = reuseport_socket(family, address)
    try:
        _ReportingServer(uvicorn.Config(app, factory=factory, **uvicorn_options), serving).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises a SIGINT again once it has shut down; no traceback for a stop asked for
        pass


@dataclass
class _Worker:
    process: BaseProcess
    serving: Event  # set by the worker once it serves: a worker that exits without it failed to start
    failed_starts: int  # of the workers before it in its place, in a row


def _start_worker(app: str, factory: bool, reservation: socket.socket, uvicorn_options: dict, failed_starts: int = 0) -> _Worker:
    serving = SPAWN.Event()
    process = SPAWN.Process(
        target=_run_worker, args=(app, factory, reservation.family, reservation.getsockname(), uvicorn_options, serving),
        name="worker",
    )
    process.start()
    logger.info("worker %d started", process.pid, extra={"pid": process.pid})
    return _Worker(process, serving, failed_starts)


def _url(reservation: socket.socket) -> str:
    host, port = reservation.getsockname()[:2]
    return f"http://[{host}]:{port}" if reservation.family == socket.AF_INET6 else f"http://{host}:{port}"


def supervise(app: str, *, factory: bool, host: str, port: int, workers: int, uvicorn_options: dict) -> int:
    """Serve the ASGI app at `app` ("module:attribute"; with `factory`, a function making it) from `workers`
    processes on host:port until SIGTERM or SIGINT. Returns the exit status: 0 once stopped by a signal."""
    try:
        reservation = reserve_port(host, port)
    except OSError as error:
        logger.error("cannot listen on %s port %d: %s", host, port, error)
        return STARTUP_FAILURE
    metrics_dir = tempfile.mkdtemp(prefix="pixelserve-metrics-")
    # Made for this run, so that no counter goes on from an earlier run's files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[SUPERVISOR_PID] = str(os.getpid())
    stop_signals: list[int] = []
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda signum, frame: stop_signals.append(signum))
    running: list[_Worker] = []

    def pass_rescan_on(signum: int, frame: object) -> None:
        for worker in running:
            if worker.process.exitcode is None and worker.serving.is_set():
                os.kill(worker.process.pid, RESCAN_SIGNAL)

    signal.signal(RESCAN_SIGNAL, pass_rescan_on)
    logger.info("listening on %s with %d worker processes", _url(reservation), workers)
    running += [_start_worker(app, factory, reservation, uvicorn_options) for _ in range(workers)]
    try:
        while not stop_signals:
            wait([worker.process.sentinel for worker in running], timeout=POLL_INTERVAL_S)
            for place, worker in enumerate(running):
                if stop_signals:
                    break
                if worker.process.exitcode is None:
                    continue
                pid, code = worker.process.pid, worker.process.exitcode
                mark_process_dead(pid, metrics_dir)
                details = {"pid": pid, "exit_code": code}
                if worker.serving.is_set():
                    logger.warning("worker %d exited with code %d; starting another", pid, code, extra=details)
                    running[place] = _start_worker(app, factory, reservation, uvicorn_options)
                elif worker.failed_starts + 1 < STARTS_BEFORE_GIVING_UP:
                    logger.warning("worker %d exited with code %d before serving; starting another", pid, code, extra=details)
                    running[place] = _start_worker(app, factory, reservation, uvicorn_options, worker.failed_starts + 1)
                else:
                    logger.error(
                        "a worker failed to start %d times in a row (the last, %d, exited with code %d); giving up: "
                        "the log above says why", STARTS_BEFORE_GIVING_UP, pid, code, extra=details,
                    )
                    return STARTUP_FAILURE
        logger.info("stopping the workers (%s)", signal.Signals(stop_signals[0]).name)
        return 0
    finally:
        # SIGTERM, whichever signal came: Ctrl+C in a terminal has already sent the workers SIGINT, and a second
        # SIGINT makes uvicorn quit without finishing the requests in flight.
        for worker in running:
            worker.process.terminate()
        for worker in running:
            worker.process.join()
        reservation.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
