"""The queue that takes runs to workers (PostgreSQL only; ``runner/remote.py``): installing it,
claiming a job's runs, cancelling a workflow, and settling the jobs of dead workers. The jobs
themselves, and the runs that wait for their needs, are ``jobs.py``'s."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.errors import StoreError
from runner.models import RunStatus, TaskType, new_run_id
from runner.processes import HOST, this_process
from runner.records import NO_PROCESS, Claim, JobArgs, LogChunk, QueuedRun, RunError, next_attempt
from runner.store import _tables as t
from runner.store._rows import RUN_COLUMNS, UNFINISHED, error_json, log_row, queued_row
from runner.store.connection import StoreBase
from runner.store.jobs import JOB_TASK, cancel_invocation, defer, lock_invocations, release

EVENT_TRIGGERS = ("procrastinate_trigger_status_events_insert_v1", "procrastinate_trigger_status_events_update_v1")
"""procrastinate's triggers that log each job's deferral and each change of its status into
``procrastinate_events`` (deleted with the job), for its own admin tools; runner keeps its
history in ``runs`` and reads none of it. Switched off when the queue is installed: they were
about half of the server's time in a worker's fetch (8 jobs: 1.8-2.1 ms with them, 1.1-1.2
without, ``EXPLAIN ANALYZE``), besides a row inserted with each job and two deleted with it.
Its other triggers (the NOTIFY of new jobs and of aborts, an abort's event) stay."""


@dataclass(frozen=True)
class Recovery:
    """How a stalled job was settled (``Store.recover_job``)."""

    job_id: int
    requeued: bool = False  # no worker had taken its runs up: queued again as they were
    interrupted: list[str] = field(default_factory=list)
    retried: list[tuple[str, str]] = field(default_factory=list)  # (interrupted run, its retry)
    # The process groups its interrupted shell runs started on this host (pgid, the start
    # time of its first process): what the tasks may have left running, for the caller to kill.
    groups: list[tuple[int, float | None]] = field(default_factory=list)


async def claim(conn: AsyncConnection, claims: Sequence[Claim]) -> list[str]:
    """Take up the runs of ``claims`` for this process, each claim all of its runs or none; the
    runs of the claims not made (some of their runs taken up already, or ended). Two
    statements for any number of claims: a worker's claims share the recorder's transactions.

    Safe without the store's write lock: the rows are locked first (``FOR UPDATE``, in id
    order, so two claimers of the same runs cannot deadlock), and a claimer that waited for
    another's row lock checks ``status = 'queued' AND host = ''`` again on the committed row
    (READ COMMITTED), so of two only the first takes them.

    (One statement, a CTE that locks, counts and updates, cost the server 1.3-3.3 ms per call
    in the benchmark against 0.3 ms for these two: its cached generic plan scanned ``runs``.)"""
    wanted = sorted({run_id for c in claims for run_id in c.run_ids})
    free = set(
        (
            await conn.execute(
                select(t.runs.c.id)
                # ``status + ''``: no index serves it, so the primary key finds the few runs
                # (statistics taken while no run was queued made runs_status_queued look better).
                .where(t.runs.c.id.in_(wanted), (t.runs.c.status + "") == RunStatus.QUEUED.value, t.runs.c.host == "")
                .order_by(t.runs.c.id)
                .with_for_update()
            )
        ).scalars()
    )
    made = [c for c in claims if free.issuperset(c.run_ids)]
    me = this_process()
    for (revision, git_commit), ids in _by_revision(made).items():
        await conn.execute(
            update(t.runs)
            .where(t.runs.c.id.in_(ids))
            .values(host=me.host, pid=me.pid, pid_started=me.pid_started, revision=revision, git_commit=git_commit)
        )
    return [run_id for c in claims if not free.issuperset(c.run_ids) for run_id in c.run_ids]


def _by_revision(claims: Sequence[Claim]) -> dict[tuple[str | None, str | None], list[str]]:
    found: dict[tuple[str | None, str | None], list[str]] = {}
    for c in claims:
        found.setdefault((c.revision, c.git_commit), []).extend(c.run_ids)
    return found


class QueueStore(StoreBase):
    """Jobs for workers: install the queue, claim a job's runs, cancel a job, settle the jobs
    of dead workers."""

    async def ensure_queue(self) -> None:
        """Install the job queue's tables (procrastinate's schema) in this store, once, with
        its log of job events switched off (``EVENT_TRIGGERS``)."""
        if not self._postgres:
            raise StoreError(
                f"runs for workers need a PostgreSQL store (--db postgresql://...); {self.url} is SQLite"
            )
        if self._queue_ready:
            return
        # Not to_regclass(): it reads the catalog cache, which a wait for the write lock does not
        # refresh, so behind another process installing the schema it still said "none".
        tables = (
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class"
            " WHERE relname = 'procrastinate_jobs' AND pg_catalog.pg_table_is_visible(oid))"
        )
        installed = (
            f"{tables} AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger"
            f" WHERE tgname IN ({', '.join(repr(name) for name in EVENT_TRIGGERS)}) AND tgenabled <> 'D')"
        )
        async with self._read() as conn:
            ready = (await conn.exec_driver_sql(installed)).scalar()
        if not ready:
            # Imported here: the optional [postgres] extra, which only a store with workers needs.
            import psycopg
            from procrastinate.schema import SchemaManager

            async with self._write() as conn:
                # Straight to psycopg: the script is many statements, with no parameters.
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                try:
                    if not (await conn.exec_driver_sql(tables)).scalar():
                        await raw.execute(SchemaManager.get_schema())
                except psycopg.Error as exc:
                    raise StoreError(f"cannot install the job queue in the store at {self.url}: {exc}") from exc
                try:
                    async with raw.transaction():  # a savepoint
                        for name in EVENT_TRIGGERS:
                            await raw.execute(f"ALTER TABLE procrastinate_jobs DISABLE TRIGGER {name}")
                except psycopg.errors.InsufficientPrivilege:
                    pass  # not the owner of a queue another role installed: its events stay logged
        self._queue_ready = True

    async def claim_runs(
        self,
        run_ids: list[str],
        *,
        revision: str | None,
        git_commit: str | None,
        notes: Sequence[LogChunk] = (),
    ) -> bool:
        """Take up a job's queued runs for this process, with ``notes`` for their logs; False if
        they are not all waiting for a worker any more (taken up already, or cancelled): then
        nothing changes. (A worker claims through its recorder, in the batches it writes.)"""
        async with self._write(lock=bool(notes)) as conn:  # log rows keep their commit order
            if await claim(conn, [Claim(tuple(run_ids), revision, git_commit)]):
                return False
            if notes:
                await conn.execute(t.run_logs.insert(), [log_row(note) for note in notes])
        return True

    async def finish_queued(
        self, run_ids: list[str], status: RunStatus, error: RunError, *, release_of: str | None = None
    ) -> list[str]:
        """End the runs among ``run_ids`` that are still queued, with ``status`` and ``error``;
        their ids. With ``release_of`` (their invocation), the runs waiting for them are
        decided in the same transaction (``release``)."""
        async with self._write() as conn:
            if release_of is not None:
                await lock_invocations(conn, [release_of])
            rows = await conn.execute(
                update(t.runs)
                .where(t.runs.c.id.in_(run_ids), t.runs.c.status == RunStatus.QUEUED.value)
                .values(status=status.value, finished_at=time.time(), error=error_json(error))
                .returning(t.runs.c.id)
            )
            ended = list(rows.scalars())
            if release_of is not None and ended:
                await release(conn, [release_of])
            return ended

    async def retry_of(self, run_id: str) -> str | None:
        """The id of the run that retries ``run_id``, if there is one."""
        query = select(t.runs.c.id).where(t.runs.c.parent_id == run_id, t.runs.c.trigger == "retry")
        async with self._read() as conn:
            return (await conn.execute(query)).scalar()

    async def job_id(self, run_id: str) -> int | None:
        """The id of the queue's job that carries a run to a worker; None for a run not sent."""
        async with self._read() as conn:
            return (await conn.execute(select(t.runs.c.job_id).where(t.runs.c.id == run_id))).scalar()

    async def cancel_workflow(self, run_id: str) -> None:
        """Cancel every unfinished run of the workflow ``run_id`` is part of (its invocation), in
        one transaction: those no worker has taken up are recorded cancelled at once (those
        waiting for their needs, and those whose jobs are taken off the queue); the workers
        running the others are asked to stop them (they record them cancelled)."""
        async with self._write() as conn:
            invocation = (await conn.execute(select(t.runs.c.invocation).where(t.runs.c.id == run_id))).scalar()
            if invocation is None:
                return
            await cancel_invocation(conn, invocation)

    async def stalled_jobs(
        self, stale_after: float, is_alive: Callable[[int, float | None], bool]
    ) -> list[int]:
        """Jobs being worked on by a worker that is gone: one whose runs belong to a dead
        process on this host, or whose worker has not beaten its heart for ``stale_after``
        seconds (or was pruned for that)."""
        async with self._read() as conn:
            silent = await conn.execute(
                text(
                    "SELECT j.id FROM procrastinate_jobs j"
                    " LEFT JOIN procrastinate_workers w ON w.id = j.worker_id"
                    " WHERE j.status = 'doing' AND j.task_name = :task"
                    " AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => :stale))"
                ),
                {"task": JOB_TASK, "stale": stale_after},
            )
            found = set(silent.scalars())
            here = await conn.execute(
                text(
                    # By job: the runs of one workflow may be on several workers' jobs.
                    "SELECT DISTINCT j.id, r.pid, r.pid_started FROM procrastinate_jobs j"
                    " JOIN runs r ON r.job_id = j.id"
                    " WHERE j.status = 'doing' AND j.task_name = :task AND r.host = :host"
                ),
                {"task": JOB_TASK, "host": HOST},
            )
            found.update(job for job, pid, started in here if not is_alive(pid, started))
        return sorted(found)

    async def recover_job(self, job_id: int, left: Callable[[str], int | None]) -> Recovery | None:
        """Take a stalled job off the queue and settle its runs (the one it carried, and the
        retries its worker queued for it), in one transaction: never taken up, they are queued
        again as they were; else the unfinished ones are marked interrupted, and each that had
        started gets another attempt (a job of its own) if its task has one left (``left(task)``:
        the task's retries, None if it is gone) and no one asked to cancel it; the runs of its
        workflow waiting for one that ends so are decided (``release``). None if another
        process settled it."""
        async with self._write() as conn:
            invocation = (
                await conn.execute(
                    text("SELECT args->>'invocation' FROM procrastinate_jobs WHERE id = :id AND status = 'doing'"),
                    {"id": job_id},
                )
            ).scalar()
            if invocation is None:
                return None
            await lock_invocations(conn, [invocation])  # before the job's row: see lock_invocations
            row = (
                await conn.execute(
                    text("DELETE FROM procrastinate_jobs WHERE id = :id AND status = 'doing' RETURNING queue_name, args"),
                    {"id": job_id},
                )
            ).first()
            if row is None:
                return None
            args = JobArgs.from_json(row.args, queue=row.queue_name)
            # Locked as they are read: a worker's claims, starts and ends are written without
            # the store's write lock (connection.py), so without the row locks one could change
            # a run between this read and the writes below that decide on it (a run that ended
            # meanwhile would get a retry); with them, it waits for this transaction, and then
            # finds the run final (or, requeued, taken up by the new job's worker: skipped).
            runs = (
                await conn.execute(
                    select(*RUN_COLUMNS, t.runs.c.pgid, t.runs.c.pgid_started, t.runs.c.cancel_requested_at)
                    # With the retries its worker queued itself: they have its job's id.
                    .where(or_(t.runs.c.id.in_(list(args.runs.values())), t.runs.c.job_id == job_id))
                    .order_by(t.runs.c.id)  # the order claims lock runs in
                    .with_for_update(of=t.runs)
                )
            ).all()
            if all(run.host == "" for run in runs):
                await defer(conn, [args])
                return Recovery(job_id, requeued=True)
            now = time.time()
            error = RunError("Interrupted", "the worker running it died")
            interrupted = (
                await conn.execute(
                    update(t.runs)
                    .where(t.runs.c.id.in_([run.id for run in runs]), t.runs.c.status.in_(UNFINISHED))
                    .values(status=RunStatus.INTERRUPTED.value, finished_at=now, error=error_json(error))
                    .returning(t.runs.c.id)
                )
            ).scalars().all()
            retried: list[tuple[str, str]] = []
            jobs: list[JobArgs] = []
            retries: list[QueuedRun] = []
            for run in runs:
                if run.started_at is None or run.status not in (*UNFINISHED, RunStatus.INTERRUPTED.value):
                    continue
                if run.cancel_requested_at is not None:  # asked to stop: not to go on elsewhere
                    continue
                number = next_attempt(RunStatus.INTERRUPTED, run.attempt, left(run.task))
                if number is None:
                    continue
                # In its workflow's invocation: the runs waiting for this one wait for its retry.
                retry = QueuedRun(
                    id=new_run_id(), task=run.task, type=TaskType(run.type), attempt=number, trigger="retry",
                    parent_id=run.id, invocation=args.invocation, parameters_json=run.parameters, queued_at=now,
                    scheduled_for=run.scheduled_for, owner=NO_PROCESS, queue=args.queue,
                )
                retries.append(retry)
                jobs.append(replace(
                    args, task=run.task, parameters=args.parameters if run.task == args.task else {},
                    with_needs=False, trigger="retry", parent_id=run.id, attempt=number,
                    scheduled_for=run.scheduled_for, runs={run.task: retry.id},
                ))
                retried.append((run.id, retry.id))
            if retries:
                await conn.execute(t.runs.insert(), [queued_row(retry) for retry in retries])
                await defer(conn, jobs)
            if interrupted:
                await release(conn, [args.invocation])
        groups = [(run.pgid, run.pgid_started) for run in runs if run.id in interrupted and run.pgid is not None and run.host == HOST]
        return Recovery(job_id, interrupted=list(interrupted), retried=retried, groups=groups)
