"""service.memory: the container's memory limit, the byte budgets requests wait for, and how they are sized."""

from __future__ import annotations

import asyncio

import pytest

import service.memory as memory
from service.errors import Overloaded, PayloadTooLarge
from service.memory import ByteBudget, derive_budgets


@pytest.mark.parametrize(("text", "limit"), [("536870912\n", 536870912), ("max\n", None)])
def test_the_container_limit_is_read_from_the_cgroup(tmp_path, monkeypatch, text, limit):
    (tmp_path / "memory.max").write_text(text)
    monkeypatch.setattr(memory, "CGROUP_MEMORY_MAX", tmp_path / "memory.max")
    monkeypatch.setattr(memory, "CGROUP_V1_MEMORY_LIMIT", tmp_path / "absent")
    assert memory.container_memory_limit() == limit


def test_budgets_come_from_the_setting_else_the_cgroup_else_the_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "CGROUP_MEMORY_MAX", tmp_path / "memory.max")
    monkeypatch.setattr(memory, "CGROUP_V1_MEMORY_LIMIT", tmp_path / "absent")
    sizes = dict(workers=2, baseline=134 << 20, max_body_bytes=16 << 20)
    (tmp_path / "memory.max").write_text(str(1 << 30))
    budgets = derive_budgets(memory_limit=None, **sizes)
    assert budgets.limit == 1 << 30 and "cgroup" in budgets.limit_source
    assert budgets.worker_share == ((1 << 30) - memory.SUPERVISOR_BYTES) // 2
    free = budgets.worker_share - (134 << 20)
    assert budgets.decode == int(free * 0.55) and budgets.body == int(free * 0.25)
    assert budgets.decode + budgets.body + budgets.baseline < budgets.worker_share
    assert derive_budgets(memory_limit=512 << 20, **sizes).limit_source == "PIXELSERVE_MEMORY_LIMIT_BYTES"
    tight = derive_budgets(memory_limit=256 << 20, **sizes)  # less than the baseline left: the floors
    assert tight.decode == memory.MIN_DECODE_BUDGET and tight.body == 2 * (16 << 20)
    given = derive_budgets(memory_limit=None, decode_budget=5 << 20, body_budget=7 << 20, **sizes)
    assert (given.decode, given.body) == (5 << 20, 7 << 20)
    (tmp_path / "memory.max").write_text("max")
    assert derive_budgets(memory_limit=None, **sizes).limit == memory.physical_memory()


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_budget_serves_waiters_in_order_and_refuses_what_never_fits():
    async def scenario():
        budget = ByteBudget(100, what="tests", wait_s=5)
        with pytest.raises(PayloadTooLarge):
            await budget.acquire(101)
        await budget.acquire(60)
        order = []

        async def take(size, name):
            await budget.acquire(size)
            order.append(name)

        large = asyncio.create_task(take(70, "large"))
        await asyncio.sleep(0)
        small = asyncio.create_task(take(10, "small"))  # would fit now, but the large one came first
        await asyncio.sleep(0.01)
        assert order == [] and budget.in_use == 60
        budget.release(60)
        await asyncio.gather(large, small)
        assert order == ["large", "small"] and budget.in_use == 80 and budget.peak == 80

    run(scenario())


def test_a_waiter_past_its_time_gets_a_503_and_gives_its_place_up():
    async def scenario():
        budget = ByteBudget(100, what="tests", wait_s=0.05)
        await budget.acquire(90)
        with pytest.raises(Overloaded) as refused:
            await budget.acquire(50)
        assert refused.value.headers["Retry-After"] == "1" and refused.value.status_code == 503
        assert budget.try_acquire(10) and budget.in_use == 100

    run(scenario())


def test_a_cancelled_waiter_takes_nothing():
    async def scenario():
        budget = ByteBudget(100, what="tests", wait_s=5)
        await budget.acquire(100)
        waiter = asyncio.create_task(budget.acquire(50))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        budget.release(100)
        assert budget.in_use == 0 and budget.try_acquire(100)

    run(scenario())
