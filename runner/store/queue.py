"""The queue that takes runs to workers (PostgreSQL only; ``runner/remote.py``): procrastinate's
jobs, written in the transaction that queues their runs, and how the jobs of dead workers are
settled."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.errors import StoreError
from runner.models import RunStatus, TaskType, new_run_id
from runner.processes import HOST, this_process
from runner.records import NO_PROCESS, JobArgs, LogChunk, QueuedRun, RunError, next_attempt
from runner.store import _tables as t
from runner.store._rows import RUN_COLUMNS, UNFINISHED, error_json, log_row, queued_row
from runner.store.connection import StoreBase

JOB_TASK = "runner.run"
"""The queue's name for the one kind of job runner defers: run a workflow."""

_FETCH_PLAN = "plan_cache_mode=force_custom_plan"
"""The setting the queue's fetch function runs with (see ``ensure_queue``)."""


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


class _Taken(Exception):
    """Rolls back a claim on runs that are not all free to take."""


async def defer(conn: AsyncConnection, jobs: list[JobArgs]) -> None:
    """Put ``jobs`` on the queue, in the transaction that queues their runs, and note each
    job's id on its runs (a job carries one workflow: the runs of one invocation)."""
    ids = (
        await conn.execute(
            text(
                "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY("
                "SELECT CAST(ROW(q, :task, 0, NULL, NULL, a, NULL) AS procrastinate_job_to_defer_v1)"
                " FROM unnest(CAST(:queues AS varchar[]), CAST(:args AS jsonb[])) AS u(q, a))))"
            ),
            {
                "task": JOB_TASK,
                "queues": [job.queue for job in jobs],
                "args": [json.dumps(job.to_json()) for job in jobs],
            },
        )
    ).scalars().all()
    await conn.execute(
        text(
            "UPDATE runs SET job_id = j.id FROM procrastinate_jobs j"
            " WHERE j.id = ANY(:ids) AND runs.invocation = j.args->>'invocation'"
        ),
        {"ids": list(ids)},
    )


async def drop_waiting_job(conn: AsyncConnection, job_id: int) -> bool:
    """Take a job off the queue if no worker has taken it yet, and record its queued runs
    cancelled; False (nothing changed) if one has."""
    gone = (
        await conn.execute(
            text("DELETE FROM procrastinate_jobs WHERE id = :id AND status = 'todo' RETURNING id"),
            {"id": job_id},
        )
    ).first()
    if gone is None:
        return False
    error = RunError("Cancelled", "stopped on request before it started")
    await conn.execute(
        update(t.runs)
        .where(t.runs.c.job_id == job_id, t.runs.c.status == RunStatus.QUEUED.value)
        .values(status=RunStatus.CANCELLED.value, finished_at=time.time(), error=error_json(error))
    )
    return True


class QueueStore(StoreBase):
    """Jobs for workers: install the queue, claim a job's runs, cancel a job, settle the jobs
    of dead workers."""

    async def ensure_queue(self) -> None:
        """Install the job queue's tables (procrastinate's schema) in this store, once."""
        if not self._postgres:
            raise StoreError(
                f"runs for workers need a PostgreSQL store (--db postgresql://...); {self.url} is SQLite"
            )
        # Not to_regclass(): it reads the catalog cache, which a wait for the write lock does not
        # refresh, so behind another process installing the schema it still said "none".
        installed = (
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class"
            " WHERE relname = 'procrastinate_jobs' AND pg_catalog.pg_table_is_visible(oid))"
            " AND EXISTS (SELECT FROM pg_catalog.pg_proc WHERE proname = 'procrastinate_fetch_job_v2'"
            f" AND '{_FETCH_PLAN}' = ANY(proconfig))"
        )
        async with self._read() as conn:
            if (await conn.exec_driver_sql(installed)).scalar():
                return
        # Imported here: the optional [postgres] extra, which only a store with workers needs.
        import psycopg
        from procrastinate.schema import SchemaManager

        async with self._write() as conn:
            if not (await conn.exec_driver_sql(installed)).scalar():
                # Straight to psycopg: the script is many statements, with no parameters.
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                try:
                    tables = "SELECT to_regclass('procrastinate_jobs') IS NOT NULL"
                    if not (await (await raw.execute(tables)).fetchone() or (False,))[0]:
                        await raw.execute(SchemaManager.get_schema())
                    # The fetch's plan, cached per connection while the queue was near empty,
                    # scans the whole table once a burst comes (measured: 19-34 runs/s for a
                    # minute, until autovacuum analyzes it): plan each fetch afresh.
                    await raw.execute(
                        "ALTER FUNCTION procrastinate_fetch_job_v2(character varying[], bigint)"
                        f" SET {_FETCH_PLAN.replace('=', ' = ')}"
                    )
                except psycopg.Error as exc:
                    raise StoreError(f"cannot install the job queue in the store at {self.url}: {exc}") from exc

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
        nothing changes."""
        me = this_process()
        try:
            async with self._write() as conn:
                result = await conn.execute(
                    update(t.runs)
                    .where(t.runs.c.id.in_(run_ids), t.runs.c.status == RunStatus.QUEUED.value, t.runs.c.host == "")
                    .values(host=me.host, pid=me.pid, pid_started=me.pid_started, revision=revision, git_commit=git_commit)
                )
                if result.rowcount != len(run_ids):
                    raise _Taken
                if notes:
                    await conn.execute(t.run_logs.insert(), [log_row(note) for note in notes])
        except _Taken:
            return False
        return True

    async def finish_queued(self, run_ids: list[str], status: RunStatus, error: RunError) -> list[str]:
        """End the runs among ``run_ids`` that are still queued, with ``status`` and ``error``;
        their ids."""
        async with self._write() as conn:
            rows = await conn.execute(
                update(t.runs)
                .where(t.runs.c.id.in_(run_ids), t.runs.c.status == RunStatus.QUEUED.value)
                .values(status=status.value, finished_at=time.time(), error=error_json(error))
                .returning(t.runs.c.id)
            )
            return list(rows.scalars())

    async def retry_of(self, run_id: str) -> str | None:
        """The id of the run that retries ``run_id``, if there is one."""
        query = select(t.runs.c.id).where(t.runs.c.parent_id == run_id, t.runs.c.trigger == "retry")
        async with self._read() as conn:
            return (await conn.execute(query)).scalar()

    async def job_id(self, run_id: str) -> int | None:
        """The id of the queue's job that carries a run to a worker; None for a run not sent."""
        async with self._read() as conn:
            return (await conn.execute(select(t.runs.c.job_id).where(t.runs.c.id == run_id))).scalar()

    async def cancel_job(self, job_id: int) -> bool:
        """Cancel the workflow a job carries: at once if no worker has taken it up (its queued
        runs are recorded cancelled; True), else by asking its worker to stop it (False)."""
        async with self._write() as conn:
            if await drop_waiting_job(conn, job_id):
                return True
            await conn.execute(text("SELECT procrastinate_cancel_job_v1(:id, true, false)"), {"id": job_id})
            return False

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
                    # By invocation: with the retries its worker queued, which have no job id.
                    "SELECT DISTINCT j.id, r.pid, r.pid_started FROM procrastinate_jobs j"
                    " JOIN runs r ON r.invocation = j.args->>'invocation'"
                    " WHERE j.status = 'doing' AND j.task_name = :task AND r.host = :host"
                ),
                {"task": JOB_TASK, "host": HOST},
            )
            found.update(job for job, pid, started in here if not is_alive(pid, started))
        return sorted(found)

    async def recover_job(self, job_id: int, left: Callable[[str], int | None]) -> Recovery | None:
        """Take a stalled job off the queue and settle its runs (those it carried, and the
        retries its worker queued for them), in one transaction: never taken up, they are
        queued again as they were; else the unfinished ones are marked interrupted, and each
        that had started gets another attempt (a job of its own) if its task has one left
        (``left(task)``: the task's retries, None if it is gone). None if another process
        settled it."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    text("DELETE FROM procrastinate_jobs WHERE id = :id AND status = 'doing' RETURNING queue_name, args"),
                    {"id": job_id},
                )
            ).first()
            if row is None:
                return None
            args = JobArgs.from_json(row.args, queue=row.queue_name)
            runs = (
                await conn.execute(
                    select(*RUN_COLUMNS, t.runs.c.pgid, t.runs.c.pgid_started).where(
                        # With the retries its worker queued itself: they share the invocation.
                        or_(t.runs.c.id.in_(list(args.runs.values())), t.runs.c.invocation == args.invocation)
                    )
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
                number = next_attempt(RunStatus.INTERRUPTED, run.attempt, left(run.task))
                if number is None:
                    continue
                retry = QueuedRun(
                    id=new_run_id(), task=run.task, type=TaskType(run.type), attempt=number, trigger="retry",
                    parent_id=run.id, invocation="", parameters_json=run.parameters, queued_at=now,
                    scheduled_for=run.scheduled_for, owner=NO_PROCESS, queue=args.queue,
                )
                retry = replace(retry, invocation=retry.id)
                retries.append(retry)
                jobs.append(replace(
                    args, task=run.task, parameters=args.parameters if run.task == args.task else {},
                    with_needs=False, trigger="retry", parent_id=run.id, attempt=number,
                    scheduled_for=run.scheduled_for, invocation=retry.id, runs={run.task: retry.id},
                ))
                retried.append((run.id, retry.id))
            if retries:
                await conn.execute(t.runs.insert(), [queued_row(retry) for retry in retries])
                await defer(conn, jobs)
        groups = [(run.pgid, run.pgid_started) for run in runs if run.id in interrupted and run.pgid is not None and run.host == HOST]
        return Recovery(job_id, interrupted=list(interrupted), retried=retried, groups=groups)
