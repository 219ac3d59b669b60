"""Reads for the web page and the HTTP event streams (``runner/http``): counts of recent runs,
the queue's depth, each task's newest runs, a task's durations, and the statuses and new log rows
of many runs at once. Each is one indexed query (or one per 500 names), whatever the store's size.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from runner.models import LastRun, RunStatus
from runner.store import _tables as t
from runner.store.connection import StoreBase
from runner.store.logs import LogEntry


class PageStore(StoreBase):
    """What the web page shows and the event streams follow."""

    async def run_counts_since(self, since: float) -> dict[RunStatus, int]:
        """How many runs of each status were queued after ``since``: a range of ``runs_queued``.

        Counted over a subquery ordered by queued time, which keeps SQLite on ``runs_queued``:
        left to itself, it groups by walking the status index over every run (0.9 s for
        1,000,000 runs, against 50 ms for the 33,000 of the last day)."""
        runs = t.runs.c
        recent = select(runs.status).where(runs.queued_at > since).order_by(runs.queued_at).subquery("recent")
        query = select(recent.c.status, func.count()).group_by(recent.c.status)
        async with self._read() as conn:
            return {RunStatus(status): int(n) for status, n in await conn.execute(query)}

    async def queued_count(self) -> int:
        """Runs queued and not started yet (the queue's depth), counted on ``runs_status_queued``."""
        query = select(func.count()).where(t.runs.c.status == RunStatus.QUEUED.value)
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def recent_statuses(self, tasks: Sequence[str], per_task: int) -> dict[str, list[LastRun]]:
        """The newest ``per_task`` runs of each of ``tasks``, newest first: for each task a short
        walk down ``runs_task_queued`` (ordered by queued time alone, which that index gives
        without a sort), so the cost follows the tasks asked for, not the runs stored."""
        runs = t.runs.c
        found: dict[str, list[LastRun]] = {name: [] for name in tasks}
        if not tasks or per_task < 1:
            return found
        newest = t.runs.alias("newest")
        chosen = (
            select(newest.c.id)
            .where(newest.c.task == t.tasks.c.name)
            .order_by(newest.c.queued_at.desc())
            .limit(per_task)
        )
        rows: list[tuple[float, str, str, LastRun]] = []
        async with self._read() as conn:
            # 500 names at a time: each is a bound value (SQLite allows 32,766 per statement).
            for start in range(0, len(tasks), 500):
                query = (
                    select(runs.task, runs.id, runs.status, runs.queued_at, runs.finished_at)
                    .select_from(t.tasks.join(t.runs, runs.id.in_(chosen)))
                    .where(t.tasks.c.name.in_(list(tasks[start : start + 500])))
                )
                rows.extend(
                    (queued, run_id, task, LastRun(run_id, RunStatus(status), finished if finished is not None else queued))
                    for task, run_id, status, queued, finished in await conn.execute(query)
                )
        rows.sort(reverse=True)
        for _queued, _id, task, last in rows:
            found[task].append(last)
        return found

    async def run_statuses(self, run_ids: Sequence[str]) -> dict[str, RunStatus]:
        """The status of each of ``run_ids`` the store holds (a pruned one is left out): one
        read for every run the HTTP event streams follow."""
        found: dict[str, RunStatus] = {}
        async with self._read() as conn:
            for start in range(0, len(run_ids), 500):
                query = select(t.runs.c.id, t.runs.c.status).where(t.runs.c.id.in_(list(run_ids[start : start + 500])))
                found.update((run_id, RunStatus(status)) for run_id, status in await conn.execute(query))
        return found

    async def log_lines_of(self, run_ids: Sequence[str], *, after: int, limit: int) -> list[LogEntry]:
        """The log rows of the runs ``run_ids`` with an id above ``after``, oldest first, at
        most ``limit`` (as ``log_lines``, for many runs at once: a seek on ``run_logs_run``
        for each)."""
        if not run_ids:
            return []
        query = (
            select(
                t.run_logs.c.id, t.run_logs.c.run_id, t.runs.c.task, t.run_logs.c.at,
                t.run_logs.c.stream, t.run_logs.c.level, t.run_logs.c.message,
            )
            .join(t.runs, t.runs.c.id == t.run_logs.c.run_id)
            .where(t.run_logs.c.run_id.in_(list(run_ids)), t.run_logs.c.id > after)
            .order_by(t.run_logs.c.id)
            .limit(limit)
        )
        async with self._read() as conn:
            return [
                LogEntry(row.id, row.run_id, row.task, row.at, row.stream, row.level or None, row.message)
                for row in await conn.execute(query)
            ]

    async def task_durations(self, task: str, limit: int) -> list[tuple[float, float, RunStatus]]:
        """(queued_at, duration, status) of ``task``'s newest ``limit`` finished runs, oldest
        first, for a chart: a walk down ``runs_task_queued``."""
        runs = t.runs.c
        query = (
            select(runs.queued_at, runs.duration_s, runs.status)
            .where(runs.task == task, runs.duration_s.is_not(None))
            .order_by(runs.queued_at.desc())
            .limit(limit)
        )
        async with self._read() as conn:
            rows = [(float(queued), float(duration), RunStatus(status)) for queued, duration, status in await conn.execute(query)]
        return rows[::-1]
