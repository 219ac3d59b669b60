"""The store's part in sending runs to workers (PostgreSQL only): a run's job is committed with
it, a claim succeeds once, a cancel before the claim ends the runs, a dead worker's job is
settled once, and a final status is written once."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pg import OF_THIS_DATABASE, pg_server, pg_url  # noqa: F401

from runner.errors import StoreError
from runner.models import RunStatus, TaskType
from runner.processes import HOST
from runner.records import (
    NO_PROCESS,
    Claim,
    JobArgs,
    LogChunk,
    QueuedRun,
    RunBatch,
    RunEnd,
    RunError,
)
from runner.store import PG_WRITE_LOCK, Store, database_url, open_store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:  # noqa: F811
    async with open_store(pg_url) as opened:
        await opened.ensure_queue()
        yield opened


async def jobs(store: Store) -> list[tuple[int, str, str, dict[str, Any]]]:
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, status, queue_name, args FROM procrastinate_jobs ORDER BY id"))
        return [(row.id, row.status, row.queue_name, row.args) for row in rows]


async def take(store: Store, job_id: int, *, beating: bool = True) -> None:
    """What a worker does on fetching a job: mark it doing, as this worker's (one whose heart
    beats, or one that was pruned for not beating: ``worker_id`` NULL)."""
    from sqlalchemy import text

    async with store.engine.begin() as conn:
        worker = None
        if beating:
            insert = text("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now()) RETURNING id")
            worker = (await conn.execute(insert)).scalar()
        await conn.execute(
            text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w WHERE id = :id"), {"w": worker, "id": job_id}
        )


def unowned(
    run_id: str, task: str = "a", invocation: str = "inv", *, parent_id: str | None = None, attempt: int = 1,
    trigger: str = "cli",
) -> QueuedRun:
    return QueuedRun(
        id=run_id, task=task, type=TaskType.SHELL, attempt=attempt, trigger=trigger, parent_id=parent_id,
        invocation=invocation, parameters_json="{}", queued_at=time.time(), owner=NO_PROCESS, queue="default",
    )


def job(*run_ids: str, task: str = "a", invocation: str = "inv", queue: str = "default") -> JobArgs:
    return JobArgs(
        task=task, parameters={"x": 1}, with_needs=True, trigger="cli", parent_id=None, attempt=1,
        scheduled_for=None, invocation=invocation,
        runs={f"t{i}" if i else task: run_id for i, run_id in enumerate(run_ids)}, revision="abc", queue=queue,
    )


async def send(store: Store, *run_ids: str, task: str = "a", invocation: str = "inv") -> int:
    await store.write_runs(
        RunBatch(inserts=[unowned(r, task, invocation) for r in run_ids], jobs=[job(*run_ids, task=task, invocation=invocation)])
    )
    job_id = await store.job_id(run_ids[0])
    assert job_id is not None
    return job_id


async def test_the_queue_is_installed_once_even_by_several_processes_at_once(pg_url: str) -> None:  # noqa: F811
    async def open_and_install() -> None:
        async with open_store(pg_url) as opened:
            await opened.ensure_queue()

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(open_and_install)
    async with open_store(pg_url) as opened:
        await opened.ensure_queue()
        assert await jobs(opened) == []


async def test_a_sqlite_store_has_no_queue(tmp_path: Path) -> None:
    async with open_store(database_url(tmp_path / "runner.db")) as sqlite:
        with pytest.raises(StoreError, match="need a PostgreSQL store"):
            await sqlite.ensure_queue()


async def test_runs_and_their_job_are_committed_together(store: Store) -> None:
    job_id = await send(store, "r1", "r2")
    [(found, status, queue, args)] = await jobs(store)
    assert (found, status, queue) == (job_id, "todo", "default")
    assert args["runs"] == {"a": "r1", "t1": "r2"} and args["parameters"] == {"x": 1}
    assert await store.job_id("r2") == job_id
    run = await store.run("r1")
    assert (run.status, run.host, run.queue) == (RunStatus.QUEUED, None, "default")

    with pytest.raises(StoreError):  # a failed batch leaves neither
        await store.write_runs(RunBatch(inserts=[unowned("r1", invocation="other")], jobs=[job("r1", invocation="other")]))
    assert len(await jobs(store)) == 1


async def test_runs_are_claimed_once(store: Store) -> None:
    await send(store, "r1", "r2")
    note = LogChunk("r1", time.time(), "log", "warning", "revisions differ")
    assert await store.claim_runs(["r1", "r2"], revision="abc", git_commit="c0ffee", notes=[note])
    assert not await store.claim_runs(["r1", "r2"], revision="abc", git_commit=None)
    run = await store.run("r1")
    assert (run.host, run.revision, run.git_commit) == (HOST, "abc", "c0ffee")
    assert [line.message for line in run.logs] == ["revisions differ"]


async def test_a_claim_of_runs_not_all_waiting_changes_nothing(store: Store) -> None:
    await send(store, "r1", "r2")
    assert await store.finish_queued(["r2"], RunStatus.FAILED, RunError("X", "no")) == ["r2"]
    assert not await store.claim_runs(["r1", "r2"], revision=None, git_commit=None)
    assert (await store.run("r1")).host is None


async def test_a_cancel_before_a_worker_takes_the_job_ends_its_runs(store: Store) -> None:
    await send(store, "r1", "r2")
    await store.cancel_workflow("r2")
    assert {(await store.run(r)).status for r in ("r1", "r2")} == {RunStatus.CANCELLED}
    assert await jobs(store) == []
    assert not await store.claim_runs(["r1", "r2"], revision=None, git_commit=None)


async def test_a_cancel_of_a_job_being_worked_on_asks_its_worker_to_stop(store: Store) -> None:
    job_id = await send(store, "r1")
    await take(store, job_id)
    await store.cancel_workflow("r1")
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        aborting = (await conn.execute(text("SELECT abort_requested FROM procrastinate_jobs WHERE id = :id"), {"id": job_id})).scalar()
    assert aborting is True
    assert (await store.run("r1")).status is RunStatus.QUEUED  # the worker records how it ended


def dead(_pid: int, _started: float | None) -> bool:
    """``is_alive`` for a host where every process is gone."""
    return False


async def test_a_job_no_worker_claimed_is_queued_again_as_it_was(store: Store) -> None:
    job_id = await send(store, "r1")
    await take(store, job_id, beating=False)
    assert await store.stalled_jobs(15.0, dead) == [job_id]
    recovery = await store.recover_job(job_id, lambda task: 1)
    assert recovery is not None and recovery.requeued
    [(again, status, _, args)] = await jobs(store)
    assert again != job_id and status == "todo" and args["runs"] == {"a": "r1"}
    assert await store.job_id("r1") == again
    assert (await store.run("r1")).status is RunStatus.QUEUED


async def test_a_dead_workers_runs_are_interrupted_and_retried_once(store: Store) -> None:
    job_id = await send(store, "r1", "r2")
    await take(store, job_id)
    assert await store.claim_runs(["r1", "r2"], revision="abc", git_commit=None)
    await store.write_runs(RunBatch(starts=[("r1", time.time())]))  # r2 never started

    settled = [await store.recover_job(job_id, lambda task: 1 if task == "a" else None) for _ in range(2)]
    assert settled[1] is None, "a second process finds nothing left to settle"
    recovery = settled[0]
    assert recovery is not None and sorted(recovery.interrupted) == ["r1", "r2"]
    [(interrupted, retry)] = recovery.retried
    assert interrupted == "r1"
    assert {(await store.run(r)).status for r in ("r1", "r2")} == {RunStatus.INTERRUPTED}
    again = await store.run(retry)
    assert (again.status, again.attempt, again.trigger, again.parent_id, again.queue) == (
        RunStatus.QUEUED, 2, "retry", "r1", "default",
    )
    assert await store.retry_of("r1") == retry
    [(_, status, _, args)] = await jobs(store)
    assert status == "todo"
    assert (args["runs"], args["with_needs"], args["attempt"], args["parameters"]) == ({"a": retry}, False, 2, {"x": 1})


async def test_a_final_status_is_written_once(store: Store) -> None:
    job_id = await send(store, "r1")
    await take(store, job_id)
    assert await store.claim_runs(["r1"], revision=None, git_commit=None)
    await store.write_runs(RunBatch(starts=[("r1", time.time())]))
    await store.recover_job(job_id, lambda task: None)
    # The worker was not dead after all: its late start and end do not change the record, and
    # the retry it queues with its end (the run failed) is not written: one is queued already.
    written = await store.write_runs(
        RunBatch(
            starts=[("r1", time.time())],
            finishes=[RunEnd("r1", RunStatus.FAILED, time.time())],
            retries=[unowned("r1-retry", parent_id="r1", attempt=2, trigger="retry")],
        )
    )
    assert written.dropped_retries == ["r1-retry"]
    run = await store.run("r1")
    assert run.status is RunStatus.INTERRUPTED
    assert run.error is not None and "worker" in run.error["message"]
    assert await store.retry_of("r1") is None


async def test_a_retry_is_written_with_the_end_that_queues_it(store: Store) -> None:
    await store.write_runs(RunBatch(inserts=[unowned("r1")]))
    written = await store.write_runs(
        RunBatch(
            finishes=[RunEnd("r1", RunStatus.FAILED, time.time())],
            retries=[unowned("r2", parent_id="r1", attempt=2, trigger="retry")],
        )
    )
    assert written.dropped_retries == []
    assert await store.retry_of("r1") == "r2"


async def test_a_silent_worker_is_found_by_its_heartbeat(store: Store) -> None:
    from sqlalchemy import text

    job_id = await send(store, "r1")
    await take(store, job_id)
    assert await store.stalled_jobs(15.0, dead) == []
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '20 seconds'"))
    assert await store.stalled_jobs(15.0, dead) == [job_id]


async def test_a_claimed_job_of_a_dead_process_on_this_host_is_found_at_once(store: Store) -> None:
    job_id = await send(store, "r1")
    await take(store, job_id)
    assert await store.claim_runs(["r1"], revision=None, git_commit=None)  # by this process

    def alive(pid: int, _started: float | None) -> bool:
        return pid == os.getpid()

    assert await store.stalled_jobs(3600.0, alive) == []
    assert await store.stalled_jobs(3600.0, dead) == [job_id]



# -- claims, starts and ends without the store's write lock ----------------------------------------


@asynccontextmanager
async def holding(store: Store, sql: str) -> AsyncIterator[None]:
    """A transaction of another client that has run ``sql`` (taking a lock) and is still open;
    committed when the block ends."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(store.conninfo()) as conn:
        await conn.execute(sql)
        yield
        await conn.commit()


async def waiting_for_locks(store: Store, count: int) -> None:
    """Return once ``count`` transactions wait for a lock."""
    from sqlalchemy import text

    with anyio.fail_after(5):
        while True:
            async with store.engine.connect() as conn:
                waiting = text(f"SELECT count(*) FROM pg_locks WHERE NOT granted AND {OF_THIS_DATABASE}")
                if (await conn.execute(waiting)).scalar() == count:
                    return
            await anyio.sleep(0.02)


async def test_claims_starts_and_ends_do_not_wait_for_the_store_write_lock(store: Store) -> None:
    await send(store, "r1", "r2")
    await send(store, "r3", invocation="inv3")
    note = LogChunk("r3", time.time(), "log", "warning", "revisions differ")
    # The group ends after the lock's holder commits (the block's end).
    async with anyio.create_task_group() as group, holding(store, f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})"):
        with anyio.fail_after(5):
            assert await store.claim_runs(["r1", "r2"], revision="abc", git_commit=None)
            await store.write_runs(RunBatch(starts=[("r1", time.time())]))
            await store.write_runs(RunBatch(finishes=[RunEnd("r1", RunStatus.SUCCEEDED, time.time())]))
        # A claim with notes writes log rows, which keep their commit order under the lock.
        group.start_soon(lambda: store.claim_runs(["r3"], revision=None, git_commit=None, notes=[note]))
        await waiting_for_locks(store, 1)
        assert (await store.run("r3")).host is None
    assert (await store.run("r1")).status is RunStatus.SUCCEEDED
    r3 = await store.run("r3")
    assert (r3.host, [line.message for line in r3.logs]) == (HOST, ["revisions differ"])


async def test_claims_in_one_batch_are_each_made_whole_or_not_at_all(store: Store) -> None:
    await send(store, "r1", "r2")
    await send(store, "r3", invocation="inv3")
    assert await store.finish_queued(["r2"], RunStatus.FAILED, RunError("X", "no")) == ["r2"]
    notes = [LogChunk(r, time.time(), "log", "warning", f"note of {r}") for r in ("r1", "r3")]
    written = await store.write_runs(
        RunBatch(claims=[Claim(("r1", "r2"), "abc", None), Claim(("r3",), "def", "c0ffee")], logs=notes)
    )
    assert sorted(written.unclaimed) == ["r1", "r2"]
    r1, r3 = await store.run("r1"), await store.run("r3")
    assert (r1.status, r1.host, r1.logs) == (RunStatus.QUEUED, None, ())
    assert (r3.host, r3.revision, r3.git_commit) == (HOST, "def", "c0ffee")
    assert [line.message for line in r3.logs] == ["note of r3"]


async def test_of_two_claims_of_the_same_runs_at_once_one_takes_them(pg_url: str, store: Store) -> None:  # noqa: F811
    await send(store, "r1", "r2")
    results: list[bool] = []

    async def claim(by: Store) -> None:
        results.append(await by.claim_runs(["r1", "r2"], revision=None, git_commit=None))

    async with (
        open_store(pg_url) as other,
        anyio.create_task_group() as group,
        holding(store, "SELECT id FROM runs WHERE id = 'r2' FOR UPDATE"),
    ):
        group.start_soon(claim, store)
        group.start_soon(claim, other)
        await waiting_for_locks(store, 2)  # both wait for r2's row; the block's end lets it go
    assert sorted(results) == [False, True]


async def test_a_run_that_ends_while_its_dead_workers_job_is_settled_is_not_retried(store: Store) -> None:
    job_id = await send(store, "r1")
    await take(store, job_id)
    assert await store.claim_runs(["r1"], revision=None, git_commit=None)
    await store.write_runs(RunBatch(starts=[("r1", time.time())]))
    recovered: list[Any] = []
    # The worker (taken for dead) is writing the run's end: its transaction has the row.
    async with anyio.create_task_group() as group, holding(store, "UPDATE runs SET status = 'succeeded' WHERE id = 'r1'"):
        group.start_soon(lambda: _append(recovered, store.recover_job(job_id, lambda task: 1)))
        await waiting_for_locks(store, 1)
    [recovery] = recovered
    assert recovery is not None and (recovery.interrupted, recovery.retried) == ([], [])
    assert (await store.run("r1")).status is RunStatus.SUCCEEDED
    assert await store.retry_of("r1") is None


async def _append(found: list[Any], value: Awaitable[Any]) -> None:
    found.append(await value)


async def test_ends_written_on_a_connection_the_server_ended_fail_as_an_outage_and_the_next_write_succeeds(
    pg_url: str,  # noqa: F811
) -> None:
    """Starts and ends alone go through psycopg's pipeline (``RunStore._write_ends_pg``): a
    connection lost under them is a store outage, as through SQLAlchemy, so the recorder
    waits it out; and the connection is not handed out again."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    async with open_store(pg_url) as store:
        await store.write_runs(RunBatch(inserts=[unowned("r1")]))
        async with await psycopg.AsyncConnection.connect(database_url(pg_url).replace("+psycopg", ""), autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        end = RunEnd("r1", RunStatus.SUCCEEDED, time.time(), started_at=time.time())
        with pytest.raises(StoreError) as lost:
            await store.write_runs(RunBatch(starts=[("r1", time.time())], finishes=[end]))
        assert isinstance(lost.value.__cause__, OperationalError)
        await store.write_runs(RunBatch(finishes=[end]))
        assert (await store.run("r1")).status is RunStatus.SUCCEEDED
