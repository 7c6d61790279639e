"""Runners that feed one model version's blocking inference function with requests.

`DynamicBatcher` coalesces concurrent requests into one ONNX Runtime run; `DirectRunner` runs
every request on its own. Both offer `await submit(images) -> probabilities` and `await close()`.

Coalescing without waiting: requests queue on the event loop that received them, and the first
request of a loop iteration schedules a flush with `call_soon`. The flush therefore runs after
every request that arrived in the same iteration has been parsed and queued, and takes them all
(up to `max_batch_size` images) into one run. A lone request runs at once. (Under light load the
service's HTTP protocol starts each request in the loop callback that read it, so that its answer
leaves in the loop step of its run: service.http.protocol.)

Where a run happens: on the event loop itself when its expected duration (from the runs measured
so far) is at most `inline_below_s`, otherwise on the runner's inference thread, off the event
loop (ONNX Runtime releases the GIL, so the loop keeps serving HTTP meanwhile). Handing a run to
a thread costs about 100 µs of wake-ups, plus a wait for the GIL while the loop is busy: more than
a small model's whole run. Runs that would hold the loop longer go to the thread; so does the first
run, before anything is measured. The expected duration is the images times the seconds per image
of recent runs: a ratio of sums of seconds and of images, each run's share decaying, so that a
lone image's run (mostly the fixed cost of a run) barely moves the estimate for a large batch.
Runs on the loop are timed with `loop_clock`, the wall clock by default: how long they hold the
loop. Runs on the thread are timed with `clock`: for a model on CPU, the thread's CPU time
(`time.thread_time`), which leaves out waiting for the GIL after the run (on a busy server that
wait would make every threaded run look long, and keep the model on the thread); on a GPU, where
a run waits for the device, the wall clock.

Waiting for a batch to fill (`max_delay_s` > 0): a request never waits for others unless more are
known to be coming. The runner's only such knowledge is recent traffic: when the previous run
served k requests and finished less than `max_delay_s` before the oldest queued request arrived,
k clients are active and likely to send again. The flush then waits, at most until `max_delay_s`
after the oldest queued request arrived, for the batch to hold k requests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.errors import Overloaded

InferFn = Callable[[np.ndarray], np.ndarray]
Result = tuple["_Request", np.ndarray | None, BaseException | None]

# How much of the running sums behind the seconds-per-image estimate each new run keeps.
ESTIMATE_DECAY = 0.8


@dataclass(slots=True, eq=False)
class _Request:
    images: np.ndarray
    future: asyncio.Future
    enqueued_at: float


class _Runner:
    """Requests queued per event loop, run in batches on the loop or on one inference thread."""

    def __init__(
        self, infer_fn: InferFn, *, max_batch_size: int, max_delay_s: float, max_queue: int, inline_below_s: float,
        clock: Callable[[], float], loop_clock: Callable[[], float], name: str,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0 or inline_below_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_delay_s and inline_below_s >= 0")
        self._infer_fn = infer_fn
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._max_queue = max_queue
        self._inline_below_s = inline_below_s
        self._clock = clock
        self._loop_clock = loop_clock
        self._name = name
        # Touched only by the loop that owns each queue.
        self._pending: dict[asyncio.AbstractEventLoop, deque[_Request]] = {}
        self._flush_scheduled: set[asyncio.AbstractEventLoop] = set()
        self._timers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}
        # Shared with the inference thread, under the lock.
        self._cond = threading.Condition()
        self._thread_batches: deque[list[_Request]] = deque()
        self._queued_images = 0  # queued on a loop or for the thread, not yet running
        self._closing = False
        self._thread: threading.Thread | None = None
        # Measured by every run (plain attribute writes; a slightly stale read is harmless): see the module's text.
        self._recent_seconds = 0.0
        self._recent_images = 0.0
        self._seconds_per_image: float | None = None
        self._last_run_requests = 0
        self._last_run_finished_at = float("-inf")

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queue images [n, ...] and return their output rows [n, C] once the model ran on them."""
        loop = asyncio.get_running_loop()
        count = len(images)
        with self._cond:
            if self._closing:
                raise Overloaded("this model version is being unloaded; retry to reach the current one")
            # A request larger than the whole queue is still admitted when the queue is empty.
            if self._queued_images and self._queued_images + count > self._max_queue:
                raise Overloaded(f"too many images waiting for this model (limit {self._max_queue}); retry shortly")
            self._queued_images += count
        request = _Request(images, loop.create_future(), time.monotonic())
        queue = self._pending.get(loop)
        if queue is None:
            queue = self._pending[loop] = deque()
        queue.append(request)
        if loop not in self._flush_scheduled:
            self._flush_scheduled.add(loop)
            loop.call_soon(self._flush, loop)
        elif loop in self._timers and len(queue) >= self._last_run_requests:
            self._timers.pop(loop).cancel()  # the batch it waited for is complete: run it now
            loop.call_soon(self._flush, loop)
        # Cancelling the awaiting task cancels the future; the runner then drops the request.
        return await request.future

    async def close(self) -> None:
        """Stop accepting requests, finish every request already queued, then stop the thread."""
        loop = asyncio.get_running_loop()
        with self._cond:
            self._closing = True
        timer = self._timers.pop(loop, None)
        if timer is not None:
            timer.cancel()
        while self._pending.get(loop):
            self._flush(loop)
        with self._cond:
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)

    # --- on the event loop ------------------------------------------------------------------

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the next batch from this loop's queue and run it here or hand it to the thread."""
        self._flush_scheduled.discard(loop)
        self._timers.pop(loop, None)
        queue = self._pending.get(loop)
        if not queue:
            self._pending.pop(loop, None)
            return
        batch, images = self._take(queue)
        if batch and self._wait_for_more(loop, queue, batch, images):
            return
        if queue:  # more than one batch queued: the rest goes next, after the loop's other work
            self._flush_scheduled.add(loop)
            loop.call_soon(self._flush, loop)
        else:
            del self._pending[loop]
        if not batch:
            return
        if self._runs_inline(images):
            with self._cond:
                self._queued_images -= images
            _settle(self._run(batch, self._loop_clock))
            return
        with self._cond:
            self._thread_batches.append(batch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def _runs_inline(self, images: int) -> bool:
        estimate = self._seconds_per_image
        return estimate is not None and estimate * images <= self._inline_below_s

    def _take(self, queue: deque[_Request]) -> tuple[list[_Request], int]:
        """Move queued requests into a batch while they fit; the first request always fits.
        Requests whose client went away are dropped here."""
        batch: list[_Request] = []
        images = dropped = 0
        while queue:
            request = queue[0]
            count = len(request.images)
            if batch and images + count > self._max_batch_size:
                break
            queue.popleft()
            if request.future.cancelled():
                dropped += count
                continue
            batch.append(request)
            images += count
        if dropped:
            with self._cond:
                self._queued_images -= dropped
        return batch, images

    def _wait_for_more(self, loop: asyncio.AbstractEventLoop, queue: deque[_Request], batch: list[_Request], images: int) -> bool:
        """Put the batch back and flush again later, when recent traffic says more requests are coming."""
        if self._max_delay_s <= 0 or images >= self._max_batch_size or self._closing:
            return False
        oldest = batch[0].enqueued_at
        if len(batch) >= self._last_run_requests or oldest - self._last_run_finished_at >= self._max_delay_s:
            return False
        remaining = oldest + self._max_delay_s - time.monotonic()
        if remaining <= 0:
            return False
        queue.extendleft(reversed(batch))
        self._flush_scheduled.add(loop)
        self._timers[loop] = loop.call_later(remaining, self._flush, loop)
        return True

    # --- on the inference thread ------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._thread_batches and not self._closing:
                    self._cond.wait()
                if not self._thread_batches:
                    return
                batch = self._thread_batches.popleft()
                self._queued_images -= sum(len(r.images) for r in batch)
            batch = [r for r in batch if not r.future.cancelled()]
            if batch:
                _deliver(self._run(batch, self._clock))

    # --- either place -----------------------------------------------------------------------

    def _run(self, batch: list[_Request], clock: Callable[[], float]) -> list[Result]:
        """Run the model once on the whole batch; if that fails, once per request, so that an
        error reaches exactly the requests that cause it."""
        if len(batch) == 1:
            results = [self._run_one(batch[0], clock)]
        else:
            try:
                outputs = self._infer(np.concatenate([r.images for r in batch]), clock)
            except Exception:
                results = [self._run_one(r, clock) for r in batch if not r.future.cancelled()]
            else:
                results, offset = [], 0
                for request in batch:
                    count = len(request.images)
                    results.append((request, outputs[offset : offset + count], None))
                    offset += count
        self._last_run_requests = len(batch)
        self._last_run_finished_at = time.monotonic()
        return results

    def _run_one(self, request: _Request, clock: Callable[[], float]) -> Result:
        try:
            return request, self._infer(request.images, clock), None
        except Exception as error:  # handed to the awaiting request, raised there
            return request, None, error

    def _infer(self, images: np.ndarray, clock: Callable[[], float]) -> np.ndarray:
        started = clock()
        outputs = self._infer_fn(images)
        if len(outputs) != len(images):
            raise RuntimeError(f"model returned {len(outputs)} rows for {len(images)} images")
        self._measured(clock() - started, len(images))
        return outputs

    def _measured(self, seconds: float, images: int) -> None:
        self._recent_seconds = self._recent_seconds * ESTIMATE_DECAY + seconds
        self._recent_images = self._recent_images * ESTIMATE_DECAY + max(images, 1)
        self._seconds_per_image = self._recent_seconds / self._recent_images


def _deliver(results: list[Result]) -> None:
    """From the inference thread: hand results back with one thread-safe callback per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Result]] = {}
    for result in results:
        by_loop.setdefault(result[0].future.get_loop(), []).append(result)
    for loop, loop_results in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, loop_results)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _settle(results: list[Result]) -> None:
    for request, outputs, error in results:
        if request.future.done():  # cancelled while the model ran
            continue
        if error is not None:
            request.future.set_exception(error)
        else:
            request.future.set_result(outputs)


class DynamicBatcher(_Runner):
    """Coalesces concurrent requests into one model run of at most `max_batch_size` images.

    A request's images stay together in one run (a request larger than `max_batch_size` runs
    alone). At most `max_queue` images wait; beyond that `submit` raises `Overloaded` (503).
    """

    def __init__(
        self, infer_fn: InferFn, *, max_batch_size: int, max_delay_s: float, max_queue: int, inline_below_s: float = 0.0,
        clock: Callable[[], float] = time.perf_counter, loop_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__(
            infer_fn, max_batch_size=max_batch_size, max_delay_s=max_delay_s, max_queue=max_queue,
            inline_below_s=inline_below_s, clock=clock, loop_clock=loop_clock, name="batcher",
        )


class DirectRunner(_Runner):
    """Runs each request on its own (batching off), in arrival order."""

    def __init__(
        self, infer_fn: InferFn, *, max_queue: int = 2048, inline_below_s: float = 0.0, clock: Callable[[], float] = time.perf_counter,
        loop_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__(
            infer_fn, max_batch_size=1, max_delay_s=0.0, max_queue=max_queue, inline_below_s=inline_below_s, clock=clock,
            loop_clock=loop_clock, name="runner",
        )
