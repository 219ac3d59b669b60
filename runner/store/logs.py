"""A run's log: the lines of its ``ctx.logger`` and its stdout and stderr as they streamed."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from runner.store import _tables as t
from runner.store.connection import StoreBase


@dataclass(frozen=True)
class LogEntry:
    """One row of a run's log: a line of its ``ctx.logger`` (``stream`` "log"), or a chunk of
    its stdout or stderr as it was streamed (``level`` None; "warning" for runner's note that
    the stream stopped at the output cap). ``id`` grows with every row written."""

    id: int
    run_id: str
    task: str
    at: float
    stream: str
    level: str | None
    message: str


class LogStore(StoreBase):
    """Log rows, read in the order they were committed (for ``runner logs --follow``)."""

    async def log_lines(
        self, run_id: str | None = None, *, task: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        """The log rows (logger lines and streamed output) with an id above ``after``, oldest
        first: of the run ``run_id``, or of every run of ``task``. Rows are committed in id
        order, so the last id seen is where the next call picks up: on SQLite because writes
        are serialised; on PostgreSQL, where a sequence hands out ids before commit, because
        run_logs are only written under the store's write lock, which is released after the
        commit is visible."""
        query = (
            select(
                t.run_logs.c.id,
                t.run_logs.c.run_id,
                t.runs.c.task,
                t.run_logs.c.at,
                t.run_logs.c.stream,
                t.run_logs.c.level,
                t.run_logs.c.message,
            )
            .join(t.runs, t.runs.c.id == t.run_logs.c.run_id)
            .where(t.run_logs.c.id > after)
            .order_by(t.run_logs.c.id)
        )
        if run_id is not None:
            query = query.where(t.run_logs.c.run_id == run_id)
        if task is not None:
            query = query.where(t.runs.c.task == task)
        if limit is not None:
            query = query.limit(limit)
        async with self._read() as conn:
            return [
                LogEntry(row.id, row.run_id, row.task, row.at, row.stream, row.level or None, row.message)
                for row in await conn.execute(query)
            ]

    async def last_log_id(self) -> int:
        """The id of the newest log row of any run (0 when there is none): where following
        from now on starts."""
        async with self._read() as conn:
            return int((await conn.execute(select(func.max(t.run_logs.c.id)))).scalar() or 0)
