"""The daemon in process, its services composed as ``runner daemon`` composes them, on a fake
clock: it leads, fires, takes triggers, and stops gently, releasing its lease.

What only a process shows (signals, ``kill -9``, a second daemon, the file watch) is in
tests/acceptance/test_daemon*.py.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest
from clock import FakeClock
from conftest import ProjectDir

from runner.daemon import Daemon, DaemonOptions
from runner.lease import LEASE, request_run
from runner.models import Run, RunStatus, new_run_id
from runner.processes import this_process
from runner.store import Store, Trigger

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


async def until(check: Callable[[], Awaitable[list[Run]]]) -> list[Run]:
    """What ``check`` finds, once it finds something (the runs run in real time)."""
    with anyio.fail_after(5):
        while True:
            found = await check()
            if found:
                return found
            await anyio.sleep(0.01)


async def test_the_daemon_fires_takes_triggers_and_stops_releasing_its_lease(
    project: ProjectDir, store: Store
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          tick:
            command: "true"
            schedule: {every: 10s}
          greet:
            command: echo hello
        """,
    )
    clock = FakeClock(time.time())
    daemon = Daemon(project.root, store, DaemonOptions(watch=False), clock=clock)
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: daemon.run(handle_signals=False))
        await clock.naps()  # the scheduler sleeps: the daemon leads and serves
        lease = await store.lease(LEASE)
        assert lease is not None and lease.pid == this_process().pid
        assert set(daemon.states) == {"tick"} and daemon.sync_state.last_error is None

        await clock.advance(10)

        async def ticked() -> list[Run]:
            return [r for r in await store.runs(task="tick") if r.status is RunStatus.SUCCEEDED]

        (tick,) = await until(ticked)
        assert (tick.trigger, tick.scheduled_for) == ("schedule", clock.now())

        run_id = new_run_id()
        assert await request_run(store, Trigger(run_id, "greet", {}, True, time.time())) is not None

        async def greeted() -> list[Run]:
            return [r for r in await store.runs(task="greet") if r.id == run_id and r.finished_at]

        (greet,) = await until(greeted)
        assert (greet.status, greet.stdout, greet.trigger) == (RunStatus.SUCCEEDED, "hello\n", "trigger")

        daemon.stop()
    assert await store.lease(LEASE) is None
