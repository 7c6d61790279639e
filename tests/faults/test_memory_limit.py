"""Row 4 of issue 19, at a size that fits a test: with its memory limit set, the service's processes stay under it
through concurrent uploads of large pictures and many unfinished large bodies; what can never fit is a 413,
what would fit later a 503 with Retry-After (or it waits its turn), never an OOM kill.

Without the budgets this scenario measured well over the limit: four 4500x4500 RGB PNGs decoded at once take
~110 MB each, and forty 4 MiB bodies held while being received another ~160 MB, over a ~120 MB worker."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.faults.served import digits_repository, requests_counted, serving

LIMIT = int(os.environ.get("PIXELSERVE_TEST_MEMORY_LIMIT_BYTES", 448 << 20))
SIDE = 4500
UNFINISHED = 40
BODY = 4 << 20


def service_pids(root_pid: int) -> list[int]:
    """The server process and every process under it (its workers), from /proc."""
    pids, found = [root_pid], []
    while pids:
        pid = pids.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pids += [int(child) for child in children.read().split()]
        except OSError:
            continue
    return found


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakRss:
    """Samples the RSS of all the service's processes together every 20 ms, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, sum(rss(pid) for pid in service_pids(self.pid)))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def large_png(side: int, mode: str = "RGB") -> bytes:
    picture = Image.new(mode, (side, side))
    ImageDraw.Draw(picture).rectangle((side // 3, side // 6, side // 2, 5 * side // 6), fill="white")
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"PIXELSERVE_MEMORY_LIMIT_BYTES": str(LIMIT), "PIXELSERVE_BUDGET_WAIT_S": "3", "PIXELSERVE_LOG_LEVEL": "info"}
    with serving(digits_repository(tmp_path_factory.mktemp("memory") / "models"), env) as server:
        yield server


def upload(url: str, picture: bytes, count: int = 1) -> httpx.Response:
    files = [("files", (f"{i}.png", picture, "image/png")) for i in range(count)]
    return httpx.post(f"{url}/v1/models/digits/predict/image", files=files, timeout=60)


def test_concurrent_large_uploads_and_unfinished_bodies_stay_under_the_limit(server):
    picture = large_png(SIDE)
    with PeakRss(server.process.pid) as memory:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: upload(server.url, picture, 2), range(4)))
        assert {a.status_code for a in answers} <= {200, 503} and 200 in {a.status_code for a in answers}
        assert all(a.headers["Retry-After"] for a in answers if a.status_code == 503)

        head = (f"POST /v1/models/digits/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                f"Content-Length: {BODY}\r\n\r\n").encode()
        connections = []
        for _ in range(UNFINISHED):  # each sends all but the last KiB of its body, then waits
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            connection.setblocking(False)
            try:
                connection.sendall(head + b"[" * (BODY - 1024))
            except BlockingIOError:  # the server does not read it (yet): the kernel's buffers hold the rest
                pass
            connections.append(connection)
        time.sleep(4)  # past the budget's wait: those that never got a turn were answered 503
        for connection in connections:
            connection.close()
        time.sleep(0.5)
    assert memory.peak < LIMIT, f"the service's processes reached {memory.peak >> 20} MiB, over {LIMIT >> 20} MiB"
    assert requests_counted(server.url, 503) >= 1  # bodies that waited past budget_wait_s
    assert requests_counted(server.url, 500) == 0
    assert "Traceback" not in server.log()
    assert upload(server.url, picture).status_code == 200  # and it goes on serving


def test_a_picture_that_can_never_fit_is_a_413(server):
    response = upload(server.url, large_png(6000, "RGBA"))
    assert response.status_code == 413 and response.json()["error"]["code"] == "over_memory_budget"
    assert "MiB" in response.json()["error"]["message"]


def test_too_many_pixels_in_one_request_is_a_413_before_decoding(server):
    count = 160_000_000 // (SIDE * SIDE) + 1  # over max_request_pixels
    response = upload(server.url, large_png(SIDE), count)
    assert response.status_code == 413 and "per request" in response.json()["error"]["message"]


def unfinished_bodies(port: int, count: int, size: int) -> list[socket.socket]:
    """`count` connections that each send all but the last KiB of a `size`-byte predict body, and wait."""
    head = (f"POST /v1/models/digits/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.setblocking(False)
        try:
            connection.sendall(head + b"[" * (size - 1024))
        except BlockingIOError:  # the server does not read it (yet): the kernel's buffers hold the rest
            pass
        connections.append(connection)
    return connections


def test_many_unfinished_bodies_under_a_mebibyte_stay_under_the_limit(server):
    # Bodies of up to 1 MiB on v1 predict are gathered by the HTTP protocol itself before the app runs: without
    # a bound, 400 stalled ones held ~400 MiB in one worker.
    with PeakRss(server.process.pid) as memory:
        connections = unfinished_bodies(server.port, 400, 1 << 20)
        time.sleep(4)
        assert httpx.post(f"{server.url}/v1/models/digits/predict", json={"instances": [[0.5] * 784]}, timeout=30).status_code == 200
        for connection in connections:
            connection.close()
        time.sleep(0.5)
    assert memory.peak < LIMIT, f"the service's processes reached {memory.peak >> 20} MiB, over {LIMIT >> 20} MiB"
    assert requests_counted(server.url, 500) == 0
