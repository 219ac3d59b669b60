"""Cancel requests as an engine's watcher sees them, in process on a real SQLite store: no
query while nothing is watched, one query per tick for every watched run, and only the scope of
the run asked for is cancelled (a retry's new id included)."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from types import SimpleNamespace

import anyio
import pytest

from runner.cancels import CancelWatch
from runner.models import TaskType
from runner.records import Owner, QueuedRun, RunBatch
from runner.store import CancelOutcome, Store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

TICK = 0.02


def queued(run_id: str) -> QueuedRun:
    return QueuedRun(
        id=run_id, task="t", type=TaskType.SHELL, attempt=1, trigger="cli", parent_id=None, invocation=run_id,
        parameters_json="{}", queued_at=time.time(), owner=Owner("h", 1, None),
    )


class Counted:
    """The store's ``cancel_requested``, with each call's ids noted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[set[str]] = []

    async def cancel_requested(self, run_ids: Collection[str]) -> list[str]:
        self.calls.append(set(run_ids))
        return await self.store.cancel_requested(run_ids)


async def wait_until(condition: Callable[[], bool], within: float = 2.0) -> None:
    with anyio.fail_after(within):
        while True:
            if condition():
                return
            await anyio.sleep(0.005)


async def test_nothing_is_asked_while_no_run_is_watched_and_one_query_covers_every_watched_run(store: Store) -> None:
    ids = [f"{n:032x}" for n in range(1, 4)]
    await store.write_runs(RunBatch(inserts=[queued(i) for i in ids]))
    counted = Counted(store)
    watch = CancelWatch(store, interval=TICK)
    watch.store = counted  # type: ignore[assignment]  # the real store, its queries counted
    stopped: dict[str, bool] = {}

    async def watched(run_id: str) -> None:
        with watch.watching(SimpleNamespace(run_id=run_id)):
            await anyio.sleep(5)
        stopped[run_id] = True

    async with anyio.create_task_group() as group:
        await group.start(watch.run)
        await anyio.sleep(TICK * 10)
        assert counted.calls == [], "no runs, no queries"

        for run_id in ids:
            group.start_soon(watched, run_id)
        await wait_until(lambda: len(counted.calls) >= 3)
        assert all(call == set(ids) for call in counted.calls[-2:]), "every watched run in each query"

        assert await store.request_cancel(ids[1]) is CancelOutcome.REQUESTED
        await wait_until(lambda: ids[1] in stopped)
        assert stopped == {ids[1]: True}, "only the run asked for"
        group.cancel_scope.cancel()


async def test_a_watched_retry_is_found_by_its_new_id(store: Store) -> None:
    first, retry = "a" * 32, "b" * 32
    await store.write_runs(RunBatch(inserts=[queued(first), queued(retry)]))
    watch = CancelWatch(store, interval=TICK)
    current = SimpleNamespace(run_id=first)  # a workflow's node: its attempt's id changes
    async with anyio.create_task_group() as group:
        await group.start(watch.run)
        with watch.watching(current) as scope:
            current.run_id = retry
            await store.request_cancel(retry)
            await anyio.sleep(5)
        assert scope.cancelled_caught
        group.cancel_scope.cancel()
