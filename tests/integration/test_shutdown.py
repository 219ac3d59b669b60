"""The stop signals of runner's long-running commands (``runner.shutdown``), in process: the
signals are sent to the test's own process while runner's handlers are installed."""

from __future__ import annotations

import os
import signal

import anyio
import pytest
from anyio.abc import TaskStatus

from runner.shutdown import first_stop_signal, on_stop_signals

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


async def test_every_stop_signal_is_handed_on_until_cancelled() -> None:
    seen: list[int] = []
    both = anyio.Event()

    def handle(signum: int) -> None:
        seen.append(signum)
        if len(seen) == 2:
            both.set()

    async with anyio.create_task_group() as group:
        await group.start(on_stop_signals, handle)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        with anyio.fail_after(5):
            await both.wait()
        group.cancel_scope.cancel()
    assert seen == [signal.SIGTERM, signal.SIGINT]


async def test_the_first_stop_signal_is_returned() -> None:
    first: list[int] = []

    async def wait_first(*, task_status: TaskStatus[None]) -> None:
        first.append(await first_stop_signal(task_status=task_status))

    async with anyio.create_task_group() as group:
        await group.start(wait_first)
        os.kill(os.getpid(), signal.SIGINT)
    assert first == [signal.SIGINT]
