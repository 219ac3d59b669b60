"""Following a run's log as it is written, for ``runner logs``.

A run's output and log lines reach the store while it runs (``livelog.LiveLog``); a follower
in any process polls for the rows after the last one it printed. The rows a run had not
streamed yet are committed with its final status, so once a follower sees a run final, one
more read has all of its rows. Rows are committed in id order, so "after the last id seen"
misses nothing and repeats nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from runner.errors import RunNotFound
from runner.models import Run, RunStatus
from runner.processes import HOST, kill_orphaned_groups, process_is_alive
from runner.shutdown import first_stop_signal
from runner.store import LogEntry, Store

POLL_INTERVAL = 0.15
"""Seconds between two reads of the store while following."""

SWEEP_INTERVAL = 1.0
"""Seconds between two checks, while following a run, that the processes running this host's
unfinished runs are alive (a dead one's runs are marked ``interrupted``, as at every start)."""

WAIT_INTERVAL = 0.05
"""Seconds between two looks at the status of a run being waited for."""

_PAGE = 1000
_UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)

Emit = Callable[[LogEntry], None]


@dataclass(frozen=True)
class Followed:
    """How following ended: the run's status when it was read last (None for a task), or the
    signal that stopped it."""

    status: RunStatus | None = None
    stopped_by: int | None = None


async def follow_logs(
    store: Store,
    emit: Emit,
    *,
    run_id: str | None = None,
    task: str | None = None,
    follow: bool = False,
    interval: float = POLL_INTERVAL,
) -> Followed:
    """Pass the stored rows of the run ``run_id`` (or of the latest run of ``task``) to ``emit``.

    With ``follow``, keep passing new rows as they are committed: for a run, until it is final
    (a queued run is waited for); for a task, those of its later runs too, until SIGINT or
    SIGTERM. Raises RunNotFound when there is no such run or the task has none, except that a
    task known to the store is followed before its first run.
    """
    work: Callable[[], Awaitable[RunStatus | None]]
    if run_id is not None:
        await store.run_status(run_id)  # RunNotFound before anything is printed
        work = functools.partial(_run, store, emit, run_id, follow=follow, interval=interval)
    elif task is not None:
        await _check_task(store, task, follow=follow)
        work = functools.partial(_task, store, emit, task, follow=follow, interval=interval)
    else:
        raise ValueError("follow_logs needs run_id or task")
    if not follow:
        return Followed(await work())
    return await _until_signal(work)


async def _until_signal(work: Callable[[], Awaitable[RunStatus | None]]) -> Followed:
    ended: list[Followed] = []
    async with anyio.create_task_group() as group:

        async def stop_on_signal(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            ended.append(Followed(stopped_by=await first_stop_signal(task_status=task_status)))
            group.cancel_scope.cancel()

        async def run_work() -> None:
            ended.append(Followed(await work()))
            group.cancel_scope.cancel()

        await group.start(stop_on_signal)
        group.start_soon(run_work)
    return ended[0]


async def _drain(store: Store, emit: Emit, after: int, **which: str) -> int:
    """Emit every row of ``which`` above ``after``; return the last id emitted."""
    while True:
        rows = await store.log_lines(after=after, limit=_PAGE, **which)
        for row in rows:
            emit(row)
        if rows:
            after = rows[-1].id
        if len(rows) < _PAGE:
            return after


async def _run(store: Store, emit: Emit, run_id: str, *, follow: bool, interval: float) -> RunStatus:
    after = 0
    swept = anyio.current_time()
    while True:
        # The status first: the rows committed with (or before) a final status are read after it.
        _task, status = await store.run_status(run_id)
        after = await _drain(store, emit, after, run_id=run_id)
        if not follow or status not in _UNFINISHED:
            return status
        if anyio.current_time() - swept >= SWEEP_INTERVAL:
            # A run whose runner died would otherwise be followed forever (on this host).
            swept = anyio.current_time()
            kill_orphaned_groups((await store.mark_interrupted(HOST, process_is_alive)).groups)
        await anyio.sleep(interval)


async def _check_task(store: Store, task: str, *, follow: bool) -> None:
    if await store.runs(task=task, limit=1):
        return
    if task not in await store.tasks(include_removed=True):
        raise RunNotFound(f"task {task!r} has no runs and is not in the store; `runner list` shows the tasks")
    if not follow:
        raise RunNotFound(f"task {task!r} has no runs yet; `runner runs` lists recent ones")


async def _task(store: Store, emit: Emit, task: str, *, follow: bool, interval: float) -> None:
    # Where following starts, read before the latest run is looked up: rows of a run that
    # starts in between are then followed below, not lost.
    cursor = await store.last_log_id()
    latest = await store.runs(task=task, limit=1)
    if latest:
        for row in await store.log_lines(latest[0].id):
            if row.id <= cursor or not follow:
                emit(row)
    if not follow:
        return
    while True:
        cursor = await _drain(store, emit, cursor, task=task)
        await anyio.sleep(interval)


async def wait_for(store: Store, run_id: str) -> list[Run]:
    """Every run of the invocation ``run_id`` heads, once that run and its retries are final
    (earliest first, the last attempt last)."""
    invocations: list[str] = []
    while True:
        try:
            _, status = await store.run_status(run_id)
        except RunNotFound:
            status = None  # the daemon has not taken it up yet
        if status is None or status in _UNFINISHED:
            await anyio.sleep(WAIT_INTERVAL)
            continue
        target = await store.run(run_id)
        if target.invocation is not None and target.invocation not in invocations:
            invocations.append(target.invocation)
        retry = await store.retry_of(run_id)  # queued with its end, if it has one
        if retry is None:
            break
        run_id = retry
    found = {r.id: r for invocation in invocations for r in await store.runs(invocation=invocation, limit=None)}
    others = sorted((r for r in found.values() if r.id != run_id), key=lambda r: (r.finished_at or 0.0, r.id))
    return [*others, target]
