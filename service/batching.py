"""Runners that call one model version's blocking inference function off the event loop.

`DynamicBatcher` coalesces concurrent requests into one ONNX Runtime run; `DirectRunner` runs
every request on its own. Both offer `await submit(images) -> probabilities` and `await close()`.

Each runner owns one inference thread. The thread, not the event loop, gathers queued requests,
runs the model (ONNX Runtime releases the GIL) and hands results back to each request's loop in
one callback per batch. This keeps the event loop free for HTTP work and makes a runner usable
from any event loop.

When to wait for a batch to fill: a request never waits for others unless more are known to be
coming. The runner's only such knowledge is recent traffic: when the previous run served k
requests and finished a moment ago (less than `max_delay_s` before the oldest queued request
arrived), k clients are active and likely to send again. The thread then waits, at most until
`max_delay_s` after the oldest queued request arrived, for the batch to hold k requests. A lone
request under no load, or from one sequential client, therefore runs at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.errors import Overloaded

InferFn = Callable[[np.ndarray], np.ndarray]


@dataclass(slots=True)
class _Request:
    images: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)


class _ThreadRunner:
    """A bounded queue of requests served in order by one dedicated inference thread."""

    def __init__(self, infer_fn: InferFn, *, max_batch_size: int, max_delay_s: float, max_queue: int, name: str) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_delay_s >= 0")
        self._infer_fn = infer_fn
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._max_queue = max_queue
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        # Recent traffic, read by the batching policy (only touched under self._cond).
        self._last_run_requests = 0
        self._last_run_finished_at = float("-inf")

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queue images [n, ...] and return their output rows [n, C] once the model ran on them."""
        loop = asyncio.get_running_loop()
        request = _Request(images, loop, loop.create_future())
        count = len(images)
        with self._cond:
            if self._closing:
                raise Overloaded("this model version is being unloaded; retry to reach the current one")
            # A request larger than the whole queue is still admitted when the queue is empty.
            if self._queued_images and self._queued_images + count > self._max_queue:
                raise Overloaded(f"too many images waiting for this model (limit {self._max_queue}); retry shortly")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._queue.append(request)
            self._queued_images += count
            self._cond.notify()
        # Cancelling the awaiting task cancels the future; the thread then drops the request.
        return await request.future

    async def close(self) -> None:
        """Stop accepting requests, finish every request already queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)

    # --- inference thread -------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._collect()
            batch = [r for r in batch if not r.future.cancelled()]
            if batch:
                self._deliver(self._run(batch))
            with self._cond:
                self._last_run_requests = len(batch)
                self._last_run_finished_at = time.monotonic()

    def _collect(self) -> list[_Request]:
        """Pop the next batch; called with the lock held and the queue not empty."""
        batch: list[_Request] = []
        self._take(batch, 0)
        return batch

    def _take(self, batch: list[_Request], images: int) -> int:
        """Move queued requests into the batch while they fit; the first request always fits."""
        while self._queue:
            request = self._queue[0]
            count = len(request.images)
            if batch and images + count > self._max_batch_size:
                break
            self._queue.popleft()
            self._queued_images -= count
            if request.future.cancelled():
                continue
            batch.append(request)
            images += count
        return images

    def _run(self, batch: list[_Request]) -> list[tuple[_Request, np.ndarray | None, BaseException | None]]:
        """Run the model once on the whole batch; if that fails, once per request, so that an
        error reaches exactly the requests that cause it."""
        if len(batch) == 1:
            return [self._run_one(batch[0])]
        try:
            outputs = self._infer_fn(np.concatenate([r.images for r in batch]))
            if len(outputs) != sum(len(r.images) for r in batch):
                raise RuntimeError(f"model returned {len(outputs)} rows for a batch of {sum(len(r.images) for r in batch)}")
        except Exception:
            return [self._run_one(r) for r in batch if not r.future.cancelled()]
        results = []
        offset = 0
        for request in batch:
            count = len(request.images)
            results.append((request, outputs[offset : offset + count], None))
            offset += count
        return results

    def _run_one(self, request: _Request) -> tuple[_Request, np.ndarray | None, BaseException | None]:
        try:
            outputs = self._infer_fn(request.images)
            if len(outputs) != len(request.images):
                raise RuntimeError(f"model returned {len(outputs)} rows for {len(request.images)} images")
        except Exception as error:  # handed to the awaiting request, raised there
            return request, None, error
        return request, outputs, None

    @staticmethod
    def _deliver(results: list[tuple[_Request, np.ndarray | None, BaseException | None]]) -> None:
        """Hand results back with one thread-safe callback per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for result in results:
            by_loop.setdefault(result[0].loop, []).append(result)
        for loop, loop_results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, loop_results)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass


def _settle(results: list[tuple[_Request, np.ndarray | None, BaseException | None]]) -> None:
    for request, outputs, error in results:
        if request.future.done():  # cancelled while the model ran
            continue
        if error is not None:
            request.future.set_exception(error)
        else:
            request.future.set_result(outputs)


class DynamicBatcher(_ThreadRunner):
    """Coalesces concurrent requests into one model run of at most `max_batch_size` images.

    A request's images stay together in one run (a request larger than `max_batch_size` runs
    alone). At most `max_queue` images wait; beyond that `submit` raises `Overloaded` (503).
    """

    def __init__(self, infer_fn: InferFn, *, max_batch_size: int, max_delay_s: float, max_queue: int) -> None:
        super().__init__(
            infer_fn, max_batch_size=max_batch_size, max_delay_s=max_delay_s, max_queue=max_queue, name="batcher"
        )

    def _collect(self) -> list[_Request]:
        batch: list[_Request] = []
        images = self._take(batch, 0)
        if not batch:
            return batch
        deadline = batch[0].enqueued_at + self._max_delay_s
        expected = len(batch)
        if batch[0].enqueued_at - self._last_run_finished_at < self._max_delay_s:
            # The previous run served that many clients a moment ago: expect them back.
            expected = max(expected, self._last_run_requests)
        while len(batch) < expected and images < self._max_batch_size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
            images = self._take(batch, images)
        return batch


class DirectRunner(_ThreadRunner):
    """Runs each request on its own (batching off), in order, on one inference thread."""

    def __init__(self, infer_fn: InferFn, *, max_queue: int = 2048) -> None:
        super().__init__(infer_fn, max_batch_size=1, max_delay_s=0.0, max_queue=max_queue, name="runner")
