"""The daemon's scheduler in process, on a fake clock: fire times, misfire, overlap, needs, cron.

A real project, a real SQLite store, a real engine running real shell commands; only the time
the scheduler fires by is the test's (``FakeClock``). The test moves it, then waits until the
scheduler has fired what was due and gone back to sleep, so nothing waits for time to pass.
What only a process shows (signals, ``kill -9``, the file watch, the lease) stays in
tests/acceptance/test_daemon.py.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from zoneinfo import ZoneInfo

import anyio
import pytest
from clock import FakeClock
from conftest import ProjectDir

from runner import log
from runner.daemon.runs import Runs
from runner.daemon.scheduler import CLOCK_CHECK, LEAD, Scheduler
from runner.engine import Engine
from runner.models import Run, RunStatus
from runner.store import Store
from runner.sync import sync_project

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


START = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def events() -> Iterator[list[logging.LogRecord]]:
    """What the scheduler logs (info and up), whatever the runner logger was set up to do."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, level = Keep(logging.INFO), log.logger.level
    log.logger.addHandler(handler)
    log.logger.setLevel(logging.INFO)
    yield records
    log.logger.removeHandler(handler)
    log.logger.setLevel(level)


def logged(records: list[logging.LogRecord], event: str) -> list[logging.LogRecord]:
    return [record for record in records if getattr(record, "event", None) == event]


@asynccontextmanager
async def scheduling(
    project: ProjectDir, store: Store, clock: FakeClock, *, started_at: float | None = None
) -> AsyncIterator[Scheduler]:
    """A scheduler firing ``project``'s schedules into ``store`` on ``clock``, with the daemon's
    runs service to run what it fires; running runs are cancelled when the block ends."""
    await sync_project(project.root, store)
    async with Engine(store, project.root) as engine, anyio.create_task_group() as group:
        runs = Runs(engine, group, remote=False)
        scheduler = Scheduler(
            store, engine, runs, started_at=clock.now() if started_at is None else started_at, clock=clock
        )
        await scheduler.start()
        group.start_soon(scheduler.run)
        await clock.naps()
        yield scheduler
        group.cancel_scope.cancel()


async def runs_of(store: Store, task: str) -> list[Run]:
    """The task's runs, oldest first."""
    return sorted(await store.runs(task=task, limit=None), key=lambda run: (run.queued_at, run.id))


async def finished(store: Store, task: str, count: int) -> list[Run]:
    """The task's runs once ``count`` of them are final (the runs run in real time)."""
    with anyio.fail_after(5):
        while True:
            runs = await runs_of(store, task)
            if sum(run.status not in (RunStatus.QUEUED, RunStatus.RUNNING) for run in runs) >= count:
                return runs
            await anyio.sleep(0.01)


EVERY_10S = """
    version: 1
    tasks:
      tick:
        command: "true"
        schedule: {every: 10s}
"""


async def test_an_every_schedule_fires_on_its_grid_never_early_and_each_fire_once(
    project: ProjectDir, store: Store, clock: FakeClock
) -> None:
    project.tasks("a.yaml", EVERY_10S)
    async with scheduling(project, store, clock) as scheduler:
        anchor = scheduler.states["tick"].anchor
        assert anchor == START and scheduler.states["tick"].next_fire_at == START + 10

        await clock.advance_to(START + 9.999)  # prepared: queued ahead, not started before its time
        assert [(run.status, run.scheduled_for) for run in await runs_of(store, "tick")] == [(RunStatus.QUEUED, START + 10)]
        for k in (1, 2, 3):
            await clock.advance_to(START + 10 * k)
            runs = await finished(store, "tick", k)  # a fire while one goes on would be skipped

    assert [run.scheduled_for for run in runs] == [START + 10, START + 20, START + 30]
    assert {(run.status, run.trigger) for run in runs} == {(RunStatus.SUCCEEDED, "schedule")}
    stored = (await store.schedule_states())["tick"]
    assert (stored.anchor, stored.last_fire_at, stored.next_fire_at) == (START, START + 30, START + 40)


async def test_a_fire_is_committed_ahead_started_at_its_time_and_holds_the_pages_until_then(
    project: ProjectDir, store: Store, clock: FakeClock
) -> None:
    project.tasks("a.yaml", EVERY_10S)
    async with scheduling(project, store, clock) as scheduler:
        await scheduler.settled()  # nothing firing: at once

        await clock.advance_to(START + 10 - LEAD / 2)
        [run] = await runs_of(store, "tick")
        assert (run.status, run.scheduled_for, run.started_at) == (RunStatus.QUEUED, START + 10, None)
        with anyio.move_on_after(0.05) as waited:
            await scheduler.settled()  # the pages' live work waits while a fire is pending
        assert waited.cancelled_caught

        async with anyio.create_task_group() as group:
            group.start_soon(clock.advance_to, START + 10)
            with anyio.fail_after(1):
                await scheduler.settled()  # once the run began
        [run] = await finished(store, "tick", 1)
        assert run.status is RunStatus.SUCCEEDED and run.started_at is not None


async def test_late_fires_while_running_are_run_once_and_the_grid_goes_on(
    project: ProjectDir, store: Store, clock: FakeClock
) -> None:
    project.tasks("a.yaml", EVERY_10S)
    async with scheduling(project, store, clock):
        await clock.advance(35)  # a busy machine: three fire times passed at once
        (run,) = await finished(store, "tick", 1)
    assert run.scheduled_for == START + 10
    assert (await store.schedule_states())["tick"].next_fire_at == START + 40


async def test_the_scheduler_looks_at_the_wall_clock_at_least_every_clock_check(
    project: ProjectDir, store: Store, clock: FakeClock
) -> None:
    project.tasks("a.yaml", EVERY_10S.replace("every: 10s", "every: 1h"))
    async with scheduling(project, store, clock):
        # Woken by nothing but its own nap: a clock that jumped is seen within CLOCK_CHECK.
        for _ in range(math.ceil(3600 / CLOCK_CHECK)):
            await clock.advance(CLOCK_CHECK)
        (run,) = await finished(store, "tick", 1)
    assert run.scheduled_for == START + 3600


MISFIRE = """
    version: 1
    tasks:
      once:
        command: "true"
        schedule: {every: 1h}
      skipper:
        command: "true"
        schedule: {every: 1h, misfire: skip}
"""


async def test_fires_missed_while_no_daemon_ran_follow_the_misfire_policy(
    project: ProjectDir, store: Store, clock: FakeClock, events: list[logging.LogRecord]
) -> None:
    project.tasks("a.yaml", MISFIRE)
    async with scheduling(project, store, clock):
        pass
    # Down for three hours and a minute: three fire times of each went by.
    await clock.advance(3 * 3600 + 60)
    async with scheduling(project, store, clock):
        (once,) = await finished(store, "once", 1)
        assert await runs_of(store, "skipper") == []

    assert (once.scheduled_for, once.status) == (START + 3600, RunStatus.SUCCEEDED)
    states = await store.schedule_states()
    assert states["once"].next_fire_at == states["skipper"].next_fire_at == START + 4 * 3600
    (missed,) = logged(events, "fire_missed")
    assert missed.getMessage().startswith("skipper: missed the fire of ")


async def test_a_restart_goes_on_from_the_stored_fire_times(
    project: ProjectDir, store: Store, clock: FakeClock
) -> None:
    project.tasks("a.yaml", EVERY_10S)
    async with scheduling(project, store, clock):
        await clock.advance(10)
        await finished(store, "tick", 1)
        await clock.advance(10)
        await finished(store, "tick", 2)
    async with scheduling(project, store, clock) as again:
        assert again.states["tick"].anchor == START  # the grid did not move
        await clock.advance(10)
        runs = await finished(store, "tick", 3)
    assert [run.scheduled_for for run in runs] == [START + 10, START + 20, START + 30]


async def test_a_fire_while_the_previous_run_goes_on_is_skipped_unless_overlap_allows_it(
    project: ProjectDir, store: Store, clock: FakeClock
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          slow:
            command: sleep 30
            schedule: {every: 10s}
          both:
            command: sleep 30
            schedule: {every: 10s, overlap: allow}
        """,
    )
    async with scheduling(project, store, clock):
        await clock.advance(10)
        await clock.advance(10)
        slow, both = await runs_of(store, "slow"), await runs_of(store, "both")
        # Read while the first runs still go on (they sleep 30 s of real time).
        assert [run.status for run in slow] in (
            [RunStatus.QUEUED, RunStatus.SKIPPED],
            [RunStatus.RUNNING, RunStatus.SKIPPED],
        )
        assert slow[1].scheduled_for == START + 20 and slow[1].error is not None
        assert slow[1].error["message"] == "the previous run of this task is still going (overlap: skip)"
        assert len(both) == 2 and RunStatus.SKIPPED not in {run.status for run in both}


async def test_a_fire_runs_the_task_after_its_needs(project: ProjectDir, store: Store, clock: FakeClock) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          fetch:
            command: echo fetched
          report:
            command: cat "$RUNNER_UPSTREAM_FILE"
            needs: [fetch]
            schedule: {every: 10s}
        """,
    )
    async with scheduling(project, store, clock):
        await clock.advance(10)
        (report,) = await finished(store, "report", 1)
    (fetch,) = await runs_of(store, "fetch")
    assert (fetch.trigger, report.trigger) == ("schedule", "schedule")
    assert fetch.invocation == report.invocation and fetch.scheduled_for is None
    assert fetch.finished_at is not None and report.started_at is not None
    assert fetch.finished_at <= report.started_at and report.scheduled_for == START + 10
    assert report.stdout is not None and json.loads(report.stdout)["fetch"]["stdout"] == "fetched\n"


async def test_a_changed_schedule_starts_again_from_now_and_a_removed_one_stops_at_once(
    project: ProjectDir, store: Store, clock: FakeClock
) -> None:
    path = project.tasks("a.yaml", EVERY_10S + "      tock:\n        command: 'true'\n        schedule: {every: 10s}\n")
    async with scheduling(project, store, clock) as scheduler:
        await clock.advance(5)
        path.write_text(EVERY_10S.replace("10s", "7s"))  # tick every 7 s; tock gone
        await sync_project(project.root, store)
        await scheduler.engine.reload()
        await scheduler.reschedule()
        await clock.naps()  # woken by the reschedule, asleep again
        assert set(scheduler.states) == {"tick"}
        assert scheduler.states["tick"].next_fire_at == START + 5 + 7
        await clock.advance(5)  # tock's old fire time: nothing fires
        await clock.advance(2)
        (tick,) = await finished(store, "tick", 1)
    assert tick.scheduled_for == START + 12
    assert await runs_of(store, "tock") == []
    assert set(await store.schedule_states()) == {"tick"}


async def test_a_cron_schedule_fires_in_its_time_zone_across_the_dst_changes(
    project: ProjectDir, store: Store
) -> None:
    oslo = ZoneInfo("Europe/Oslo")
    clock = FakeClock(datetime(2026, 3, 27, 12, 0, tzinfo=oslo).timestamp())
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          nightly:
            command: "true"
            schedule: {cron: "30 2 * * *", timezone: Europe/Oslo}
        """,
    )
    fires = []
    async with scheduling(project, store, clock) as scheduler:
        for _ in range(3):
            fires.append(scheduler.states["nightly"].next_fire_at)
            await clock.advance_to(fires[-1])
            await finished(store, "nightly", len(fires))
        # The autumn change: 02:30 comes twice on 25 October, the task fires once.
        await clock.advance_to(datetime(2026, 10, 24, 12, 0, tzinfo=oslo).timestamp())
        await finished(store, "nightly", 4)
        for _ in range(2):
            fires.append(scheduler.states["nightly"].next_fire_at)
            await clock.advance_to(fires[-1])
            await finished(store, "nightly", len(fires) + 1)
        runs = await finished(store, "nightly", 6)
    assert [datetime.fromtimestamp(f, oslo).isoformat() for f in fires] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist that night
        "2026-03-30T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    # Six runs: the five fires, and the late one for the fires between March and October.
    assert [run.scheduled_for for run in runs] == [*fires[:3], datetime(2026, 3, 31, 2, 30, tzinfo=oslo).timestamp(), *fires[3:]]


async def test_two_schedulers_on_one_store_fire_each_time_once(
    project: ProjectDir, store: Store, clock: FakeClock, events: list[logging.LogRecord]
) -> None:
    project.tasks("a.yaml", EVERY_10S)
    async with scheduling(project, store, clock) as first, scheduling(project, store, clock) as second:
        await clock.advance(10)
        await finished(store, "tick", 1)
        await clock.advance(10)
        runs = await finished(store, "tick", 2)
        assert first.states["tick"].next_fire_at == second.states["tick"].next_fire_at == START + 30
    assert [run.scheduled_for for run in runs] == [START + 10, START + 20]
    assert len(logged(events, "fire_lost")) == 2
