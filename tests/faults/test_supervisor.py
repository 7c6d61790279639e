"""Row 5 of issue 19: workers killed by a signal are restarted with a growing backoff while the others serve;
the supervisor gives up (exit 3) only when no worker can start, and says why."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from tests.faults.conftest import listening_sockets, predicts, running_server, wait_for, worker_pids
from tests.service.conftest import PROJECT_ROOT

BACKOFF = {"PIXELSERVE_RESTART_BACKOFF_S": "0.5", "PIXELSERVE_RESTART_BACKOFF_MAX_S": "1.5"}


def restart_delays(log: str) -> list[float]:
    return [float(delay) for delay in re.findall(r"starting another in ([0-9.]+) s", log)]


def test_workers_killed_again_and_again_are_restarted_with_growing_delays_while_the_other_serves(tmp_path):
    with running_server(tmp_path / "models", workers=2, env=BACKOFF) as server:
        supervisor = server.process.pid
        survivor, victim = sorted(worker_pids(supervisor))
        gaps = []
        for _ in range(4):
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            assert predicts(server.url), "the surviving worker stopped serving"
            wait_for(lambda: len(worker_pids(supervisor) - {survivor, victim}) == 1, timeout_s=20)
            gaps.append(time.monotonic() - killed_at)
            [victim] = worker_pids(supervisor) - {survivor}  # the replacement, killed again before it serves
        # The delays double up to the cap, and the replacements really waited for them.
        assert restart_delays(server.log()) == [0.5, 1.0, 1.5, 1.5], server.log()
        assert gaps[0] >= 0.45 and gaps[1] >= 0.95 and gaps[2] >= 1.45, gaps
        # The supervisor never gave up; the last replacement serves beside the survivor.
        wait_for(lambda: listening_sockets(server.port) == 2, timeout_s=60)
        assert server.process.poll() is None and survivor in worker_pids(supervisor)
        assert all(predicts(server.url) for _ in range(10))
        assert "(killed by signal 9)" in server.log()


def test_workers_that_fail_to_start_while_another_serves_are_retried_not_given_up_on(tmp_path):
    root = tmp_path / "models"
    env = {"PIXELSERVE_RESTART_BACKOFF_S": "0.1", "PIXELSERVE_RESTART_BACKOFF_MAX_S": "0.2"}
    with running_server(root, workers=2, env=env) as server:
        supervisor = server.process.pid
        survivor, victim = sorted(worker_pids(supervisor))
        hidden = root.rename(tmp_path / "hidden")  # a replacement now cannot start: no model repository
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: server.log().count("exited with code 3 before serving") >= 4, timeout_s=120)
        assert server.process.poll() is None, server.log()
        assert "giving up" not in server.log()
        assert predicts(server.url)  # the survivor still serves from the models it holds
        hidden.rename(root)
        wait_for(lambda: listening_sockets(server.port) == 2, timeout_s=60)
        assert survivor in worker_pids(supervisor)


def test_the_supervisor_gives_up_with_exit_3_when_no_worker_can_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service", "--workers", "2", "--port", "0", "--model-repository", str(tmp_path / "missing"), "--log-format", "text"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIXELSERVE_")} | {"PIXELSERVE_PROVIDERS": "cpu"},
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "is not a directory" in result.stderr  # the workers say why
    assert "a worker failed to start 3 times in a row" in result.stderr and "no worker serves; giving up" in result.stderr
