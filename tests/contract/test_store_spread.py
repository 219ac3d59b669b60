"""The store's part in spreading a workflow over workers (PostgreSQL only): a run with needs
gets its job only when its needs' last runs are final, in the transaction that writes the last
of those ends; is skipped as the engine skips it when one did not succeed (and so on down);
and a cancel or a dead worker's recovery decides the waiting runs the same way.

The workflow of these tests: ``a`` and ``b`` without needs, ``c`` needs both, ``d`` needs ``c``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
from pg import pg_server, pg_url  # noqa: F401

from runner.models import RunStatus
from runner.records import Claim, JobArgs, RunBatch, RunEnd, RunError
from runner.store import CancelOutcome, Store, open_store
from runner.store.jobs import INVOCATION_LOCKS, invocation_key
from tests.contract.test_store_remote import holding, jobs, take, unowned, waiting_for_locks

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

NEEDS = {"a": (), "b": (), "c": ("a", "b"), "d": ("c",)}


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:  # noqa: F811
    async with open_store(pg_url) as opened:
        await opened.ensure_queue()
        await opened.write_runs(
            RunBatch(
                inserts=[unowned(task, task, "wf") for task in NEEDS],
                jobs=[
                    JobArgs(
                        task=task, parameters={}, with_needs=False, trigger="cli", parent_id=None, attempt=1,
                        scheduled_for=None, invocation="wf", runs={task: task}, revision=None, queue="default",
                        needs=needs,
                    )
                    for task, needs in NEEDS.items()
                ],
            )
        )
        yield opened


async def queued_tasks(store: Store) -> list[tuple[str, dict[str, str]]]:
    """The task of each job on the queue, and the runs whose results it reads."""
    return sorted((args["task"], args["upstream"]) for _, _, _, args in await jobs(store))


def ends(run_id: str, status: RunStatus) -> RunEnd:
    """A worker's run that ended for good (``release``: decide what waits for it)."""
    return RunEnd(run_id, status, time.time(), release="wf")


async def status(store: Store, run_id: str) -> tuple[RunStatus, str | None]:
    run = await store.run(run_id)
    return run.status, run.error["message"] if run.error else None


async def test_a_run_is_queued_when_the_last_of_its_needs_ends_with_their_run_ids(store: Store) -> None:
    assert await queued_tasks(store) == [("a", {}), ("b", {})]
    assert (await store.run("c")).queue == "default" and await store.job_id("c") is None

    await store.write_runs(RunBatch(finishes=[ends("a", RunStatus.SUCCEEDED)]))
    assert await queued_tasks(store) == [("a", {}), ("b", {})], "c still waits for b"

    await store.write_runs(RunBatch(finishes=[ends("b", RunStatus.SUCCEEDED)]))
    assert await queued_tasks(store) == [("a", {}), ("b", {}), ("c", {"a": "a", "b": "b"})]
    assert await store.job_id("c") is not None and await store.job_id("d") is None
    assert await status(store, "c") == (RunStatus.QUEUED, None)

    await store.write_runs(RunBatch(finishes=[ends("c", RunStatus.SUCCEEDED)]))
    assert ("d", {"c": "c"}) in await queued_tasks(store)


async def test_a_need_that_fails_for_good_skips_what_waits_for_it_and_so_on_down(store: Store) -> None:
    # a fails and gets a retry: c waits for the retry, not for the attempt that failed.
    await store.write_runs(
        RunBatch(
            finishes=[RunEnd("a", RunStatus.FAILED, time.time())],
            retries=[unowned("a2", "a", "wf", parent_id="a", attempt=2, trigger="retry")],
        )
    )
    await store.write_runs(RunBatch(finishes=[ends("b", RunStatus.SUCCEEDED)]))
    assert await status(store, "c") == (RunStatus.QUEUED, None)

    await store.write_runs(RunBatch(finishes=[ends("a2", RunStatus.TIMED_OUT)]))
    # The engine's words when it skips a run (Workflow._skip): the needs that did not succeed.
    assert await status(store, "c") == (RunStatus.SKIPPED, "a need did not succeed: a timed_out")
    assert await status(store, "d") == (RunStatus.SKIPPED, "a need did not succeed: c skipped")
    assert (await store.run("d")).error == {
        "type": "Skipped", "message": "a need did not succeed: c skipped", "traceback": None,
    }
    assert await queued_tasks(store) == [("a", {}), ("b", {})], "nothing more was queued"


async def test_two_needs_ending_at_once_queue_what_waits_for_them_once(store: Store) -> None:
    # Another worker's transaction is writing b's end, holding the workflow's lock as a
    # worker's batch does; a's end, written meanwhile, waits for it, then sees both ends.
    # (Without the lock each would see the other's run unfinished, and c would never go.)
    lock = f"SELECT pg_advisory_xact_lock({INVOCATION_LOCKS}, {invocation_key('wf')})"
    async with (
        anyio.create_task_group() as group,
        holding(store, f"{lock}; UPDATE runs SET status = 'succeeded', finished_at = 1 WHERE id = 'b'"),
    ):
        group.start_soon(store.write_runs, RunBatch(finishes=[ends("a", RunStatus.SUCCEEDED)]))
        await waiting_for_locks(store, 1)
        assert await store.job_id("c") is None
    assert [task for task, _ in await queued_tasks(store)].count("c") == 1


async def test_cancelling_the_workflow_cancels_every_run_wherever_it_is(store: Store) -> None:
    b_job = await store.job_id("b")
    assert b_job is not None
    await take(store, b_job)  # b runs on a worker; a is still on the queue; c and d wait
    await store.write_runs(RunBatch(claims=[Claim(("b",), None, None)], starts=[("b", time.time())]))
    await store.cancel_workflow("d")
    assert {r: (await store.run(r)).status for r in NEEDS} == {
        "a": RunStatus.CANCELLED, "b": RunStatus.RUNNING, "c": RunStatus.CANCELLED, "d": RunStatus.CANCELLED,
    }
    [(_, _, _, args)] = await jobs(store)
    assert args["task"] == "b"
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        asked = await conn.execute(text("SELECT abort_requested FROM procrastinate_jobs WHERE id = :id"), {"id": b_job})
        assert asked.scalar() is True  # b's worker stops it and records how it ended
    assert await store.cancel_requested(["b"]) == ["b"]
    # b's worker dies before it does: b is interrupted, and not retried elsewhere.
    recovery = await store.recover_job(b_job, lambda task: 1)
    assert recovery is not None and (recovery.interrupted, recovery.retried) == (["b"], [])
    assert {r: (await store.run(r)).status for r in ("c", "d")} == {"c": RunStatus.CANCELLED, "d": RunStatus.CANCELLED}
    assert await jobs(store) == []


async def test_cancelling_one_waiting_run_skips_what_waits_for_it(store: Store) -> None:
    assert await store.request_cancel("c") is CancelOutcome.CANCELLED
    assert await status(store, "c") == (RunStatus.CANCELLED, "stopped on request before it started")
    assert await status(store, "d") == (RunStatus.SKIPPED, "a need did not succeed: c cancelled")
    assert await queued_tasks(store) == [("a", {}), ("b", {})]
    # One still on the queue: taken off it.
    assert await store.request_cancel("a") is CancelOutcome.CANCELLED
    assert await queued_tasks(store) == [("b", {})]


async def test_a_refused_job_and_a_dead_workers_run_decide_what_waits_for_them(store: Store) -> None:
    assert await store.finish_queued(["b"], RunStatus.FAILED, RunError("TaskNotRunnable", "no"), release_of="wf") == ["b"]
    assert await status(store, "c") == (RunStatus.QUEUED, None), "c waits for a too"

    a_job = await store.job_id("a")
    assert a_job is not None
    await take(store, a_job)
    await store.write_runs(RunBatch(claims=[Claim(("a",), None, None)], starts=[("a", time.time())]))
    recovery = await store.recover_job(a_job, lambda task: None)  # no retries: interrupted for good
    assert recovery is not None and recovery.interrupted == ["a"]
    assert await status(store, "c") == (RunStatus.SKIPPED, "a need did not succeed: a interrupted, b failed")
    assert await status(store, "d") == (RunStatus.SKIPPED, "a need did not succeed: c skipped")


async def test_a_dead_workers_run_retried_keeps_what_waits_for_it_waiting(store: Store) -> None:
    a_job = await store.job_id("a")
    assert a_job is not None
    await take(store, a_job)
    await store.write_runs(RunBatch(claims=[Claim(("a",), None, None)], starts=[("a", time.time())]))
    await store.write_runs(RunBatch(finishes=[ends("b", RunStatus.SUCCEEDED)]))
    recovery = await store.recover_job(a_job, lambda task: 1)
    assert recovery is not None
    [(_, retry)] = recovery.retried
    again = await store.run(retry)
    assert (again.invocation, again.attempt, again.status) == ("wf", 2, RunStatus.QUEUED)
    assert await status(store, "c") == (RunStatus.QUEUED, None)
    await store.write_runs(RunBatch(finishes=[ends(retry, RunStatus.SUCCEEDED)]))
    assert ("c", {"a": retry, "b": "b"}) in await queued_tasks(store)
    assert [args["runs"] for _, _, _, args in await jobs(store) if args["task"] == "a"] == [{"a": retry}]
