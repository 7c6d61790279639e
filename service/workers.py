"""Several worker processes serving one port.

Each worker listens on a socket of its own, bound to the same address with SO_REUSEPORT, and the kernel
spreads new connections across those sockets by hash. (With one listening socket shared, whichever worker
accepts first keeps the connection, and the split can be very uneven: 56 of 64 on one of two workers.)
The supervisor restarts a worker that dies, after a backoff that grows while its replacements keep dying
(`Backoff`), and serves from the other workers meanwhile; it gives up (exit 3) only when workers keep
failing to start while none serves. On SIGTERM or SIGINT it stops them all, letting them finish the
requests in flight.

A reload asked of one worker reaches them all: that worker sends the supervisor SIGUSR1, and the supervisor
sends SIGUSR1 to every worker, each of which then rescans the model repository (`ask_workers_to_rescan`,
`rescan_on_request`). The supervisor's signal handlers only set a flag (`_Signals`): any number of reloads
at any rate coalesce into one pending rescan, which its main loop passes on.

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
import sys
import tempfile
import time
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
# A worker that exits this many times in a row before serving, while no other worker serves, will not start: the app
# itself cannot (a missing model repository, bad settings). Give up rather than restart it forever. (A worker killed
# by a signal is no such sign: the OOM killer or an operator stopped it. It is restarted, after a backoff.)
STARTS_BEFORE_GIVING_UP = 3
# The longest the supervisor waits before looking at its workers again (a signal or a worker's exit wakes it sooner).
POLL_INTERVAL_S = 1.0
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


def _run_worker(
    app: str, factory: bool, family: socket.AddressFamily, address: tuple, uvicorn_options: dict, serving: Event, model_runs,
) -> None:
    from service.inference import runtime

    runtime.share_model_runs(model_runs)  # before the app loads its models
    # Bound, not yet listening: uvicorn listens once the app has started, so the kernel sends no connection to a
    # worker still loading its models (or failing to).
    sock = reuseport_socket(family, address)
    server = _ReportingServer(uvicorn.Config(app, factory=factory, **uvicorn_options), serving)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises a SIGINT again once it has shut down; no traceback for a stop asked for
        pass
    if not server.started:  # as `uvicorn.run` does: the supervisor tells a failed start from a stop
        sys.exit(STARTUP_FAILURE)


@dataclass
class _Place:
    """One worker's place: the process in it (None while a restart waits out its backoff) and its history."""

    worker: BaseProcess | None = None
    serving: Event | None = None  # set by the worker once it serves: a worker that exits without it failed to start
    started_at: float = 0.0
    failed_starts: int = 0  # workers in this place in a row that exited (not killed) before serving
    crashes: int = 0  # workers in this place in a row that died soon after starting: the backoff grows with them
    restart_at: float | None = None

    def is_serving(self) -> bool:
        return self.worker is not None and self.worker.exitcode is None and self.serving.is_set()


def _start_worker(
    place: _Place, app: str, factory: bool, reservation: socket.socket, uvicorn_options: dict, model_runs,
) -> None:
    serving = SPAWN.Event()
    process = SPAWN.Process(
        target=_run_worker,
        args=(app, factory, reservation.family, reservation.getsockname(), uvicorn_options, serving, model_runs),
        name="worker",
    )
    process.start()
    place.worker, place.serving, place.started_at, place.restart_at = process, serving, time.monotonic(), None
    logger.info("worker %d started", process.pid, extra={"pid": process.pid})


def _url(reservation: socket.socket) -> str:
    host, port = reservation.getsockname()[:2]
    return f"http://[{host}]:{port}" if reservation.family == socket.AF_INET6 else f"http://{host}:{port}"


@dataclass
class Backoff:
    """Delays before restarting a worker that died: `first_s`, doubled for each further death in a row, at most
    `max_s`. A worker that lived `reset_after_s` ends the streak."""

    first_s: float = 0.25
    max_s: float = 10.0
    reset_after_s: float = 30.0

    def delay(self, crashes: int) -> float:
        return min(self.max_s, self.first_s * 2 ** (crashes - 1))


class _Signals:
    """What the supervisor's signal handlers record. A handler only sets a flag here; the C-level wakeup fd
    (signal.set_wakeup_fd) writes to a pipe that the main loop waits on, so it acts at once. Nothing else runs in a
    handler: no lock, no system call, nothing that a storm of signals could nest."""

    def __init__(self) -> None:
        self.stop: int | None = None
        self.rescan = False  # one pending rescan at most: any number of requests coalesce into it
        self._wakeup_read, self._wakeup_write = os.pipe()
        os.set_blocking(self._wakeup_read, False)
        os.set_blocking(self._wakeup_write, False)
        self._previous_fd = signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        self._previous = {
            signum: signal.signal(signum, handler)
            for signum, handler in (
                (signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop), (RESCAN_SIGNAL, self._on_rescan),
            )
        }

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop = self.stop or signum

    def _on_rescan(self, signum: int, frame: object) -> None:
        self.rescan = True

    @property
    def wakeup(self) -> int:
        return self._wakeup_read

    def drain(self) -> None:
        try:
            while os.read(self._wakeup_read, 4096):
                pass
        except BlockingIOError:
            pass

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)


def supervise(
    app: str, *, factory: bool, host: str, port: int, workers: int, uvicorn_options: dict, backoff: Backoff | None = None,
) -> int:
    """Serve the ASGI app at `app` ("module:attribute"; with `factory`, a function making it) from `workers`
    processes on host:port until SIGTERM or SIGINT. Returns the exit status: 0 once stopped by a signal,
    STARTUP_FAILURE (3) when no worker can start."""
    backoff = backoff or Backoff()
    try:
        reservation = reserve_port(host, port)
    except OSError as error:
        logger.error("cannot listen on %s port %d: %s", host, port, error)
        return STARTUP_FAILURE
    metrics_dir = tempfile.mkdtemp(prefix="pixelserve-metrics-")
    # Made for this run, so that no counter goes on from an earlier run's files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[SUPERVISOR_PID] = str(os.getpid())
    signals = _Signals()
    places = [_Place() for _ in range(workers)]
    # Runs of the heavier models under way in all the workers (service.inference.runtime.with_solo_session).
    model_runs = SPAWN.Value("i", 0)
    logger.info("listening on %s with %d worker processes", _url(reservation), workers)

    def start(place: _Place) -> None:
        _start_worker(place, app, factory, reservation, uvicorn_options, model_runs)

    try:
        for place in places:
            start(place)
        while signals.stop is None:
            now = time.monotonic()
            waits = [place.restart_at - now for place in places if place.restart_at is not None]
            wait(
                [place.worker.sentinel for place in places if place.worker is not None] + [signals.wakeup],
                timeout=max(0.0, min([POLL_INTERVAL_S, *waits])),
            )
            signals.drain()
            if signals.stop is not None:
                break
            if signals.rescan:
                signals.rescan = False
                _pass_rescan_on(places)
            for place in places:
                if place.restart_at is not None and time.monotonic() >= place.restart_at:
                    start(place)
                elif place.worker is not None and place.worker.exitcode is not None:
                    if not _after_exit(place, places, metrics_dir, backoff):
                        return STARTUP_FAILURE
        logger.info("stopping the workers (%s)", signal.Signals(signals.stop).name)
        return 0
    finally:
        # SIGTERM, whichever signal came: Ctrl+C in a terminal has already sent the workers SIGINT, and a second
        # SIGINT makes uvicorn quit without finishing the requests in flight.
        running = [place.worker for place in places if place.worker is not None]
        for worker in running:
            worker.terminate()
        for worker in running:
            worker.join()
        signals.restore()
        reservation.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _pass_rescan_on(places: list[_Place]) -> None:
    """Ask every serving worker for one rescan (a worker not yet serving scans the repository as it starts)."""
    for place in places:
        if place.is_serving():
            try:
                os.kill(place.worker.pid, RESCAN_SIGNAL)
            except ProcessLookupError:  # died meanwhile: its exit is handled in this same pass
                pass


def _after_exit(place: _Place, places: list[_Place], metrics_dir: str, backoff: Backoff) -> bool:
    """Schedule the restart of the worker that left `place`. False: give up, no worker can start."""
    worker = place.worker
    pid, code = worker.pid, worker.exitcode
    served = place.serving.is_set()
    mark_process_dead(pid, metrics_dir)
    place.worker = place.serving = None
    lived_s = time.monotonic() - place.started_at
    details = {"pid": pid, "exit_code": code}
    if served or code < 0:
        # Killed by a signal (the OOM killer, an operator) or died after serving: the app can start, so restart it,
        # waiting longer each time this place's workers die again soon.
        place.failed_starts = 0
        place.crashes = 1 if lived_s >= backoff.reset_after_s else place.crashes + 1
    else:
        place.failed_starts += 1
        place.crashes += 1
        if place.failed_starts >= STARTS_BEFORE_GIVING_UP and not any(other.is_serving() for other in places):
            logger.error(
                "a worker failed to start %d times in a row (the last, %d, exited with code %d) and no worker serves; "
                "giving up: the log above says why", STARTS_BEFORE_GIVING_UP, pid, code, extra=details,
            )
            return False
    delay = backoff.delay(place.crashes)
    logger.warning(
        "worker %d exited with code %d%s; starting another in %.2f s%s", pid, code, "" if served else " before serving",
        delay, f" (killed by signal {-code})" if code < 0 else "", extra=details | {"restart_in_s": delay},
    )
    place.restart_at = time.monotonic() + delay
    return True
