"""The runners behind every model version: dynamic batching (on) and one run per request (off)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.inference.batching import DirectRunner, DynamicBatcher
from service.errors import Overloaded

pytestmark = pytest.mark.timeout(30)

POISON = -1.0  # a pixel value that makes the fake model fail


class FakeModel:
    """A blocking infer_fn that records every batch it sees and can be held on a gate.

    Output row i is [request id of row i, row index within its request], read back from pixels
    0 and 1, so each result shows whose input produced it.
    """

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.delay_s = delay_s
        self.thread_names: set[str] = set()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.thread_names.add(threading.current_thread().name)
        self.started.set()
        self.gate.wait(timeout=10)
        self.batches.append(images.copy())
        time.sleep(self.delay_s)
        flat = images.reshape(len(images), -1)
        if (flat == POISON).any():
            raise ValueError("poisoned input")
        return np.stack([flat[:, 0], flat[:, 1]], axis=1).astype(np.float32)

    def ids_seen(self) -> list[int]:
        return [int(row[0, 0, 0]) for batch in self.batches for row in batch]


def images_for(request_id: int, count: int = 1) -> np.ndarray:
    images = np.zeros((count, 1, 28, 28), dtype=np.float32)
    images[:, 0, 0, 0] = request_id
    images[:, 0, 0, 1] = np.arange(count)
    return images


def assert_own_result(request_id: int, count: int, result: np.ndarray) -> None:
    assert result.shape == (count, 2)
    np.testing.assert_array_equal(result[:, 0], np.full(count, request_id))
    np.testing.assert_array_equal(result[:, 1], np.arange(count))


def batcher(model: FakeModel, **overrides) -> DynamicBatcher:
    options = {"max_batch_size": 64, "max_delay_s": 0.005, "max_queue": 1024} | overrides
    return DynamicBatcher(model, **options)


async def hold_model(model: FakeModel, runner, request_id: int = 0) -> asyncio.Task:
    """Occupy the inference thread with one request so that the next ones queue up behind it."""
    model.gate.clear()
    task = asyncio.create_task(runner.submit(images_for(request_id)))
    assert await asyncio.to_thread(model.started.wait, 5)
    return task


def test_concurrent_requests_are_coalesced_and_each_gets_its_own_rows():
    model = FakeModel(delay_s=0.002)

    async def scenario():
        runner = batcher(model)
        counts = {i: 1 + i % 3 for i in range(1, 101)}
        results = await asyncio.gather(*(runner.submit(images_for(i, n)) for i, n in counts.items()))
        await runner.close()
        return counts, results

    counts, results = asyncio.run(scenario())
    for (request_id, count), result in zip(counts.items(), results):
        assert_own_result(request_id, count, result)
    assert len(model.batches) < 100 / 4, f"expected coalescing, got {len(model.batches)} runs for 100 requests"
    assert model.thread_names and threading.main_thread().name not in model.thread_names


def test_requests_queued_behind_a_run_go_in_one_batch_in_arrival_order():
    model = FakeModel()

    async def scenario():
        runner = batcher(model, max_delay_s=0.0)
        first = await hold_model(model, runner)
        waiting = [asyncio.create_task(runner.submit(images_for(i))) for i in range(1, 21)]
        await asyncio.sleep(0.05)  # all twenty are queued now
        model.gate.set()
        results = await asyncio.gather(first, *waiting)
        await runner.close()
        return results

    results = asyncio.run(scenario())
    assert [len(b) for b in model.batches] == [1, 20]
    assert model.ids_seen() == list(range(21))
    for request_id, result in enumerate(results):
        assert_own_result(request_id, 1, result)


def test_batches_hold_whole_requests_and_respect_the_size_limit():
    model = FakeModel()

    async def scenario():
        runner = batcher(model, max_batch_size=8, max_delay_s=0.0)
        first = await hold_model(model, runner)
        counts = {1: 3, 2: 4, 3: 2, 4: 12, 5: 1}
        waiting = [asyncio.create_task(runner.submit(images_for(i, n))) for i, n in counts.items()]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(*waiting)
        await first
        await runner.close()
        return counts, results

    counts, results = asyncio.run(scenario())
    for (request_id, count), result in zip(counts.items(), results):
        assert_own_result(request_id, count, result)
    # 3+4 fit in 8, 2 does not join them; 12 is larger than the limit and runs alone.
    assert [sorted({int(r[0, 0, 0]) for r in b}) for b in model.batches] == [[0], [1, 2], [3], [4], [5]]


@pytest.mark.parametrize("make_runner", [lambda m: batcher(m, max_delay_s=5.0), DirectRunner], ids=["batcher", "direct"])
def test_a_lone_request_does_not_wait_for_the_delay(make_runner):
    model = FakeModel()

    async def scenario():
        runner = make_runner(model)
        started = time.monotonic()
        for i in range(5):  # one client sending requests one after another
            assert_own_result(i, 1, await runner.submit(images_for(i)))
        elapsed = time.monotonic() - started
        await runner.close()
        return elapsed

    # The delay is 5 s per request; a generous bound still proves nobody waited for it.
    assert asyncio.run(scenario()) < 2.0


def test_a_full_queue_answers_overloaded_with_retry_after():
    model = FakeModel()

    async def scenario():
        runner = batcher(model, max_queue=4)
        first = await hold_model(model, runner)
        queued = [asyncio.create_task(runner.submit(images_for(1, 3)))]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as raised:
            await runner.submit(images_for(2, 2))  # 3 + 2 > 4
        queued.append(asyncio.create_task(runner.submit(images_for(3, 1))))  # 3 + 1 fits
        await asyncio.sleep(0.01)
        model.gate.set()
        results = await asyncio.gather(first, *queued)
        await runner.close()
        return raised.value, results

    error, results = asyncio.run(scenario())
    assert error.status_code == 503 and error.headers["Retry-After"]
    assert_own_result(1, 3, results[1])
    assert_own_result(3, 1, results[2])
    assert 2 not in model.ids_seen()


@pytest.mark.parametrize("make_runner", [batcher, DirectRunner], ids=["batcher", "direct"])
def test_a_request_whose_client_went_away_is_dropped_before_inference(make_runner):
    model = FakeModel()

    async def scenario():
        runner = make_runner(model)
        first = await hold_model(model, runner)
        gone = asyncio.create_task(runner.submit(images_for(1)))
        kept = asyncio.create_task(runner.submit(images_for(2)))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        model.gate.set()
        results = await asyncio.gather(first, kept)
        await runner.close()
        return gone, results

    gone, results = asyncio.run(scenario())
    assert gone.cancelled()
    assert 1 not in model.ids_seen()
    assert_own_result(2, 1, results[1])


@pytest.mark.parametrize("make_runner", [batcher, DirectRunner], ids=["batcher", "direct"])
def test_a_failing_input_fails_only_its_own_request(make_runner):
    model = FakeModel()

    async def scenario():
        runner = make_runner(model)
        first = await hold_model(model, runner)
        poisoned = images_for(2)
        poisoned[0, 0, 5, 5] = POISON
        inputs = [images_for(1), poisoned, images_for(3, 2)]
        waiting = [asyncio.create_task(runner.submit(x)) for x in inputs]
        await asyncio.sleep(0.01)
        model.gate.set()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        await runner.close()
        return results

    results = asyncio.run(scenario())
    assert_own_result(1, 1, results[1])
    assert isinstance(results[2], ValueError) and "poisoned" in str(results[2])
    assert_own_result(3, 2, results[3])


def test_close_finishes_queued_requests_then_refuses_new_ones():
    model = FakeModel()

    async def scenario():
        runner = batcher(model)
        first = await hold_model(model, runner)
        queued = [asyncio.create_task(runner.submit(images_for(i))) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(runner.close())
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await runner.submit(images_for(9))
        model.gate.set()
        await closing
        await runner.close()  # closing twice is harmless
        return await asyncio.gather(first, *queued)

    for request_id, result in enumerate(asyncio.run(scenario())):
        assert_own_result(request_id, 1, result)


def test_direct_runner_runs_each_request_alone():
    model = FakeModel()

    async def scenario():
        runner = DirectRunner(model)
        results = await asyncio.gather(*(runner.submit(images_for(i, 2)) for i in range(10)))
        await runner.close()
        return results

    for request_id, result in enumerate(asyncio.run(scenario())):
        assert_own_result(request_id, 2, result)
    assert [len(b) for b in model.batches] == [2] * 10
    assert model.ids_seen() == [i for i in range(10) for _ in range(2)]


def test_a_runner_serves_requests_from_several_event_loops():
    model = FakeModel()
    runner = batcher(model)
    for request_id in range(3):  # each asyncio.run is a fresh event loop, as in test clients
        assert_own_result(request_id, 1, asyncio.run(runner.submit(images_for(request_id))))
    asyncio.run(runner.close())


def test_batching_is_configured_per_model_over_the_global_settings(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings
    from tests.onnx_models import write_version

    monkeypatch.setenv("PIXELSERVE_MODEL_BATCHING", '{"digits": {"batching": false}, "fashion": {"max_batch_size": 8}}')
    settings = Settings(model_repository=tmp_path, providers=["cpu"], watch_interval_s=0, max_delay_ms=3)
    assert settings.batching_for("fashion").model_dump() == {"batching": True, "max_batch_size": 8, "max_delay_ms": 3}
    assert settings.batching_for("other").model_dump() == {"batching": True, "max_batch_size": 64, "max_delay_ms": 3}

    write_version(tmp_path, "digits", 1)
    write_version(tmp_path, "fashion", 1, task="fashion")
    with TestClient(create_app(settings)) as client:
        repository = client.app.state.repository
        assert isinstance(repository.get("digits")._runner, DirectRunner)
        fashion = repository.get("fashion")._runner
        assert isinstance(fashion, DynamicBatcher) and fashion._max_batch_size == 8 and fashion._max_delay_s == 0.003
        assert fashion._clock is time.thread_time  # a CPU session: runs are timed by their CPU time
        assert fashion._inline_below_s == settings.inline_inference_ms / 1000
        answer = client.post("/v1/models/digits/predict", json={"instances": [[0.5] * 784]})
        assert answer.status_code == 200


def test_a_malformed_per_model_setting_is_refused(monkeypatch):
    from pydantic import ValidationError

    from service.config import Settings

    monkeypatch.setenv("PIXELSERVE_MODEL_BATCHING", '{"digits": {"max_batch_size": 0}}')
    with pytest.raises(ValidationError):
        Settings()


def test_a_cheap_run_happens_on_the_event_loop_once_measured():
    model = FakeModel()

    async def scenario():
        runner = batcher(model, max_delay_s=0.0, inline_below_s=0.5)
        first = await runner.submit(images_for(0))  # nothing measured yet: the inference thread
        threads_after_first = set(model.thread_names)
        # Measured cheap now: concurrent requests coalesce into one run on the event loop's own thread.
        results = await asyncio.gather(*(runner.submit(images_for(i, 2)) for i in range(1, 11)))
        await runner.close()
        return first, threads_after_first, results

    first, threads_after_first, results = asyncio.run(scenario())
    assert_own_result(0, 1, first)
    assert threads_after_first == {"batcher"}
    for request_id, result in enumerate(results, start=1):
        assert_own_result(request_id, 2, result)
    assert [len(b) for b in model.batches] == [1, 20]
    assert model.thread_names == {"batcher", threading.current_thread().name}


def test_a_run_expected_to_take_longer_than_the_inline_limit_stays_off_the_event_loop():
    model = FakeModel(delay_s=0.004)

    async def scenario():
        runner = batcher(model, max_delay_s=0.0, inline_below_s=0.002)
        for i in range(5):
            assert_own_result(i, 1, await runner.submit(images_for(i)))
        await runner.close()

    asyncio.run(scenario())
    assert model.thread_names == {"batcher"}


def test_with_the_thread_cpu_clock_time_spent_waiting_does_not_make_a_run_look_long():
    model = FakeModel(delay_s=0.004)  # sleeping stands for waiting (for the GIL, for a lock): no CPU used

    async def scenario():
        runner = batcher(model, max_delay_s=0.0, inline_below_s=0.002, clock=time.thread_time)
        for i in range(3):
            assert_own_result(i, 1, await runner.submit(images_for(i)))
        await runner.close()

    asyncio.run(scenario())
    assert model.thread_names == {"batcher", threading.current_thread().name}


def test_a_failing_input_fails_only_its_own_request_when_runs_are_on_the_event_loop():
    model = FakeModel()

    async def scenario():
        runner = batcher(model, max_delay_s=0.0, inline_below_s=0.5)
        await runner.submit(images_for(0))  # measured: the next runs happen on the event loop
        poisoned = images_for(2)
        poisoned[0, 0, 5, 5] = POISON
        results = await asyncio.gather(*(runner.submit(x) for x in (images_for(1), poisoned, images_for(3, 2))), return_exceptions=True)
        await runner.close()
        return results

    results = asyncio.run(scenario())
    assert_own_result(1, 1, results[0])
    assert isinstance(results[1], ValueError) and "poisoned" in str(results[1])
    assert_own_result(3, 2, results[2])
    assert threading.current_thread().name in model.thread_names


def test_lone_image_runs_do_not_push_a_large_batch_off_the_event_loop():
    """A run's fixed cost dominates a lone image's, so seconds per image are estimated over recent images, not
    averaged over runs: averaged per run, lone requests between batches would send the batches to the thread."""
    runner = batcher(FakeModel(), max_delay_s=0.0, inline_below_s=0.008)
    for _ in range(10):
        runner._measured(0.001 + 0.00005, 1)  # 1 ms per run plus 0.05 ms per image
        runner._measured(0.001 + 0.00005 * 59, 59)
    # Averaged per run: ~0.3-0.5 ms per image, 20-30 ms for 60 images. Over images: ~0.083 ms, 5 ms.
    assert runner._runs_inline(60)


def test_runs_on_the_event_loop_are_timed_by_the_loop_clock_and_runs_on_the_thread_by_the_other():
    loop_seconds, thread_seconds = [0.0], [0.0]
    model = FakeModel()

    def timed_model(images):
        on_thread = threading.current_thread().name == "batcher"
        (thread_seconds if on_thread else loop_seconds)[0] += 0.001
        return model(images)

    async def scenario():
        runner = batcher(timed_model, max_delay_s=0.0, inline_below_s=0.5, clock=lambda: thread_seconds[0],
                         loop_clock=lambda: loop_seconds[0])
        await runner.submit(images_for(0))  # on the thread, before anything is measured
        assert runner._seconds_per_image == pytest.approx(0.001)
        await runner.submit(images_for(1, 3))  # on the loop
        await runner.close()
        return runner._seconds_per_image

    # (0.001 * 0.8 + 0.001) seconds over (1 * 0.8 + 3) images
    assert asyncio.run(scenario()) == pytest.approx(0.0018 / 3.8)
    assert model.thread_names == {"batcher", threading.current_thread().name}
