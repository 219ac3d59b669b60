"""Retention: old finished runs deleted with their log lines, in short paced transactions."""

from __future__ import annotations

import time
from typing import Any

import anyio
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.models import RunStatus
from runner.store import _tables as t
from runner.store._rows import UNFINISHED
from runner.store.connection import StoreBase


class RetentionStore(StoreBase):
    """``prune_runs`` and the pages of candidates it goes through."""

    PRUNE_BATCH = 500  # runs per write transaction, at most
    PRUNE_TRANSACTION = 0.02  # seconds a write transaction should take: batches shrink to fit
    PRUNE_PAGE = 500  # candidate rows read per query

    async def prune_runs(
        self, *, older_than: float | None, keep_per_task: int | None, dry_run: bool = False
    ) -> int:
        """Delete old finished runs with their log lines, so the store does not grow without
        bound; return how many runs were (with ``dry_run``, would be) deleted.

        A run is deleted when it is finished and either ended (or, never started, was queued)
        more than ``older_than`` seconds ago, or is not among the newest ``keep_per_task`` runs
        of its task. None or 0 turns either part off. Queued and running runs always stay, and
        so does each task's latest succeeded run: it stands in for a need's result when a task
        runs without its needs.

        Deletes go in transactions of at most ``PRUNE_BATCH`` runs, fewer while they take
        longer than ``PRUNE_TRANSACTION`` (see ``_Pace``), each followed by a pause as long as
        it took, so the write lock is free at least half the time and other writers (running
        tasks' records) get in between. Runs past the age limit are deleted oldest first, which
        keeps each batch on few pages.
        """
        if (older_than or 0) < 0 or (keep_per_task or 0) < 0:
            raise ValueError("older_than and keep_per_task must not be negative")
        cutoff = time.time() - older_than if older_than else None
        keep = keep_per_task or None
        pruned = 0
        pace = _Pace(self.PRUNE_BATCH, self.PRUNE_TRANSACTION)
        if cutoff is not None:
            latest: dict[str, str | None] = {}
            after: tuple[float, str] | None = None
            while True:
                async with self._read() as conn:
                    rows = await self._expired_page(conn, cutoff, after)
                    await self._remember_latest_succeeded(conn, rows, latest)
                if not rows:
                    break
                after = (rows[-1].queued_at, rows[-1].id)
                ids = [row.id for row in rows if row.id != latest.get(row.task)]
                pruned += len(ids) if dry_run else await self._delete_runs(ids, pace)
        if keep is not None:
            async with self._read() as conn:
                bounds = await self._keep_bounds(conn, keep)
            for task, bound in bounds.items():
                pruned += await self._prune_surplus(task, bound, cutoff, pace, dry_run)
        return pruned

    async def _expired_page(
        self, conn: AsyncConnection, cutoff: float, after: tuple[float, str] | None
    ) -> list[Any]:
        """Finished runs that ended before ``cutoff``, oldest first, from after ``after``."""
        runs = t.runs.c
        query = (
            select(runs.id, runs.task, runs.status, runs.queued_at)
            .where(
                runs.queued_at < cutoff,  # implied by the next line, but it is what the index serves
                func.coalesce(runs.finished_at, runs.queued_at) < cutoff,
                runs.status.not_in(UNFINISHED),
                *_after(after),
            )
            .order_by(runs.queued_at, runs.id)
            .limit(self.PRUNE_PAGE)
        )
        return list(await conn.execute(query))

    async def _remember_latest_succeeded(
        self, conn: AsyncConnection, rows: list[Any], latest: dict[str, str | None]
    ) -> None:
        """Add to ``latest`` the id of the latest succeeded run of each task that has a
        succeeded run among ``rows`` and is not in it yet."""
        for task in {row.task for row in rows if row.status == RunStatus.SUCCEEDED.value} - set(latest):
            latest[task] = await self._latest_succeeded(conn, task)

    async def _latest_succeeded(self, conn: AsyncConnection, task: str) -> str | None:
        runs = t.runs.c
        return (
            await conn.execute(
                select(runs.id)
                .where(runs.task == task, runs.status == RunStatus.SUCCEEDED.value)
                .order_by(runs.queued_at.desc(), runs.id.desc())
                .limit(1)
            )
        ).scalar()

    async def _keep_bounds(self, conn: AsyncConnection, keep: int) -> dict[str, tuple[float, str]]:
        """For each task with more than ``keep`` runs, the (queued_at, id) of its ``keep``-th
        newest run: the runs before it are not among the newest ``keep``."""
        runs = t.runs.c
        crowded = await conn.execute(
            select(runs.task).group_by(runs.task).having(func.count() > keep).order_by(runs.task)
        )
        bounds = {}
        for task in list(crowded.scalars()):
            row = (
                await conn.execute(
                    select(runs.queued_at, runs.id)
                    .where(runs.task == task)
                    .order_by(runs.queued_at.desc(), runs.id.desc())
                    .offset(keep - 1)
                    .limit(1)
                )
            ).one()
            bounds[task] = (row.queued_at, row.id)
        return bounds

    async def _prune_surplus(
        self, task: str, bound: tuple[float, str], cutoff: float | None, pace: _Pace, dry_run: bool
    ) -> int:
        """Prune the finished runs of ``task`` older than ``bound`` (those that ended before
        ``cutoff`` were the age limit's)."""
        runs = t.runs.c
        pruned = 0
        after: tuple[float, str] | None = None
        while True:
            async with self._read() as conn:
                latest = await self._latest_succeeded(conn, task)
                query = (
                    select(runs.id, runs.queued_at)
                    .where(
                        runs.task == task,
                        runs.queued_at <= bound[0],
                        runs.status.not_in(UNFINISHED),
                        *_after(after),
                    )
                    .order_by(runs.queued_at, runs.id)
                    .limit(self.PRUNE_PAGE)
                )
                if cutoff is not None:
                    query = query.where(func.coalesce(runs.finished_at, runs.queued_at) >= cutoff)
                rows = list(await conn.execute(query))
            if not rows:
                return pruned
            after = (rows[-1].queued_at, rows[-1].id)
            ids = [row.id for row in rows if (row.queued_at, row.id) < bound and row.id != latest]
            pruned += len(ids) if dry_run else await self._delete_runs(ids, pace)
            if after >= bound:
                return pruned

    async def _delete_runs(self, ids: list[str], pace: _Pace) -> int:
        """Delete the finished runs among ``ids`` and their log lines, in paced batches."""
        runs = t.runs.c
        deleted = 0
        while ids:
            batch, ids = ids[: pace.size], ids[pace.size :]
            await pace.wait()
            started = time.monotonic()
            async with self._write() as conn:
                finished = select(runs.id).where(runs.id.in_(batch), runs.status.not_in(UNFINISHED))
                await conn.execute(t.run_logs.delete().where(t.run_logs.c.run_id.in_(finished)))
                result = await conn.execute(
                    t.runs.delete().where(runs.id.in_(batch), runs.status.not_in(UNFINISHED))
                )
                deleted += result.rowcount
            pace.took(time.monotonic() - started)
        return deleted


def _after(key: tuple[float, str] | None) -> list[Any]:
    """Conditions for the rows after ``key`` in (queued_at, id) order (keyset paging)."""
    if key is None:
        return []
    return [t.runs.c.queued_at >= key[0], or_(t.runs.c.queued_at > key[0], t.runs.c.id > key[1])]


class _Pace:
    """Sizes the batches of a long series of write transactions and spaces them out.

    The first batch is small (a run can hold megabytes of output), and each next one doubles
    while they take under half of ``target``, up to ``most``; one that took longer shrinks the
    next in proportion. Before each batch, wait as long as the previous one took: SQLite has
    no queue for its write lock, and a writer waiting in its busy handler only retries now and
    then, so back-to-back transactions would keep it out.
    """

    FIRST = 16

    def __init__(self, most: int, target: float) -> None:
        self.size = min(most, self.FIRST)
        self.most = most
        self.target = target
        self.last = 0.0

    def took(self, seconds: float) -> None:
        self.last = seconds
        if seconds > self.target:
            self.size = max(1, min(self.size // 2, int(self.size * self.target / seconds)))
        elif seconds < self.target / 2:
            self.size = min(self.most, self.size * 2)

    async def wait(self) -> None:
        await anyio.sleep(self.last)
