"""A worker's side of the queue (PostgreSQL only): the fetch that takes several jobs in one
statement and claims their runs, the jobs taken off the queue with the runs' next batch, and a
worker taken for dead that registers again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import anyio
import pytest
from pg import pg_server, pg_url  # noqa: F401
from sqlalchemy import text
from test_store_remote import job, jobs, send, unowned

from runner import remote
from runner.models import RunStatus
from runner.processes import HOST, this_process
from runner.records import RunBatch, RunError
from runner.revision import Revision
from runner.store import Store, open_store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

MINE = Revision("abc", "c0ffee")  # the revision test_store_remote's jobs are queued at


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:  # noqa: F811
    async with open_store(pg_url) as opened:
        await opened.ensure_queue()
        yield opened


@pytest.fixture
async def queue(store: Store) -> AsyncIterator[Any]:
    queue = remote._Queue(store, None)
    async with queue.app.open_async():
        await queue.register()
        yield queue


async def value(store: Store, query: str, **params: Any) -> Any:
    async with store.engine.connect() as conn:
        return (await conn.execute(text(query), params)).scalar()


async def test_a_fetch_takes_up_to_its_limit_oldest_first_and_claims_their_runs(store: Store, queue: Any) -> None:
    ids = [await send(store, f"r{i}", invocation=f"inv{i}") for i in range(3)]
    taken = await queue.fetch(2, MINE)
    assert [(j.id, j.queue, j.claimed) for j in taken] == [(ids[0], "default", True), (ids[1], "default", True)]
    assert taken[0].args["runs"] == {"a": "r0"}
    assert [(i, status) for i, status, _, _ in await jobs(store)] == [(ids[0], "doing"), (ids[1], "doing"), (ids[2], "todo")]
    assert await value(store, "SELECT count(*) FROM procrastinate_jobs WHERE worker_id = :w", w=queue.worker_id) == 2
    run = await store.run("r0")
    assert (run.status, run.host, run.revision, run.git_commit) == (RunStatus.QUEUED, HOST, "abc", "c0ffee")
    me = this_process()
    assert await value(store, "SELECT pid FROM runs WHERE id = 'r0'") == me.pid
    assert await value(store, "SELECT pid_started FROM runs WHERE id = 'r0'") == me.pid_started
    assert (await store.run("r2")).host is None
    assert [j.id for j in await queue.fetch(5, MINE)] == [ids[2]]
    assert await queue.fetch(5, MINE) == []


async def test_a_fetch_takes_only_its_queues(store: Store, queue: Any) -> None:
    await store.write_runs(RunBatch(inserts=[unowned("r1")], jobs=[replace(job("r1"), queue="other")]))
    queue.queues = ["default", "more"]
    assert await queue.fetch(4, MINE) == []
    queue.queues = ["other"]
    assert [j.queue for j in await queue.fetch(4, MINE)] == ["other"]


async def test_a_job_it_cannot_claim_in_the_fetch_is_taken_but_left_to_claim_later(store: Store, queue: Any) -> None:
    """A job queued at another revision (its claim carries a note), or carrying a whole
    workflow (queued before the upgrade: its runs are claimed together, all or none)."""
    await send(store, "r1", invocation="i1")
    await send(store, "w1", "w2", invocation="i2")
    taken = await queue.fetch(4, Revision("def"))
    assert [j.claimed for j in taken] == [None, None]
    assert {(await store.run(r)).host for r in ("r1", "w1", "w2")} == {None}


async def test_a_fetch_does_not_claim_a_run_taken_up_or_ended_meanwhile(store: Store, queue: Any) -> None:
    """A job delivered again (a dead worker's, queued again) whose run another worker took up,
    or one whose run was cancelled: the fetch says so, and the run is left as it was."""
    await send(store, "r1", invocation="i1")
    await send(store, "r2", invocation="i2")
    assert await store.claim_runs(["r1"], revision="zzz", git_commit=None)
    assert await store.finish_queued(["r2"], RunStatus.CANCELLED, RunError("Cancelled", "no")) == ["r2"]
    taken = await queue.fetch(4, MINE)
    assert [j.claimed for j in taken] == [False, False]
    assert (await store.run("r1")).revision == "zzz"
    assert (await store.run("r2")).host is None


async def test_a_done_job_is_taken_off_the_queue_with_the_next_batch(store: Store, queue: Any) -> None:
    first = await send(store, "r1", invocation="i1")
    second = await send(store, "r2", invocation="i2")
    (taken,) = await queue.fetch(1, MINE)
    await store.write_runs(RunBatch(done_jobs=[taken.id, second]))  # one still queued stays
    assert [i for i, *_ in await jobs(store)] == [second] and taken.id == first


async def test_a_worker_taken_for_dead_registers_again(
    store: Store, queue: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "HEARTBEAT", 0.05)
    pruned = queue.worker_id
    async with store.engine.begin() as conn:  # as another worker's prune of stalled workers
        await conn.execute(text("DELETE FROM procrastinate_workers WHERE id = :w"), {"w": pruned})
    async with anyio.create_task_group() as group:
        group.start_soon(queue.beat)
        for _ in range(500):  # 5 s at most
            if queue.worker_id != pruned:
                break
            await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    assert queue.worker_id != pruned, "it did not register again"
    beat = await value(store, "SELECT last_heartbeat FROM procrastinate_workers WHERE id = :w", w=queue.worker_id)
    assert beat is not None and await value(store, "SELECT count(*) FROM procrastinate_workers") == 1
    await send(store, "r1")
    assert [j.claimed for j in await queue.fetch(1, MINE)] == [True]  # its new id takes jobs


async def test_the_listener_hears_of_each_new_job_and_of_a_cancel_of_a_taken_one(store: Store, queue: Any) -> None:
    heard: list[str] = []
    queue.on_job = lambda: heard.append("job")
    queue.on_abort = lambda job_id: heard.append(f"abort {job_id}")

    async def until(count: int) -> None:
        for _ in range(500):  # 5 s at most
            if len(heard) >= count:
                return
            await anyio.sleep(0.01)
        raise AssertionError(f"heard only {heard}")

    async with anyio.create_task_group() as group:
        group.start_soon(queue.listen)
        await until(1)  # once on listening: for what was queued before
        await send(store, "r1", invocation="i1")
        await until(2)
        (taken,) = await queue.fetch(1, MINE)
        await store.cancel_workflow("r1")  # its worker is asked to stop it
        await until(3)
        group.cancel_scope.cancel()
    assert heard == ["job", "job", f"abort {taken.id}"]


async def test_the_queue_keeps_no_log_of_job_events_even_one_installed_before(pg_url: str) -> None:  # noqa: F811
    """procrastinate's triggers that log each job's status changes are switched off when the
    queue is installed, and on a store whose queue an earlier runner installed with them on."""
    async with open_store(pg_url) as store:
        await store.ensure_queue()
        async with store.engine.begin() as conn:  # as an earlier runner left it
            for name in ("procrastinate_trigger_status_events_insert_v1", "procrastinate_trigger_status_events_update_v1"):
                await conn.execute(text(f"ALTER TABLE procrastinate_jobs ENABLE TRIGGER {name}"))
    async with open_store(pg_url) as store:
        await store.ensure_queue()
        queue = remote._Queue(store, None)
        async with queue.app.open_async():
            await queue.register()
            await send(store, "r1")
            (taken,) = await queue.fetch(1, MINE)
            # (A job's events would go with it: looked at while it is there.)
            assert await value(store, "SELECT count(*) FROM procrastinate_events") == 0
            await store.write_runs(RunBatch(done_jobs=[taken.id]))
        assert await jobs(store) == []
