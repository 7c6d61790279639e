"""Row 1 of issue 19: a storm of reloads leaves the service serving; reload needs the key and can be switched off."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.inference.rescans import CoalescingRescans
from tests.faults.conftest import healthy, predicts, running_server, worker_pids
from tests.onnx_models import write_version
from tests.service.conftest import make_settings

STORM_S = 4.0


def test_a_reload_storm_leaves_the_service_serving_and_stoppable(tmp_path):
    root = tmp_path / "models"
    with running_server(root, workers=2) as server:
        supervisor = server.process.pid
        workers = worker_pids(supervisor)
        answers: list[int] = []
        failures: list[BaseException] = []
        stop = time.monotonic() + STORM_S

        def reload_at_full_speed() -> None:
            try:
                with httpx.Client(timeout=10) as client:  # keep-alive: as fast as one connection goes
                    while time.monotonic() < stop:
                        answers.append(client.post(f"{server.url}/v1/models/digits/reload").status_code)
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)

        signals_sent = 0

        def signal_the_supervisor() -> None:  # what a worker does per reload, without HTTP in between
            nonlocal signals_sent
            while time.monotonic() < stop:
                os.kill(supervisor, signal.SIGUSR1)
                signals_sent += 1

        threads = [threading.Thread(target=reload_at_full_speed) for _ in range(4)] + [threading.Thread(target=signal_the_supervisor)]
        for thread in threads:
            thread.start()
        predictions_during = 0
        while time.monotonic() < stop:
            assert predicts(server.url), "a prediction failed during the reload storm"
            predictions_during += 1
        for thread in threads:
            thread.join()

        assert not failures, failures
        assert len(answers) > 100 and set(answers) == {200}, (len(answers), set(answers))
        assert signals_sent > 1000 and predictions_during > 0
        # Still the same supervisor and workers, every one serving.
        assert server.process.poll() is None, server.log()
        assert worker_pids(supervisor) == workers
        assert healthy(server.url) and all(predicts(server.url) for _ in range(10))
        # A reload still reaches every worker after the storm.
        write_version(root, "digits", 2)
        assert httpx.post(f"{server.url}/v1/models/digits/reload").json()["default_version"] == 2
        deadline = time.monotonic() + 10
        while not all(httpx.get(f"{server.url}/v1/models/digits").json()["default_version"] == 2 for _ in range(20)):
            assert time.monotonic() < deadline, "a worker never rescanned after the storm"
            time.sleep(0.1)

        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
        assert "Traceback" not in server.log()


def test_rescans_coalesce_into_one_pending_while_one_runs():
    async def scenario() -> tuple[list, list]:
        scans: list = []
        release = asyncio.Event()

        async def rescan(names) -> None:
            scans.append(names)
            await release.wait()

        rescans = CoalescingRescans(rescan)
        first = rescans.ask("a")
        await asyncio.sleep(0)  # the first scan starts
        waiting = [rescans.ask(name) for name in ["b", "c"] * 500] + [rescans.ask()]
        assert all(future is waiting[0] for future in waiting) and not first.done()
        release.set()
        await asyncio.gather(first, *waiting)
        return scans, [future.done() for future in waiting]

    scans, done = asyncio.run(scenario())
    assert scans == [frozenset({"a"}), None]  # two scans for 1002 asks; the second covers everything asked
    assert all(done)


def test_a_caller_that_leaves_does_not_cancel_the_rescan_others_wait_for():
    async def scenario() -> int:
        scans = 0

        async def rescan(names) -> None:
            nonlocal scans
            scans += 1
            await asyncio.sleep(0.05)

        rescans = CoalescingRescans(rescan)
        leaving = asyncio.create_task(rescans.rescan("a"))
        staying = asyncio.create_task(rescans.rescan("a"))
        await asyncio.sleep(0.01)
        leaving.cancel()
        await staying
        return scans

    assert asyncio.run(scenario()) == 1


@pytest.fixture
def repository(tmp_path):
    write_version(tmp_path, "digits", 1)
    return tmp_path


def test_reload_needs_the_key_whenever_one_is_set(repository):
    with TestClient(create_app(make_settings(repository, api_key="s3cret"))) as client:
        refused = client.post("/v1/models/digits/reload")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert client.post("/v1/models/digits/reload", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v1/models/digits/reload", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.post("/v1/models/digits/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_reload_can_be_switched_off(repository):
    with TestClient(create_app(make_settings(repository, allow_reload=False, api_key="s3cret"))) as client:
        assert client.post("/v1/models/digits/reload").status_code == 401  # the key first: nothing told without it
        refused = client.post("/v1/models/digits/reload", headers={"X-API-Key": "s3cret"})
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["code"] == "reload_disabled" and "PIXELSERVE_ALLOW_RELOAD=true" in error["message"]
        assert client.post("/v1/models/digits/predict", json={"instances": [[0.0] * 784]}, headers={"X-API-Key": "s3cret"}).status_code == 200
