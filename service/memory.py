"""Memory within the container's limit: the limit itself (the cgroup's memory.max), byte budgets that a request
acquires before it holds a large buffer (a body being received, a picture being decoded), and giving freed
memory back to the system after a burst.

A budget refuses what can never fit with 413 and makes the rest wait their turn, in order of arrival, for at
most `wait_s`; past that, 503 with Retry-After. Either way the process stays within what it was given: the
kernel's OOM killer never has to choose.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from service.errors import Overloaded, PayloadTooLarge

logger = logging.getLogger(__name__)

# A container's memory limit: cgroup v2's memory.max ("max": none), else cgroup v1's limit (a huge number: none).
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_MEMORY_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
UNLIMITED_V1 = 1 << 60


def container_memory_limit() -> int | None:
    """The memory this process's cgroup may use, in bytes; None when it has no limit (or this is not Linux)."""
    for path in (CGROUP_MEMORY_MAX, CGROUP_V1_MEMORY_LIMIT):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= UNLIMITED_V1:
            return None
        return int(text)
    return None


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident set size (RSS), from /proc; 0 where there is none (not Linux)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class ByteBudget:
    """A number of bytes shared by the requests of one worker process: each takes its share before it holds the
    memory and gives it back after. Waiters are served in order of arrival, so a large request is not starved by
    a stream of small ones."""

    def __init__(self, capacity: int, *, what: str, wait_s: float) -> None:
        self.capacity = capacity
        self.what = what  # "decoded pictures", "request bodies": said in the errors
        self.wait_s = wait_s
        self.in_use = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    def try_acquire(self, size: int) -> bool:
        if self._waiters or self.in_use + size > self.capacity:
            return False
        self._take(size)
        return True

    async def acquire(self, size: int) -> None:
        """Take `size` bytes, waiting up to wait_s. PayloadTooLarge (413) if it can never fit; Overloaded (503 with
        Retry-After) if it does not fit in time."""
        if size > self.capacity:
            raise PayloadTooLarge(
                f"this request needs {_mib(size)} for {self.what}, more than the {_mib(self.capacity)} a worker "
                "process has for them (set by its memory limit; see docs/limits.md)",
                code="over_memory_budget",
            )
        if self.try_acquire(size):
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait_s)
        except TimeoutError:
            if waiter.done():  # granted just as the wait ran out: it holds the bytes
                return
            self._waiters.remove(entry)
            waiter.cancel()
            self._wake()  # a smaller waiter behind it may fit now
            raise Overloaded(
                f"the server is busy with other large requests ({_mib(self.in_use)} of {_mib(self.capacity)} for "
                f"{self.what} in use); retry shortly", retry_after_s=max(1, round(self.wait_s)),
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted, but the request is gone
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, size: int) -> None:
        self.in_use -= size
        self._wake()

    @asynccontextmanager
    async def hold(self, size: int):
        await self.acquire(size)
        try:
            yield
        finally:
            self.release(size)

    def _take(self, size: int) -> None:
        self.in_use += size
        self.peak = max(self.peak, self.in_use)

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            size, waiter = self._waiters.popleft()
            if not waiter.done():
                self._take(size)
                waiter.set_result(None)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


# --- giving memory back to the system (glibc) --------------------------------------------------------------------

M_ARENA_MAX = -8  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
# Buffers from this size up (a large picture's pixels) are mapped on their own and unmapped when freed.
# glibc's default threshold starts at 128 KiB and grows with each large block freed up to this same 32 MiB;
# fixing it there at once keeps smaller buffers in the heap, which malloc_trim gives back after a burst.
# As measured (ResNet-18, batch 1, one thread): a 1 MiB threshold made every ONNX Runtime run 13% slower
# (61-63 ms against 53-55: its large scratch buffers were mapped and unmapped each run), while RSS 2 s after
# bench/memory_return.py's burst stayed at 123 MiB against 119-120 (docs/limits.md).
MMAP_THRESHOLD_BYTES = 32 << 20
# Heaps ("arenas") for threads: glibc makes up to 8 per core, each keeping what its threads freed.
ARENA_MAX = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc only: musl has neither)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold and cap its arenas (see above), in this process. False where not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(_LIBC.mallopt(M_ARENA_MAX, ARENA_MAX))


def trim() -> None:
    """Give the free memory at the top of glibc's heaps back to the system (malloc_trim(0)); a no-op elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


# --- the budgets of one worker process, from the memory the service may use -------------------------------------

# How many worker processes share the memory, as the supervisor tells its workers (not a setting).
WORKER_PROCESSES = "PIXELSERVE_WORKER_PROCESSES"
SUPERVISOR_BYTES = 96 << 20  # what the supervisor of several workers holds (measured: ~90 MiB RSS; it loads ONNX Runtime to probe for a GPU)
DECODE_SHARE, BODY_SHARE = 0.55, 0.25  # of what a worker has beyond its own baseline; the rest is headroom
MIN_DECODE_BUDGET = 32 << 20
BODY_COPIES = 2  # a large body is held as received and once more as read (a picture's bytes, a parsed document)


@dataclass(frozen=True)
class Budgets:
    """How the memory of one worker process is shared out, in bytes (see docs/limits.md)."""

    limit: int  # the whole service's: the container's limit, or the setting, or the machine's memory
    limit_source: str
    worker_share: int
    baseline: int  # the worker's RSS once its models are loaded
    decode: int
    body: int


def derive_budgets(*, memory_limit: int | None, workers: int, baseline: int, max_body_bytes: int,
                   decode_budget: int | None = None, body_budget: int | None = None) -> Budgets:
    """Each worker's decode and body budgets: the settings where given, else shares of what the worker has left
    of its part of the memory limit once its models are loaded."""
    if memory_limit is not None:
        limit, source = memory_limit, "PIXELSERVE_MEMORY_LIMIT_BYTES"
    elif (container := container_memory_limit()) is not None:
        limit, source = container, "the container's memory limit (cgroup)"
    else:
        limit, source = physical_memory(), "the machine's memory (no container limit)"
    share = (limit - (SUPERVISOR_BYTES if workers > 1 else 0)) // max(workers, 1)
    free = max(share - baseline, 0)
    return Budgets(
        limit=limit,
        limit_source=source,
        worker_share=share,
        baseline=baseline,
        decode=decode_budget if decode_budget is not None else max(int(free * DECODE_SHARE), MIN_DECODE_BUDGET),
        body=body_budget if body_budget is not None else max(int(free * BODY_SHARE), BODY_COPIES * max_body_bytes),
    )


# Bodies up to this size are not counted: uvicorn reads this much ahead of the app anyway (its flow control's high
# water mark). Bodies the service's HTTP protocol gathers itself (up to 1 MiB, v1 predict and v2 infer) are not
# counted either: the protocol bounds them (service.http.hot_request.HOT_GATHERING_LIMIT).
LARGE_BODY_BYTES = 64 << 10
# A burst of decoding this large is followed by malloc_trim once no decoding is under way.
TRIM_AFTER_BYTES = 32 << 20


class WorkerMemory:
    """The budgets of this worker process, sized once at start and again once its models are loaded."""

    def __init__(self, *, memory_limit: int | None, workers: int | None, max_body_bytes: int, decode_budget: int | None,
                 body_budget: int | None, wait_s: float, return_memory: bool) -> None:
        workers = workers or int(os.environ.get(WORKER_PROCESSES, "1"))
        self._sizing = dict(memory_limit=memory_limit, workers=workers, max_body_bytes=max_body_bytes,
                            decode_budget=decode_budget, body_budget=body_budget)
        self.return_memory = return_memory
        self.budgets = derive_budgets(baseline=resident_bytes(), **self._sizing)
        self.decode = ByteBudget(self.budgets.decode, what="decoding pictures", wait_s=wait_s)
        self.body = ByteBudget(self.budgets.body, what="request bodies", wait_s=wait_s)
        self.max_body_bytes = max_body_bytes

    def resize(self) -> Budgets:
        """Size the budgets from the worker's RSS now (its models loaded), and tune the allocator."""
        self.budgets = derive_budgets(baseline=resident_bytes(), **self._sizing)
        self.decode.capacity, self.body.capacity = self.budgets.decode, self.budgets.body
        if self.return_memory:
            tune_allocator()
        return self.budgets

    def body_cost(self, declared: int | None) -> int:
        """What a body of `declared` bytes (None: chunked) holds while its request runs."""
        return BODY_COPIES * (self.max_body_bytes if declared is None else declared)

    async def after_decoding(self, size: int) -> None:
        """Give memory back after a large decode, once none is under way (malloc_trim walks every heap)."""
        if self.return_memory and size >= TRIM_AFTER_BYTES and self.decode.in_use == 0:
            await asyncio.to_thread(trim)
