"""Concurrency slots: taken at once when free, handed on first come first served, never lost to
a waiter that was cancelled, and resized by a sync."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
import pytest

from runner.slots import Slots

pytestmark = pytest.mark.anyio


async def test_a_free_slot_is_taken_without_letting_other_tasks_run() -> None:
    slots, ran = Slots(1), []

    async def other() -> None:
        ran.append("other")

    async with anyio.create_task_group() as group:
        group.start_soon(other)
        async with slots:
            assert ran == [] and slots.taken == 1
    assert ran == ["other"] and slots.taken == 0


async def test_waiters_get_slots_in_the_order_they_came() -> None:
    slots, order = Slots(1), []

    async def run(name: str, started: anyio.Event) -> None:
        started.set()
        async with slots:
            order.append(name)

    async with anyio.create_task_group() as group, slots:
        for name in "abc":
            started = anyio.Event()
            group.start_soon(run, name, started)
            await started.wait()
        await anyio.wait_all_tasks_blocked()
        assert order == []
    assert order == ["a", "b", "c"]


async def test_a_cancelled_waiter_takes_no_slot_with_it() -> None:
    slots, got = Slots(1), []

    async def want(name: str) -> None:
        async with slots:
            got.append(name)

    async with anyio.create_task_group() as group:
        async with slots:
            waiter = anyio.CancelScope()
            group.start_soon(_in, waiter, lambda: want("cancelled"))
            await anyio.wait_all_tasks_blocked()
            waiter.cancel()
            await anyio.wait_all_tasks_blocked()
        async with slots:  # free again: the cancelled waiter did not take it with it
            got.append("next")
    assert got == ["next"] and slots.taken == 0


async def _in(scope: anyio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await fn()


async def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on() -> None:
    slots, got = Slots(1), []

    async def want(name: str) -> None:
        async with slots:
            got.append(name)

    await slots.acquire()
    first = asyncio.create_task(want("first"))
    second = asyncio.create_task(want("second"))
    await anyio.wait_all_tasks_blocked()
    slots.release()  # hands the slot to "first" ...
    first.cancel()   # ... cancelled before it runs again: "second" must get the slot
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled() and got == ["second"] and slots.taken == 0


async def test_more_slots_let_waiters_in_and_fewer_let_the_excess_run_out() -> None:
    slots, inside = Slots(1), []
    gate = anyio.Event()

    async def hold(name: str) -> None:
        async with slots:
            inside.append(name)
            await gate.wait()

    async with anyio.create_task_group() as group:
        for name in "abc":
            group.start_soon(hold, name)
        await anyio.wait_all_tasks_blocked()
        assert inside == ["a"]
        slots.total = 3
        await anyio.wait_all_tasks_blocked()
        assert inside == ["a", "b", "c"]
        slots.total = 1
        gate.set()
    assert slots.taken == 0


async def test_release_by_a_task_that_holds_no_slot_is_an_error() -> None:
    slots = Slots(2)
    with pytest.raises(RuntimeError, match="holds none"):
        slots.release()
    await slots.acquire()
    with pytest.raises(RuntimeError, match="holds one"):
        await slots.acquire()
    slots.release()
