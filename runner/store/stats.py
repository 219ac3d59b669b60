"""Statistics over the runs, for the HTTP API's task list and metrics."""

from __future__ import annotations

from sqlalchemy import func, select

from runner.models import LastRun, RunStatus
from runner.store import _tables as t
from runner.store.connection import StoreBase


class StatsStore(StoreBase):
    """Each task's newest run; totals and recent durations by task."""

    async def latest_runs(self) -> dict[str, LastRun]:
        """Each task's newest run (by the time it was queued), for the tasks that have one: one
        index seek per task on ``runs_task_queued``."""
        runs = t.runs.c
        newest = (
            select(runs.id)
            .where(runs.task == t.tasks.c.name)
            .order_by(runs.queued_at.desc(), runs.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = select(runs.task, runs.id, runs.status, runs.queued_at, runs.finished_at).where(
            runs.id.in_(select(newest).select_from(t.tasks))
        )
        async with self._read() as conn:
            return {
                task: LastRun(run_id, RunStatus(status), finished_at if finished_at is not None else queued_at)
                for task, run_id, status, queued_at, finished_at in await conn.execute(query)
            }

    async def run_totals(self) -> list[tuple[str, str, int, float]]:
        """For every task and status: how many runs the store holds, and their durations'
        sum (in seconds; 0 where none has a duration)."""
        runs = t.runs.c
        query = select(
            runs.task, runs.status, func.count(), func.coalesce(func.sum(runs.duration_s), 0.0)
        ).group_by(runs.task, runs.status)
        async with self._read() as conn:
            return [(task, status, int(n), float(total)) for task, status, n, total in await conn.execute(query)]

    async def recent_durations(self, since: float, *, limit: int = 10_000) -> list[tuple[str, float]]:
        """(task, duration) of the runs that finished after ``since``, newest first."""
        runs = t.runs.c
        query = (
            select(runs.task, runs.duration_s)
            .where(runs.finished_at > since, runs.duration_s.is_not(None))
            .order_by(runs.finished_at.desc())
            .limit(limit)
        )
        async with self._read() as conn:
            return [(task, float(duration)) for task, duration in await conn.execute(query)]
