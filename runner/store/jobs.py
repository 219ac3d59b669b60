"""The jobs that take runs to workers (PostgreSQL only): deferred onto procrastinate's queue in
the transaction that queues their runs, held back while their runs wait for their needs, and
released (or their runs skipped) in the transaction that ends the last of those needs.

A workflow sent to workers has a job per run (``Workflow.send``). Those of runs without needs
in the workflow go on the queue at once; the others wait in ``waiting_jobs``. Whoever writes
the final end of a run of the workflow (a worker's batch, a refused job, a dead worker's
recovery, a cancel) decides in the same transaction on the waiting runs all of whose needs
are final now (``release``), holding the workflow's lock (``lock_invocations``): so a need
never ends without the runs that wait for it being queued or skipped, whatever process dies
between two statements.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Collection, Sequence
from dataclasses import replace

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.models import RunStatus
from runner.records import JobArgs, RunError
from runner.store import _tables as t
from runner.store._rows import UNFINISHED, error_json

JOB_TASK = "runner.run"
"""The queue's name for the one kind of job runner defers: run a run of a workflow."""

INVOCATION_LOCKS = 0x72756E6E  # "runn": the first key of the advisory locks of invocations
"""The namespace of ``lock_invocations``' two-key advisory locks (the store's write lock has a
key of one bigint, a space of its own)."""


def invocation_key(invocation: str) -> int:
    """The second key of an invocation's lock."""
    return zlib.crc32(invocation.encode()) - 2**31  # an int4, as the two-key form takes


async def lock_invocations(conn: AsyncConnection, invocations: Collection[str]) -> None:
    """Hold the locks of these invocations (workflows) until the transaction ends: whoever
    decides on a workflow's runs that wait for their needs (an end that releases them, a
    cancel, a dead worker's recovery) holds its lock first, so those decisions are made one at
    a time, each seeing the ends the others committed.

    Without it, two needs of one run ending at once on two workers would each see the other
    still running (neither transaction sees the other's uncommitted end) and neither would
    queue the run; with it, the second waits for the first to commit, then (READ COMMITTED:
    each statement sees what was committed before it began) sees both ends, and a run the
    first decided no longer waits (its ``waiting_jobs`` row is gone), so none is queued twice.
    A lock of the workflow's, taken first, rather than row locks on the waiting runs, taken
    when deciding: those would work for two ends, but be taken after each end's own row lock,
    while a cancel or a dead worker's recovery must hold the workflow before they lock runs
    (what they decide depends on all of them), and the two orders could wait for each other.
    So everyone takes the same order: the store's write lock (when the transaction takes it),
    the workflows' locks in key order, then rows."""
    keys = sorted({invocation_key(invocation) for invocation in invocations})
    if keys:
        await conn.execute(
            text("SELECT count(pg_advisory_xact_lock(:space, k)) FROM unnest(CAST(:keys AS integer[])) AS k"),
            {"space": INVOCATION_LOCKS, "keys": keys},
        )


async def defer(conn: AsyncConnection, jobs: Sequence[JobArgs]) -> None:
    """Put ``jobs`` on the queue, in the transaction that queues their runs, and note each
    job's id on its runs; a job whose run waits for its needs is held in ``waiting_jobs``
    until they are final (``release``)."""
    waiting = [job for job in jobs if job.needs]
    if waiting:
        await conn.execute(
            t.waiting_jobs.insert(),
            [
                {
                    "run_id": job.target_run_id, "invocation": job.invocation, "needs": json.dumps(job.needs),
                    "args": json.dumps(job.to_json()),
                }
                for job in waiting
            ],
        )
    ready = [job for job in jobs if not job.needs]
    if not ready:
        return
    ids = (
        await conn.execute(
            text(
                "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY("
                "SELECT CAST(ROW(q, :task, 0, NULL, NULL, a, NULL) AS procrastinate_job_to_defer_v1)"
                " FROM unnest(CAST(:queues AS varchar[]), CAST(:args AS jsonb[])) AS u(q, a))))"
            ),
            {
                "task": JOB_TASK,
                "queues": [job.queue for job in ready],
                "args": [json.dumps(job.to_json()) for job in ready],
            },
        )
    ).scalars().all()
    await conn.execute(
        text(
            "UPDATE runs SET job_id = j.id FROM procrastinate_jobs j, jsonb_each_text(j.args->'runs') AS r(task, id)"
            " WHERE j.id = ANY(:ids) AND runs.id = r.id"
        ),
        {"ids": list(ids)},
    )


async def delete_jobs(conn: AsyncConnection, job_ids: Collection[int]) -> None:
    """Take the jobs a worker is done with off the queue: all their runs ended, in transactions
    committed before this one, so a worker that dies in between leaves a job whose runs are all
    final, which its recovery only deletes. Rows of another's recovery are waited for, then
    found gone. No store write lock: rows by primary key, locked in id order."""
    await conn.exec_driver_sql(DELETE_JOBS_PG, {"ids": sorted(job_ids)})


DELETE_JOBS_PG = "DELETE FROM procrastinate_jobs WHERE id = ANY(%(ids)s) AND status = 'doing'"
"""``delete_jobs``' statement, as psycopg takes it."""


async def lock_waiting(conn: AsyncConnection, invocations: Collection[str]) -> list[str]:
    """The invocations among these that have runs waiting for their needs, locked
    (``lock_invocations``); to call before any row lock. One read, without a lock, for those
    that have none (a workflow of one run, most often): a run is put to wait only when its
    workflow is sent, before any of its runs can end, so one that has none now never will."""
    found = (
        await conn.execute(
            select(t.waiting_jobs.c.invocation).distinct().where(t.waiting_jobs.c.invocation.in_(list(invocations)))
        )
    ).scalars().all()
    await lock_invocations(conn, found)
    return sorted(found)


async def release(conn: AsyncConnection, invocations: Collection[str]) -> None:
    """Decide the runs of these invocations that wait for their needs and whose needs' runs
    are all final now: queue the job of each whose needs all succeeded, with the ids of those
    runs; record ``skipped`` each one a need of which did not, with the error the engine
    writes when it skips a run (``Workflow._skip``), and so on down to its own dependents.
    The caller holds the invocations' locks (``lock_invocations``).

    A need's run is its task's last attempt in the invocation: one that failed with retries
    left is followed by its retry, queued in the transaction that wrote its end, so a run is
    decided only when the last attempt of each need is final."""
    if not invocations:
        return
    # First, on the server, the workflows with a waiting run none of whose needs has a run
    # unfinished: most ends in a fan leave what waits for it waiting, and reading every run
    # of the workflow each time (a fan of 1,000: 1,000 rows an end) is then work for nothing.
    ripe = (await conn.execute(_RIPE, {"invocations": list(invocations)})).scalars().all()
    if not ripe:
        return
    waiting: dict[str, dict[str, tuple[list[str], JobArgs]]] = {}  # invocation -> run id -> (needs, job)
    for run_id, invocation, needs, args in await conn.execute(
        select(t.waiting_jobs.c.run_id, t.waiting_jobs.c.invocation, t.waiting_jobs.c.needs, t.waiting_jobs.c.args)
        .where(t.waiting_jobs.c.invocation.in_(ripe))
    ):
        waiting.setdefault(invocation, {})[run_id] = (json.loads(needs), JobArgs.from_json(json.loads(args)))
    if not waiting:
        return
    last: dict[tuple[str, str], tuple[int, str, str]] = {}  # (invocation, task) -> (attempt, run id, status)
    for run_id, invocation, task, status, attempt in await conn.execute(
        select(t.runs.c.id, t.runs.c.invocation, t.runs.c.task, t.runs.c.status, t.runs.c.attempt)
        .where(t.runs.c.invocation.in_(list(waiting)))
    ):
        key = (invocation, task)
        if key not in last or (attempt, run_id) > last[key][:2]:
            last[key] = (attempt, run_id, status)
    ready: list[JobArgs] = []
    skipped: dict[str, str] = {}  # run id -> why
    decided: list[str] = []
    for invocation, undecided in waiting.items():
        changed = True
        while changed:  # a skip decides the runs that wait for the one skipped
            changed = False
            for run_id, (needs, job) in list(undecided.items()):
                ends = {need: last[invocation, need] for need in needs if (invocation, need) in last}
                if len(ends) < len(needs) or any(status in UNFINISHED for _, _, status in ends.values()):
                    continue
                del undecided[run_id]
                decided.append(run_id)
                changed = True
                blocked = [f"{need} {status}" for need, (_, _, status) in ends.items() if status != _SUCCEEDED]
                if blocked:
                    skipped[run_id] = f"a need did not succeed: {', '.join(blocked)}"
                    last[invocation, job.task] = (job.attempt, run_id, RunStatus.SKIPPED.value)
                else:
                    ready.append(replace(job, needs=(), upstream={need: end[1] for need, end in ends.items()}))
    if not decided:
        return
    await conn.execute(t.waiting_jobs.delete().where(t.waiting_jobs.c.run_id.in_(decided)))
    if skipped:
        now = time.time()
        await conn.execute(
            update(t.runs)
            .where(t.runs.c.id == bindparam("b_id"), t.runs.c.status == RunStatus.QUEUED.value)
            .values(status=RunStatus.SKIPPED.value, finished_at=now, error=bindparam("b_error")),
            [{"b_id": run_id, "b_error": error_json(RunError("Skipped", why))} for run_id, why in skipped.items()],
        )
    if ready:
        await defer(conn, ready)


_RIPE = text(
    "SELECT DISTINCT w.invocation FROM waiting_jobs w WHERE w.invocation = ANY(:invocations) AND NOT EXISTS ("
    " SELECT FROM runs r WHERE r.invocation = w.invocation AND r.status IN ('queued', 'running')"
    " AND r.task IN (SELECT jsonb_array_elements_text(CAST(w.needs AS jsonb))))"
)
"""The invocations among ``:invocations`` with a waiting run whose needs' runs are all final (a
run's retry is written with its end, so a need with no unfinished run has a final last attempt)."""


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
    await conn.execute(
        update(t.runs)
        .where(t.runs.c.job_id == job_id, t.runs.c.status == RunStatus.QUEUED.value)
        .values(status=RunStatus.CANCELLED.value, finished_at=time.time(), error=error_json(_NOT_STARTED))
    )
    return True


_NOT_STARTED = RunError("Cancelled", "stopped on request before it started")
_SUCCEEDED = RunStatus.SUCCEEDED.value


async def cancel_waiting(conn: AsyncConnection, run_id: str, invocation: str) -> bool:
    """Record a run sent to workers that none has taken up yet cancelled: one that waits for
    its needs, or whose job is still on the queue (taken off it); the runs waiting for it are
    then decided as after any end. False (nothing changed) if a worker took it up meanwhile."""
    await lock_invocations(conn, [invocation])
    held = (
        await conn.execute(t.waiting_jobs.delete().where(t.waiting_jobs.c.run_id == run_id).returning(t.waiting_jobs.c.run_id))
    ).first()
    if held is not None:
        await conn.execute(
            update(t.runs)
            .where(t.runs.c.id == run_id, t.runs.c.status == RunStatus.QUEUED.value)
            .values(status=RunStatus.CANCELLED.value, finished_at=time.time(), error=error_json(_NOT_STARTED))
        )
    else:
        # Read again under the lock: released meanwhile, it has a job now.
        job_id = (await conn.execute(select(t.runs.c.job_id).where(t.runs.c.id == run_id))).scalar()
        if job_id is None or not await drop_waiting_job(conn, job_id):
            return False
    await release(conn, [invocation])
    return True


async def cancel_invocation(conn: AsyncConnection, invocation: str) -> None:
    """Cancel every unfinished run of a workflow sent to workers: those waiting for their needs
    and those whose jobs are still on the queue are recorded cancelled; the workers that took
    the others up are asked to stop them (procrastinate's abort)."""
    await lock_invocations(conn, [invocation])
    held = (
        await conn.execute(
            t.waiting_jobs.delete().where(t.waiting_jobs.c.invocation == invocation).returning(t.waiting_jobs.c.run_id)
        )
    ).scalars().all()
    if held:
        await conn.execute(
            update(t.runs)
            .where(t.runs.c.id.in_(held), t.runs.c.status == RunStatus.QUEUED.value)
            .values(status=RunStatus.CANCELLED.value, finished_at=time.time(), error=error_json(_NOT_STARTED))
        )
    jobs = (
        await conn.execute(
            select(t.runs.c.job_id).distinct()
            .where(t.runs.c.invocation == invocation, t.runs.c.status.in_(UNFINISHED), t.runs.c.job_id.is_not(None))
            .order_by(t.runs.c.job_id)
        )
    ).scalars().all()
    for job_id in jobs:
        if not await drop_waiting_job(conn, job_id):
            await conn.execute(text("SELECT procrastinate_cancel_job_v1(:id, true, false)"), {"id": job_id})
    # The rest are on workers: asked to stop as `runner cancel` asks (their workers look for it
    # too), and not retried elsewhere should their worker die meanwhile (``recover_job``).
    await conn.execute(
        update(t.runs)
        .where(t.runs.c.invocation == invocation, t.runs.c.status.in_(UNFINISHED))
        .values(cancel_requested_at=time.time())
    )
