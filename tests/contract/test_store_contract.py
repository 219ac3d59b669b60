"""One contract for every store: the same tests on a SQLite file and on a real PostgreSQL.

What SQLite alone has (WAL, ``data_version``, the file) is tested in
tests/integration/test_store.py; here only behaviour a caller can see through ``Store``.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import pytest
from conftest import cli_env
from pg import pg_server, pg_url, store_url  # noqa: F401

from runner.errors import RunNotFound, StoreVersionError
from runner.models import RunStatus, Source, TaskSpec, TaskType
from runner.records import Fire, LogChunk, Owner, QueuedRun, RunBatch, RunEnd, RunError, RunResult
from runner.store import (
    CURRENT_VERSION,
    CancelOutcome,
    Lease,
    LeaseHeld,
    ScheduleState,
    Store,
    Trigger,
    open_store,
)
from runner.syncplan import Wanted, plan

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

NOW = time.time()


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    async with open_store(url) as opened:
        yield opened


async def execute(url: str, sql: str, **params: Any) -> list[Any]:
    """Run one statement on the database from outside the store; its rows, if any."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


def spec(name: str, command: str = "echo") -> TaskSpec:
    return TaskSpec(name=name, type=TaskType.SHELL, source=Source("tasks.d/a.yaml", 3, 3), command=command)


def wanted(*specs: TaskSpec) -> dict[str, Wanted]:
    return {s.name: Wanted(s, True, None) for s in specs}


async def sync(store: Store, want: dict[str, Wanted]) -> dict[str, list[str]]:
    result = await store.sync_tasks(lambda stored, _digests: plan(want, stored))
    return {k: v for k, v in result.to_json().items() if v}


def run_row(
    run_id: str, task: str = "a", *, queued: float = NOW, host: str = "elsewhere", pid: int = 1,
    parameters: dict[str, Any] | None = None, invocation: str | None = None, scheduled_for: float | None = None,
) -> QueuedRun:
    return QueuedRun(
        id=run_id, task=task, type=TaskType.SHELL, attempt=1, trigger="cli", parent_id=None,
        invocation=invocation or run_id, parameters_json=json.dumps(parameters or {}), queued_at=queued,
        scheduled_for=scheduled_for, owner=Owner(host, pid, None),
    )


def recorded(run: QueuedRun, status: str, finished_at: float | None = None) -> RunBatch:
    """``run`` queued and then running, or ended ``status`` at ``finished_at``."""
    if status == "running":
        return RunBatch(inserts=[run], starts=[(run.id, run.queued_at)])
    return RunBatch(inserts=[run], finishes=[RunEnd(run.id, RunStatus(status), finished_at or run.queued_at)])


# -- schema and versions -------------------------------------------------------------------------


async def test_a_new_store_is_created_at_the_current_version(url: str) -> None:
    async with open_store(url) as store:
        assert await store.tasks() == {}
        await store.ping()
    assert await execute(url, "SELECT version FROM schema_version") == [(CURRENT_VERSION,)]
    async with open_store(url) as store:
        assert await store.runs() == []
    assert await execute(url, "SELECT version FROM schema_version") == [(CURRENT_VERSION,)]


async def test_a_store_at_version_0_gets_the_whole_schema(url: str) -> None:
    await execute(url, "CREATE TABLE schema_version (version INTEGER NOT NULL)")
    await execute(url, "INSERT INTO schema_version VALUES (0)")
    async with open_store(url) as store:
        assert await sync(store, wanted(spec("a"))) == {"added": ["a"]}
    assert await execute(url, "SELECT version FROM schema_version") == [(CURRENT_VERSION,)]


async def test_a_newer_store_is_refused_and_left_alone(url: str) -> None:
    async with open_store(url) as store:
        await sync(store, wanted(spec("a")))
    await execute(url, "UPDATE schema_version SET version = :v", v=CURRENT_VERSION + 1)
    with pytest.raises(StoreVersionError, match=f"understands up to {CURRENT_VERSION}"):
        async with open_store(url):
            pytest.fail("a newer store was opened")
    assert await execute(url, "SELECT version FROM schema_version") == [(CURRENT_VERSION + 1,)]
    assert await execute(url, "SELECT name FROM tasks") == [("a",)]


# -- tasks ---------------------------------------------------------------------------------------


async def test_sync_adds_updates_removes_disables_and_enables(store: Store) -> None:
    full = TaskSpec(
        name="full", type=TaskType.PYTHON, source=Source("tasks.d/sub/b.yml", 12, 3), callable="plugins.jobs:run",
        parameters={"a": 1, "nested": {"b": [1, 2], "ü": "ø"}}, needs=("a",), timeout=300.0, tags=("x",),
    )
    assert await sync(store, {**wanted(spec("a"), spec("b")), "full": Wanted(full, False, "orphaned: nope")}) == {
        "added": ["a", "b", "full"], "disabled": ["full"],
    }
    stored = await store.tasks()
    assert list(stored) == ["a", "b", "full"]
    assert stored["full"].spec.definition() == full.definition()
    assert str(stored["full"].spec.source) == "tasks.d/sub/b.yml:12"
    assert (stored["full"].enabled, stored["full"].disabled_reason, stored["full"].removed) == (False, "orphaned: nope", False)
    assert (stored["a"].enabled, stored["a"].disabled_reason) == (True, None)

    assert await sync(store, {**wanted(spec("a", "echo changed")), "full": Wanted(full, True, None)}) == {
        "updated": ["a"], "removed": ["b"], "enabled": ["full"],
    }
    stored = await store.tasks()
    assert stored["a"].spec.command == "echo changed"
    assert (stored["b"].removed, stored["b"].enabled, stored["b"].disabled_reason) == (True, False, "removed")
    assert (stored["full"].enabled, stored["full"].disabled_reason) == (True, None)
    assert list(await store.tasks(include_removed=False)) == ["a", "full"]
    assert list(await store.tasks(task_type=TaskType.PYTHON)) == ["full"]
    assert list(await store.tasks(include_removed=False, task_type=TaskType.SHELL)) == ["a"]

    assert await sync(store, {**wanted(spec("a", "echo changed")), "full": Wanted(full, True, None)}) == {}
    assert await sync(store, wanted(spec("a", "echo changed"), spec("b"), full)) == {"added": ["b"]}


async def test_tasks_come_sorted_by_code_point(store: Store) -> None:
    names = ["B", "a", "a-b", "a.b", "a_b", "Z9", "0x"]
    await sync(store, wanted(*(spec(n) for n in names)))
    assert list(await store.tasks()) == sorted(names)


async def test_a_sync_hands_back_the_tasks_as_a_read_then_finds_them(store: Store) -> None:
    def kept(tasks: Any) -> dict[str, tuple[Any, ...]]:
        return {
            name: (t.spec.definition_json, str(t.spec.source), t.enabled, t.disabled_reason, t.removed)
            for name, t in tasks.items()
        }

    steps = [
        wanted(spec("b"), spec("a"), spec("c")),
        {**wanted(spec("a", "echo changed")), "c": Wanted(spec("c"), False, "orphaned: nope")},
        wanted(spec("b"), spec("0")),
        wanted(spec("b"), spec("0")),
    ]
    for want in steps:
        done = await store.sync_tasks(lambda stored, _digests, want=want: plan(want, stored))
        assert done.tasks is not None
        found = await store.tasks()
        assert list(done.tasks) == list(found)  # sorted by code point, removed ones too
        assert kept(done.tasks) == kept(found)


async def test_task_file_digests_are_kept(store: Store) -> None:
    def planner(stored: Any, _digests: Any) -> Any:
        return plan(wanted(spec("a")), stored, digests={"tasks.d/a.yaml": "f" * 64})

    await store.sync_tasks(planner)
    assert await store.task_files() == {"tasks.d/a.yaml": "f" * 64}


async def test_only_the_changed_task_file_digests_are_rewritten_and_all_are_read_back(store: Store) -> None:
    steps = [
        {"tasks.d/a.yaml": "a" * 64, "tasks.d/b.yaml": "b" * 64, "tasks.d/c.yaml": "c" * 64},
        {"tasks.d/a.yaml": "a" * 64, "tasks.d/b.yaml": "2" * 64, "tasks.d/d.yaml": "d" * 64},  # b edited, c gone
        {},  # an empty tasks.d/
        {"tasks.d/a.yaml": "a" * 64},  # put back as it was
    ]
    for digests in steps:
        await store.sync_tasks(lambda stored, stored_digests, d=digests: plan({}, stored, d, stored_digests))
        assert await store.task_files() == digests


async def test_a_sync_plans_over_what_another_process_synced_since_its_own_last_sync(url: str) -> None:
    files = {"tasks.d/a.yaml": "a" * 64}
    seen: list[tuple[dict[str, str | None], dict[str, str]]] = []

    def planner(want: dict[str, Wanted], digests: dict[str, str]) -> Any:
        def planned(stored: Any, stored_digests: Any) -> Any:
            shown = {name: None if task.removed else task.spec.command for name, task in stored.items()}
            seen.append((shown, dict(stored_digests)))
            return plan(want, stored, digests, stored_digests)

        return planned

    async with open_store(url) as mine, open_store(url) as theirs:  # two processes' stores
        await mine.sync_tasks(planner(wanted(spec("a", "echo a"), spec("b", "echo b")), files))
        await theirs.sync_tasks(planner(wanted(spec("a", "echo theirs"), spec("c", "echo c")), {"x": "x" * 64}))
        done = await mine.sync_tasks(planner(wanted(spec("a", "echo a"), spec("b", "echo b2")), files))
        assert seen[-1] == ({"a": "echo theirs", "b": None, "c": "echo c"}, {"x": "x" * 64})
        assert (done.added, done.updated, done.removed) == (("b",), ("a",), ("c",))
        # With no other writer since, the next sync starts from what this one left.
        await mine.sync_tasks(planner(wanted(spec("a", "echo a"), spec("b", "echo b2")), files))
        assert seen[-1] == ({"a": "echo a", "b": "echo b2", "c": None}, files)
        # A write by another process that changes only the digests counts too.
        await theirs.sync_tasks(planner(wanted(spec("a", "echo a"), spec("b", "echo b2")), {"y": "y" * 64}))
        await mine.sync_tasks(planner(wanted(spec("a", "echo a"), spec("b", "echo b2")), files))
        assert seen[-1][1] == {"y": "y" * 64}
    assert await execute(url, "SELECT path, digest FROM task_files") == [("tasks.d/a.yaml", "a" * 64)]


# -- runs ----------------------------------------------------------------------------------------


class Odd:
    """Not JSON: only the pickle keeps it."""

    def __init__(self, value: Fraction) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Odd) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


async def test_a_start_and_end_in_one_batch_record_both(store: Store) -> None:
    await store.write_runs(RunBatch(inserts=[run_row("r1"), run_row("r2", queued=NOW + 1)]))
    await store.write_runs(
        RunBatch(
            starts=[("r1", NOW + 0.5), ("r2", NOW + 1.5)],
            finishes=[RunEnd("r1", RunStatus.SUCCEEDED, NOW + 2, 1.5)],
        )
    )
    r1, r2 = await store.run("r1"), await store.run("r2")
    assert (r1.status, r1.started_at, r1.finished_at) == (RunStatus.SUCCEEDED, NOW + 0.5, NOW + 2)
    assert (r2.status, r2.started_at, r2.finished_at) == (RunStatus.RUNNING, NOW + 1.5, None)
    # an end whose run has one already is not written, its start with it
    await store.write_runs(RunBatch(starts=[("r1", NOW + 9)], finishes=[RunEnd("r1", RunStatus.FAILED, NOW + 10)]))
    r1 = await store.run("r1")
    assert (r1.status, r1.started_at, r1.finished_at) == (RunStatus.SUCCEEDED, NOW + 0.5, NOW + 2)


async def test_a_batch_of_starts_groups_and_ends_alone_writes_each_row_as_given(url: str, store: Store) -> None:
    """A batch with nothing but starts, process groups and ends (all of a busy worker's, most of
    an engine's) goes its own way on PostgreSQL: each kind of update once, with all its rows."""
    await store.write_runs(RunBatch(inserts=[run_row(f"r{i}", queued=NOW + i) for i in range(5)]))
    pickled = pickle.dumps(Odd(Fraction(2, 3)))
    await store.write_runs(
        RunBatch(
            starts=[("r0", NOW + 10), ("r1", NOW + 11)],
            groups=[("r0", 4242, NOW + 10.5), ("r1", 4343, None)],
            finishes=[
                RunEnd("r2", RunStatus.SUCCEEDED, NOW + 22, 1.0, result=RunResult.of({"_type": "Odd"}, pickled),
                       started_at=NOW + 21),
                RunEnd("r3", RunStatus.FAILED, NOW + 23, 2.0, exit_code=3, stdout="out ü", stderr="",
                       started_at=NOW + 21, pgid=4444, pgid_started=NOW + 21.5),
                RunEnd("r4", RunStatus.TIMED_OUT, NOW + 24, None, error=RunError("TaskTimeout", "timed out")),
            ],
        )
    )
    r0, r1, r2, r3, r4 = [await store.run(f"r{i}") for i in range(5)]
    assert (r0.status, r0.started_at, r1.status, r1.started_at) == (RunStatus.RUNNING, NOW + 10, RunStatus.RUNNING, NOW + 11)
    assert (r2.status, r2.started_at, r2.finished_at, r2.duration_s, r2.result) == (
        RunStatus.SUCCEEDED, NOW + 21, NOW + 22, 1.0, {"_type": "Odd"},
    )
    assert await store.load_result("r2") == Odd(Fraction(2, 3))
    assert (r3.status, r3.exit_code, r3.stdout, r3.stderr, r3.result) == (RunStatus.FAILED, 3, "out ü", "", None)
    assert r4.error is not None
    assert (r4.status, r4.started_at, r4.error["type"], r4.error["message"]) == (
        RunStatus.TIMED_OUT, None, "TaskTimeout", "timed out",
    )
    groups = await execute(url, "SELECT id, pgid, pgid_started FROM runs WHERE pgid IS NOT NULL ORDER BY id")
    assert [tuple(row) for row in groups] == [("r0", 4242, NOW + 10.5), ("r1", 4343, None), ("r3", 4444, NOW + 21.5)]


async def test_runs_round_trip_through_a_batch(store: Store) -> None:
    result = Odd(Fraction(1, 3))
    await store.write_runs(
        RunBatch(
            inserts=[run_row("r1", parameters={"a": 1, "s": "ü"}, invocation="inv"), run_row("r2", queued=NOW + 1)],
            starts=[("r1", NOW + 0.5)],
            groups=[("r1", 4242, NOW + 0.25)],
        )
    )
    assert [r.id for r in await store.runs()] == ["r2", "r1"]
    assert (await store.run("r1")).status is RunStatus.RUNNING
    assert await store.run_status("r1") == ("a", RunStatus.RUNNING)
    await store.write_runs(
        RunBatch(
            finishes=[
                RunEnd("r1", RunStatus.SUCCEEDED, NOW + 2, 1.5, result=RunResult.of({"_type": "Odd"}, pickle.dumps(result))),
                RunEnd("r2", RunStatus.FAILED, NOW + 3, exit_code=3, stdout="out ü\n", stderr="err\n"),
            ],
            logs=[LogChunk("r1", NOW + 1, "log", "info", "hello ü")],
        )
    )
    r1 = await store.run("r1")
    assert (r1.status, r1.parameters, r1.invocation, r1.started_at, r1.finished_at, r1.duration_s) == (
        RunStatus.SUCCEEDED, {"a": 1, "s": "ü"}, "inv", NOW + 0.5, NOW + 2, 1.5,
    )
    assert r1.queued_at == NOW  # a float timestamp keeps every bit
    assert r1.result == {"_type": "Odd"}
    assert [(line.level, line.message) for line in r1.logs] == [("info", "hello ü")]
    assert await store.load_result("r1") == result
    r2 = await store.run("r2")
    assert (r2.status, r2.exit_code, r2.stdout, r2.stderr, r2.result) == (RunStatus.FAILED, 3, "out ü\n", "err\n", None)
    assert await store.load_result("r2") is None
    assert [r.id for r in await store.runs(status="failed")] == ["r2"]
    assert [r.id for r in await store.runs(invocation="inv")] == ["r1"]
    assert [r.id for r in await store.runs(limit=1)] == ["r2"]
    assert [r.id for r in await store.runs_before(before="r2")] == ["r1"]
    with pytest.raises(RunNotFound):
        await store.run("nope")
    with pytest.raises(RunNotFound):
        await store.load_result("nope")
    assert sorted(await store.run_totals()) == [("a", "failed", 1, 0.0), ("a", "succeeded", 1, 1.5)]


async def test_runs_queued_at_one_moment_are_ordered_by_id(store: Store) -> None:
    ids = ["0190aaaa", "0190aaab", "0190aab0", "0190ab00"]
    await store.write_runs(RunBatch(inserts=[run_row(i, queued=NOW) for i in reversed(ids)]))
    assert [r.id for r in await store.runs()] == ids[::-1]
    assert [r.id for r in await store.runs_before(before=ids[2], limit=10)] == ids[1::-1]


async def test_log_lines_page_by_id(store: Store) -> None:
    await sync(store, wanted(spec("a"), spec("b")))
    await store.write_runs(RunBatch(inserts=[run_row("ra"), run_row("rb", "b")]))
    assert await store.last_log_id() == 0
    lines = [("ra", "log", "info", "one"), ("rb", "stdout", None, "two\n"), ("ra", "stderr", None, "three\n")]
    for run_id, stream, level, message in lines:
        await store.write_runs(
            RunBatch(logs=[LogChunk(run_id, NOW, stream, level or "", message)])
        )
    every = await store.log_lines()
    assert [(e.run_id, e.task, e.stream, e.level, e.message) for e in every] == [
        ("ra", "a", "log", "info", "one"), ("rb", "b", "stdout", None, "two\n"), ("ra", "a", "stderr", None, "three\n"),
    ]
    ids = [e.id for e in every]
    assert ids == sorted(ids) and await store.last_log_id() == ids[-1]
    assert [e.message for e in await store.log_lines("ra")] == ["one", "three\n"]
    assert [e.message for e in await store.log_lines(task="b")] == ["two\n"]
    assert [e.message for e in await store.log_lines(after=ids[0], limit=1)] == ["two\n"]


async def test_output_with_a_nul_is_recorded(store: Store) -> None:
    await store.write_runs(RunBatch(inserts=[run_row("r")]))
    await store.write_runs(
        RunBatch(
            finishes=[RunEnd("r", RunStatus.SUCCEEDED, NOW, stdout="a\x00b")],
            logs=[LogChunk("r", NOW, "stdout", "", "a\x00b")],
        )
    )
    stdout = (await store.run("r")).stdout
    assert stdout is not None and stdout[0] == "a" and stdout[-1] == "b"
    assert [len(e.message) for e in await store.log_lines("r")] == [3]
    await store.write_runs(RunBatch(inserts=[run_row("s")]))
    await store.write_runs(RunBatch(finishes=[RunEnd("s", RunStatus.SUCCEEDED, NOW, stdout="c\x00d")]))  # an end alone
    stdout = (await store.run("s")).stdout
    assert stdout is not None and stdout[0] == "c" and stdout[-1] == "d" and len(stdout) == 3


async def test_runs_of_dead_processes_are_marked_interrupted(store: Store) -> None:
    for batch in (
        recorded(run_row("dead", host="h", pid=10), "running"),
        recorded(run_row("alive", host="h", pid=11), "running"),
        recorded(run_row("done", host="h", pid=10), "succeeded"),
        RunBatch(inserts=[run_row("other-host", host="g", pid=10)]),
    ):
        await store.write_runs(batch)
    assert (await store.mark_interrupted("h", lambda pid, _started: pid == 11)).run_ids == ["dead"]
    dead = await store.run("dead")
    assert dead.status is RunStatus.INTERRUPTED and dead.error is not None
    assert dead.error["type"] == "Interrupted"
    assert {r.id: r.status.value for r in await store.runs()} == {
        "dead": "interrupted", "alive": "running", "done": "succeeded", "other-host": "queued",
    }
    assert [r.id for r in await store.started_runs_interrupted("h", 10)] == ["dead"]
    assert {task: sorted(found) for task, found in (await store.unfinished(["a"])).items()} == {
        "a": [("g", 10, None), ("h", 11, None)]
    }
    assert (await store.mark_interrupted("h", lambda pid, _started: pid == 11)).run_ids == []


async def test_a_cancel_request_reaches_only_unfinished_runs_and_is_found_by_id(store: Store) -> None:
    running, queued, done = run_row("r" * 32), run_row("q" * 32), run_row("d" * 32)
    for batch in (recorded(running, "running"), RunBatch(inserts=[queued]), recorded(done, "succeeded")):
        await store.write_runs(batch)
    assert await store.cancel_requested([]) == []
    assert await store.cancel_requested([running.id, queued.id, done.id]) == []

    assert await store.request_cancel(running.id) is CancelOutcome.REQUESTED
    assert await store.request_cancel(queued.id) is CancelOutcome.REQUESTED
    assert await store.request_cancel(done.id) is CancelOutcome.FINISHED
    with pytest.raises(RunNotFound):
        await store.request_cancel("0" * 32)
    # Asking does not change the run: the process running it records how it ended.
    assert (await store.run(running.id)).status is RunStatus.RUNNING
    assert sorted(await store.cancel_requested([running.id, queued.id, done.id, "0" * 32])) == [queued.id, running.id]
    assert await store.cancel_requested([done.id]) == []

    await store.write_runs(RunBatch(finishes=[RunEnd(running.id, RunStatus.CANCELLED, NOW + 1)]))
    assert await store.request_cancel(running.id) is CancelOutcome.FINISHED


async def test_prune_runs_keeps_unfinished_and_the_latest_success(store: Store) -> None:
    day = 86_400.0
    for batch in (
        recorded(run_row("old-ok", queued=NOW - 40 * day), "succeeded", NOW - 40 * day),
        recorded(run_row("old-failed", queued=NOW - 39 * day), "failed", NOW - 39 * day),
        recorded(run_row("old-running", queued=NOW - 50 * day), "running"),
        recorded(run_row("new-failed", queued=NOW - 60), "failed", NOW - 60),
        RunBatch(logs=[LogChunk("old-failed", NOW, "log", "info", "x")]),
    ):
        await store.write_runs(batch)
    assert await store.prune_runs(older_than=30 * day, keep_per_task=None, dry_run=True) == 1
    assert await store.prune_runs(older_than=30 * day, keep_per_task=None) == 1
    assert {r.id for r in await store.runs()} == {"old-ok", "old-running", "new-failed"}
    assert await store.log_lines() == []
    assert await store.prune_runs(older_than=None, keep_per_task=1) == 0  # old-ok is a's latest success
    await store.write_runs(recorded(run_row("newer-ok", queued=NOW - 30), "succeeded", NOW))
    assert await store.prune_runs(older_than=None, keep_per_task=1) == 2
    assert {r.id for r in await store.runs()} == {"old-running", "newer-ok"}


# -- leases, triggers, schedules -----------------------------------------------------------------


async def test_a_lease_is_taken_held_renewed_taken_over_and_released(store: Store) -> None:
    def never(_lease: Lease) -> bool:
        return False

    assert await store.acquire_lease("daemon", host="h", pid=1, pid_started=5.0, is_stale=never) is None
    held = await store.lease("daemon")
    assert held is not None and (held.host, held.pid, held.pid_started) == ("h", 1, 5.0)
    with pytest.raises(LeaseHeld) as caught:
        await store.acquire_lease("daemon", host="h", pid=2, pid_started=None, is_stale=never)
    assert caught.value.holder.pid == 1
    assert await store.renew_lease("daemon", host="h", pid=1)
    assert not await store.renew_lease("daemon", host="h", pid=2)
    renewed = await store.lease("daemon")
    assert renewed is not None and renewed.heartbeat_at >= held.heartbeat_at
    taken = await store.acquire_lease("daemon", host="g", pid=2, pid_started=None, is_stale=lambda lease: lease.pid == 1)
    assert taken is not None and taken.pid == 1
    now = await store.lease("daemon")
    assert now is not None and (now.host, now.pid) == ("g", 2)
    await store.release_lease("daemon", host="h", pid=1)  # not the holder: nothing happens
    assert await store.lease("daemon") is not None
    await store.release_lease("daemon", host="g", pid=2)
    assert await store.lease("daemon") is None


async def test_triggers_wait_until_a_batch_claims_them(store: Store) -> None:
    await store.add_trigger(Trigger("t2", "b", {"x": [1, "ü"]}, False, NOW + 1))
    await store.add_trigger(Trigger("t1", "a", {}, True, NOW))
    assert await store.triggers() == [Trigger("t1", "a", {}, True, NOW), Trigger("t2", "b", {"x": [1, "ü"]}, False, NOW + 1)]
    await store.write_runs(RunBatch(inserts=[run_row("t1")], claimed=["t1"]))
    assert [t.run_id for t in await store.triggers()] == ["t2"]


async def test_schedule_states_are_saved_replaced_and_dropped(store: Store) -> None:
    a = ScheduleState("a", '{"every": 60}', NOW, NOW + 60)
    b = ScheduleState("b", '{"cron": "* * * * *"}', NOW, NOW + 1, NOW - 59)
    await store.save_schedule_states([a, b], [])
    assert await store.schedule_states() == {"a": a, "b": b}
    a2 = ScheduleState("a", '{"every": 60}', NOW, NOW + 120, NOW + 60)
    await store.save_schedule_states([a2], ["b"])
    assert await store.schedule_states() == {"a": a2}
    await store.write_runs(
        RunBatch(inserts=[run_row("f", scheduled_for=NOW + 120)], fires=[Fire("a", NOW + 180, NOW + 120)])
    )
    assert await store.schedule_states() == {"a": ScheduleState("a", '{"every": 60}', NOW, NOW + 180, NOW + 120)}


async def test_a_fire_moves_its_schedule_only_from_where_it_stands_or_writes_nothing(store: Store) -> None:
    """Two daemons firing one fire (both led for a moment): the second's runs are not written;
    the rest of its batch is."""
    await store.save_schedule_states(
        [ScheduleState("a", '{"every": 60}', NOW, NOW + 60), ScheduleState("b", '{"every": 60}', NOW, NOW + 60)], []
    )
    await store.write_runs(RunBatch(inserts=[run_row("other", "b")]))

    def fire(task: str, run_id: str) -> RunBatch:
        return RunBatch(
            inserts=[run_row(run_id, task, scheduled_for=NOW + 60), run_row(f"{run_id}-need", "n")],
            fires=[Fire(task, NOW + 120, NOW + 60, (run_id, f"{run_id}-need"))],
        )

    assert (await store.write_runs(fire("a", "first"))).lost_fires == []
    second = fire("a", "second")
    second.inserts.append(run_row("unrelated"))
    second.finishes.append(RunEnd("other", RunStatus.SUCCEEDED, NOW))
    b = fire("b", "b-fire")
    written = await store.write_runs(
        RunBatch(inserts=second.inserts + b.inserts, finishes=second.finishes, fires=second.fires + b.fires)
    )
    assert written.lost_fires == ["a"]
    assert sorted(r.id for r in await store.runs()) == ["b-fire", "b-fire-need", "first", "first-need", "other", "unrelated"]
    assert (await store.run("other")).status is RunStatus.SUCCEEDED
    assert await store.schedule_states() == {
        "a": ScheduleState("a", '{"every": 60}', NOW, NOW + 120, NOW + 60),
        "b": ScheduleState("b", '{"every": 60}', NOW, NOW + 120, NOW + 60),
    }
    assert (await store.write_runs(fire("gone", "nowhere"))).lost_fires == ["gone"]  # no schedule row: nothing to move
    assert "nowhere" not in {r.id for r in await store.runs()}


# -- several processes at once -------------------------------------------------------------------

# Each process adds its own tasks, one sync at a time, keeping every task it finds, and counts
# its syncs in the command of the task "counter": a read-modify-write. Two syncs planned from
# one snapshot would lose a count. The processes start together: each says "ready", then waits
# for "go".
WORKER = textwrap.dedent(
    """
    import sys
    import anyio
    from runner.models import Source, TaskSpec, TaskType
    from runner.store import open_store
    from runner.syncplan import Wanted, plan

    db, me, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def keep_all_and_add(name):
        spec = TaskSpec(name=name, type=TaskType.SHELL, source=Source("tasks.d/a.yaml", 3), command="echo " + name)

        def planner(stored, _digests):
            want = {n: Wanted(t.spec, t.enabled, t.disabled_reason) for n, t in stored.items() if not t.removed}
            want[name] = Wanted(spec, True, None)
            count = int(stored["counter"].spec.command.split()[1]) + 1
            want["counter"] = Wanted(TaskSpec(name="counter", type=TaskType.SHELL, source=Source("tasks.d/a.yaml", 3),
                                              command=f"echo {count}"), True, None)
            return plan(want, stored)

        return planner

    async def main():
        async with open_store(db) as store:
            print("ready", flush=True)
            sys.stdin.readline()
            for i in range(rounds):
                done = await store.sync_tasks(keep_all_and_add(f"{me}-{i}"))
                assert done.added == (f"{me}-{i}",) and done.updated == ("counter",) and not done.removed, done
            await store.acquire_lease("daemon", host=me, pid=0, pid_started=None, is_stale=lambda lease: True)

    anyio.run(main)
    """
)


def run_together(commands: list[list[str]]) -> None:
    """Start the processes, let them go at once, and check that each succeeded."""
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
        for cmd in commands
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.communicate()[1]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=25)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_processes_syncing_at_once_lose_no_update(url: str) -> None:
    async with open_store(url) as store:
        await sync(store, wanted(spec("counter", "echo 0")))
    workers, rounds = 4, 5
    run_together([[sys.executable, "-c", WORKER, url, f"p{w}", str(rounds)] for w in range(workers)])
    async with open_store(url) as store:
        stored = await store.tasks()
        lease = await store.lease("daemon")
    assert set(stored) == {"counter"} | {f"p{w}-{i}" for w in range(workers) for i in range(rounds)}
    assert stored["counter"].spec.command == f"echo {workers * rounds}"
    assert [name for name, task in stored.items() if task.removed or not task.enabled] == []
    assert lease is not None and lease.host in {f"p{w}" for w in range(workers)}


# -- reads for the web page -------------------------------------------------------------------------


async def test_the_web_page_reads_counts_the_newest_runs_of_each_task_and_durations(store: Store) -> None:
    await sync(store, wanted(spec("a"), spec("b"), spec("idle")))
    await store.write_runs(
        RunBatch(
            inserts=[
                run_row("a-old", queued=NOW - 90_000),  # before the last 24 h
                *(run_row(f"a{i}", queued=NOW - 100 + i) for i in range(5)),
                run_row("a-new", queued=NOW),
                run_row("b1", "b", queued=NOW - 50),
                run_row("gone", "removed-task", queued=NOW),  # no such task stored
            ],
            starts=[("a-new", NOW)],
            finishes=[RunEnd("a-old", RunStatus.FAILED, NOW - 89_000)],
        )
    )
    await store.write_runs(
        RunBatch(finishes=[RunEnd(f"a{i}", RunStatus.SUCCEEDED, NOW, duration_s=float(i + 1)) for i in range(5)])
    )
    assert await store.run_counts_since(NOW - 86_400) == {RunStatus.SUCCEEDED: 5, RunStatus.RUNNING: 1, RunStatus.QUEUED: 2}
    assert await store.queued_count() == 2
    newest = await store.recent_statuses(["a", "b", "idle", "unknown"], 3)
    assert [(run.id, run.status) for run in newest["a"]] == [
        ("a-new", RunStatus.RUNNING), ("a4", RunStatus.SUCCEEDED), ("a3", RunStatus.SUCCEEDED),
    ]
    assert newest["a"][1].at == NOW  # when it ended; a run still going: when it was queued
    assert [run.id for run in newest["b"]] == ["b1"]
    assert newest["idle"] == newest["unknown"] == []
    assert await store.recent_statuses([], 3) == {}
    many = [f"t{i}" for i in range(1200)]  # more names than one statement takes
    assert set(await store.recent_statuses(["a", *many], 1)) == {"a", *many}
    assert await store.task_durations("a", 3) == [
        (NOW - 98, 3.0, RunStatus.SUCCEEDED), (NOW - 97, 4.0, RunStatus.SUCCEEDED), (NOW - 96, 5.0, RunStatus.SUCCEEDED),
    ]
    assert await store.task_durations("b", 3) == []
    assert await store.run_statuses(["a-new", "b1", "nope"]) == {"a-new": RunStatus.RUNNING, "b1": RunStatus.QUEUED}


async def test_a_version_5_store_gets_the_index_of_runs_by_status_and_time_and_cancel_requests(url: str) -> None:
    async with open_store(url) as store:
        await store.write_runs(recorded(run_row("r1"), "failed"))
        await store.write_runs(RunBatch(inserts=[run_row("r2", queued=NOW + 1)]))
    await execute(url, "DROP INDEX runs_status_queued")
    await execute(url, "CREATE INDEX runs_status ON runs (status)")
    await execute(url, "ALTER TABLE runs DROP COLUMN cancel_requested_at")
    await execute(url, "UPDATE schema_version SET version = 5")
    async with open_store(url) as store:
        assert [r.id for r in await store.runs_before(status="failed")] == ["r1"]
        assert await store.queued_count() == 1
        await store.request_cancel("r2")
        assert await store.cancel_requested(["r1", "r2"]) == ["r2"]
    assert await execute(url, "SELECT version FROM schema_version") == [(CURRENT_VERSION,)]
    # Dropped: the new index serves what it did; creating it again is what a second upgrade would do.
    with pytest.raises(Exception, match="runs_status_queued"):
        await execute(url, "CREATE INDEX runs_status_queued ON runs (status)")
    await execute(url, "CREATE INDEX runs_status ON runs (status)")
