"""The engine in-process: real projects on disk, a real SQLite store, real subprocesses and threads.

Each test writes its own project (task files and a ``plugins`` package) under ``tmp_path`` and
runs it through ``Engine``, ``run_once`` or ``runner.testing`` as ``runner run`` would. What a
run did is read back from the store, often through a second connection, the way ``runner runs``
and ``runner show`` in another process see it. Nothing waits on a clock: tasks signal through
events and files, and the tests poll for a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ProjectDir, live_members

from runner.engine import Engine
from runner.errors import ParameterError, TaskNotRunnable
from runner.models import Run, RunStatus, TaskType
from runner.oneshot import OneShot, run_once
from runner.processes import HOST
from runner.records import Owner, QueuedRun, RunBatch, RunEnd
from runner.store import Store, open_store
from runner.sync import sync_project
from runner.testing import run_task, run_task_sync

pytestmark = [pytest.mark.timeout(10), pytest.mark.usefixtures("fresh_plugins")]

SECRET = "s3cr3t-Vh7Q"  # distinctive, so that finding it in the database file means a leak

PLUGIN = '''
from __future__ import annotations

import datetime
import threading
import time
from typing import Optional

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from runner import Engine, History, RunContext, register_injectable, task

GATE = threading.Event()      # the test opens it to let a gated task finish
STARTED = threading.Event()   # a gated task sets it once it runs
SEEN: dict = {}
ACTIVE = {"now": 0, "peak": 0, "paired": False}


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __repr__(self):
        return f"Point({self.x}, {self.y})"


class Greeter:
    """A plugin's own injectable type."""

    def __init__(self, task, run_id, history, engine):
        self.task, self.run_id, self.history, self.engine = task, run_id, history, engine


register_injectable(
    Greeter,
    lambda scope: Greeter(scope.context.task, scope.context.run_id, scope.history, scope.engine),
)


@task("add_numbers")
async def add(a: int, b: int = 2) -> dict:
    return {"sum": a + b}


def thread_name() -> str:
    return threading.current_thread().name


async def thread_name_async() -> str:
    return threading.current_thread().name


def mixed() -> dict:
    return {"n": 1, "when": datetime.datetime(2026, 1, 2, 3, 4, 5), "point": Point(1, 2)}


def _deeper(what):
    raise ValueError(f"no good: {what}")


def fails(what: str = "x") -> None:
    _deeper(what)


async def forever() -> None:
    try:
        await anyio.sleep_forever()
    finally:
        SEEN["cancelled"] = True


def spin() -> None:
    SEEN["daemon"] = threading.current_thread().daemon
    try:
        while True:
            time.sleep(0.01)
    except BaseException as exc:
        SEEN["spin_stopped_by"] = type(exc).__name__
        raise


def quick() -> str:
    return "done"


async def occupy() -> None:
    ACTIVE["now"] += 1
    ACTIVE["peak"] = max(ACTIVE["peak"], ACTIVE["now"])
    try:
        if ACTIVE["now"] >= 2:
            ACTIVE["paired"] = True
        with anyio.fail_after(5):
            while not ACTIVE["paired"]:
                await anyio.sleep(0)
        for _ in range(20):  # stay active a while, so any task let in too many would show
            await anyio.sleep(0)
    finally:
        ACTIVE["now"] -= 1


def gated(ctx: RunContext, note: str = "") -> str:
    STARTED.set()
    if not GATE.wait(5):
        raise TimeoutError("the test never opened the gate")
    return "opened"


async def write_note(session: AsyncSession, value: str, fail: bool = False) -> str:
    await session.execute(text("INSERT INTO notes (value) VALUES (:v)"), {"v": value})
    if fail:
        raise RuntimeError("after writing")
    return value


async def greet(greeter: Greeter, ctx: Optional[RunContext], also: RunContext | None, history: History) -> dict:
    [running] = await history.runs(task="greet")
    return {
        "task": greeter.task,
        "same_run": greeter.run_id == ctx.run_id == also.run_id == running.id,
        "tasks": sorted(await history.tasks()),
        "tasks_seen_by_a_provider": sorted(await greeter.history.tasks()),
        "can_write": [name for name in ("write_runs", "prune_runs", "sync_tasks", "session_engine") if hasattr(history, name)],
        "engine": type(greeter.engine).__name__,
    }


async def parent(engine: Engine, ctx: RunContext) -> dict:
    child_id = await engine.submit("child", parameters={"a": 5})
    child = await engine.wait(child_id)
    return {"child_id": child_id, "status": child.status.value, "result": child.result}


def context_and_logs(ctx: RunContext, level: str = "info") -> dict:
    ctx.logger.info("using token %s", ctx.env["TOKEN"])
    ctx.logger.warning("careful with %s", level)
    return {
        "run_id": ctx.run_id,
        "task": ctx.task,
        "attempt": ctx.attempt,
        "parameters": dict(ctx.parameters),
        "token_seen": ctx.env["TOKEN"] != "",
    }


def leaky(note: str = "") -> dict:
    import os

    token = os.environ["RUNNER_TEST_SECRET"]
    return {"token": token, "note": note}


def leaky_fail() -> None:
    import os

    raise RuntimeError("token is " + os.environ["RUNNER_TEST_SECRET"])
'''


def write(project: ProjectDir, tasks: str, plugin: str = PLUGIN) -> None:
    project.tasks("a.yaml", tasks)
    project.plugin("jobs", plugin)


def jobs() -> Any:
    """The project's plugin module, as the engine imported it."""
    return sys.modules["plugins.jobs"]


async def run(project: ProjectDir, store: Store, name: str, **options: Any) -> OneShot:
    return await run_once(project.root, store, name, handle_signals=False, **options)


def db_bytes(db: Path) -> bytes:
    """The database as it is on disk, write-ahead log included."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


async def wait_for(condition: Callable[[], Any], *, within: float = 3.0) -> None:
    """Poll ``condition`` until it is true; no event tells us when another thread or process acts."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def wait_for_status(db: Path, run_id: str, status: RunStatus) -> Run:
    """Poll the run through a connection of its own until it has ``status``."""
    async with open_store(db) as other:
        with anyio.fail_after(3):
            while (found := await other.run(run_id)).status is not status:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    return found


# -- shell ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_shell_run_sees_runner_env_task_env_and_parameters(
    project: ProjectDir, store: Store, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_OUTER", "from the runner's env")
    write(
        project,
        """
        version: 1
        tasks:
          envy:
            command: [env]
            env: {GREETING: hello there}
            parameters: {name: Ada Lovelace, count: 3, opts: {a: [1, true]}, empty: null}
        """,
    )
    outcome = await run(project, store, "envy")
    target = outcome.target
    assert target is not None and target.status is RunStatus.SUCCEEDED
    assert target.exit_code == 0
    env = dict(line.split("=", 1) for line in (target.stdout or "").splitlines() if "=" in line)
    assert env["RUNNER_TEST_OUTER"] == "from the runner's env"
    assert env["GREETING"] == "hello there"
    assert env["PARAM_NAME"] == "Ada Lovelace"  # a string as it is
    assert env["PARAM_COUNT"] == "3"  # everything else as JSON
    assert json.loads(env["PARAM_OPTS"]) == {"a": [1, True]}
    assert env["PARAM_EMPTY"] == "null"
    assert json.loads(env["RUNNER_PARAMS"]) == {
        "name": "Ada Lovelace",
        "count": 3,
        "opts": {"a": [1, True]},
        "empty": None,
    }
    assert env["RUNNER_RUN_ID"] == target.id
    assert env["RUNNER_TASK"] == "envy"
    # What the store holds is what was returned.
    async with open_store(db) as other:
        stored = await other.run(target.id)
    assert stored.to_json() == target.to_json()
    assert stored.result is None and stored.error is None
    assert stored.started_at is not None and stored.finished_at is not None
    assert stored.queued_at <= stored.started_at <= stored.finished_at


@pytest.mark.anyio
async def test_list_command_is_argv_and_string_command_goes_through_sh(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          argv:
            command: [printf, "%s|", "$HOME", "a; b", "*"]
          sh:
            command: 'echo "$((6 * 7))" | tr 4 x'
        """,
    )
    argv = (await run(project, store, "argv")).target
    sh = (await run(project, store, "sh")).target
    assert argv is not None and argv.stdout == "$HOME|a; b|*|"
    assert sh is not None and sh.stdout == "x2\n"


@pytest.mark.anyio
async def test_cwd_is_relative_to_the_project_and_defaults_to_it(
    project: ProjectDir, store: Store
) -> None:
    (project.root / "sub" / "dir").mkdir(parents=True)
    write(
        project,
        """
        version: 1
        tasks:
          inside:
            command: [pwd, -P]
            cwd: sub/dir
          top:
            command: [pwd, -P]
        """,
    )
    inside = (await run(project, store, "inside")).target
    top = (await run(project, store, "top")).target
    assert inside is not None and inside.stdout == f"{(project.root / 'sub' / 'dir').resolve()}\n"
    assert top is not None and top.stdout == f"{project.root.resolve()}\n"


@pytest.mark.anyio
async def test_non_zero_exit_fails_the_run_with_its_exit_code_and_output(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          bad:
            command: 'echo out; echo oops >&2; exit 7'
        """,
    )
    target = (await run(project, store, "bad")).target
    assert target is not None
    assert (target.status, target.exit_code) == (RunStatus.FAILED, 7)
    assert (target.stdout, target.stderr) == ("out\n", "oops\n")
    assert target.error is None  # a shell run that started has no error, only its exit code


@pytest.mark.anyio
async def test_output_is_capped_per_stream_keeping_the_end_and_bad_utf8_is_replaced(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        r"""
        version: 1
        tasks:
          loud:
            command: 'seq 1 5000; printf "bad \377\376 bytes" >&2'
        """,
    )
    target = (await run(project, store, "loud", output_cap=100)).target
    assert target is not None and target.status is RunStatus.SUCCEEDED
    assert target.stdout is not None
    assert len(target.stdout.encode()) == 100
    assert target.stdout.endswith("4999\n5000\n")
    assert target.stderr == "bad \ufffd\ufffd bytes"


@pytest.mark.anyio
async def test_shell_timeout_kills_the_whole_process_group(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          sleepy:
            command: 'echo $$ > pgid; echo started; sleep 100 & sleep 100'
            timeout: 0.3s
        """,
    )
    with anyio.fail_after(4):
        target = (await run(project, store, "sleepy", kill_grace=0.5)).target
    assert target is not None
    assert target.status is RunStatus.TIMED_OUT
    assert target.exit_code is None
    assert target.stdout == "started\n"  # what it wrote before the deadline is kept
    assert target.duration_s is not None and 0.3 <= target.duration_s < 2
    pgid = int((project.root / "pgid").read_text())
    try:
        await wait_for(lambda: not live_members(pgid), within=2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


# -- python ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_python_callable_by_module_qualname_and_by_task_name(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          by_path:
            type: python
            callable: plugins.jobs:add
            parameters: {a: 40}
          by_name:
            type: python
            callable: add_numbers
            parameters: {a: 1, b: 1}
        """,
    )
    by_path = (await run(project, store, "by_path")).target
    by_name = (await run(project, store, "by_name", parameters={"b": 10})).target
    assert by_path is not None and by_path.result == {"sum": 42}
    assert by_name is not None and by_name.result == {"sum": 11}
    assert by_name.parameters == {"a": 1, "b": 10}
    assert by_path.exit_code is None and by_path.stdout is None


@pytest.mark.anyio
async def test_parameters_that_do_not_fit_are_refused_before_anything_is_recorded(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          add:
            type: python
            callable: plugins.jobs:add
            parameters: {a: 1}
        """,
    )
    with pytest.raises(ParameterError, match=r"task 'add': parameter 'a': expected int, got str"):
        await run(project, store, "add", parameters={"a": "ten"})
    with pytest.raises(ParameterError, match=r"unknown parameter 'c'.*accepts: a, b"):
        await run(project, store, "add", parameters={"c": 1})
    assert await store.runs() == []


@pytest.mark.anyio
async def test_sync_callables_run_in_worker_threads_async_ones_on_the_loop(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          sync:
            type: python
            callable: plugins.jobs:thread_name
          async:
            type: python
            callable: plugins.jobs:thread_name_async
        """,
    )
    sync_run = (await run(project, store, "sync")).target
    async_run = (await run(project, store, "async")).target
    assert sync_run is not None and async_run is not None
    assert sync_run.result == f"runner:sync:{sync_run.id}"
    assert async_run.result == threading.current_thread().name


@pytest.mark.anyio
async def test_result_has_stand_ins_in_json_and_the_original_is_loadable(
    project: ProjectDir, store: Store, db: Path
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          mixed:
            type: python
            callable: plugins.jobs:mixed
        """,
    )
    target = (await run(project, store, "mixed")).target
    assert target is not None and target.status is RunStatus.SUCCEEDED
    assert target.result == {
        "n": 1,
        "when": {
            "_type": "datetime",
            "_module": "datetime",
            "_repr": "datetime.datetime(2026, 1, 2, 3, 4, 5)",
        },
        "point": {"_type": "Point", "_module": "plugins.jobs", "_repr": "Point(1, 2)"},
    }
    import datetime

    async with open_store(db) as other:
        assert (await other.run(target.id)).result == target.result
        original = await other.load_result(target.id)
    assert original == {
        "n": 1,
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "point": jobs().Point(1, 2),
    }


@pytest.mark.anyio
async def test_exception_fails_the_run_with_type_message_and_the_tasks_traceback(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          fails:
            type: python
            callable: plugins.jobs:fails
            parameters: {what: the input}
        """,
    )
    target = (await run(project, store, "fails")).target
    assert target is not None
    assert target.status is RunStatus.FAILED
    assert target.result is None
    error = dict(target.error or {})
    assert (error["type"], error["message"]) == ("ValueError", "no good: the input")
    trace = error["traceback"]
    assert trace.startswith("Traceback (most recent call last):")
    assert str(project.root / "plugins" / "jobs.py") in trace
    assert "in _deeper" in trace and trace.rstrip().endswith("ValueError: no good: the input")
    assert "runner/engine.py" not in trace and "runner/executors" not in trace


@pytest.mark.anyio
async def test_async_callable_is_cancelled_at_its_deadline(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          forever:
            type: python
            callable: plugins.jobs:forever
            timeout: 0.2s
        """,
    )
    with anyio.fail_after(3):
        target = (await run(project, store, "forever")).target
    assert target is not None and target.status is RunStatus.TIMED_OUT
    assert target.error is not None and target.error["type"] == "TaskTimeout"
    assert "timed out after 0.2s" in target.error["message"]
    assert jobs().SEEN["cancelled"] is True  # the coroutine itself was cancelled, not left running


@pytest.mark.anyio
async def test_sync_timeout_frees_the_slot_and_abandons_the_thread(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          spin:
            type: python
            callable: plugins.jobs:spin
            timeout: 0.2s
          quick:
            type: python
            callable: plugins.jobs:quick
        """,
    )
    await sync_project(project.root, store)
    async with Engine(store, project.root, max_concurrency=1) as engine:
        spin_id = await engine.submit("spin")
        quick_id = await engine.submit("quick")
        with anyio.fail_after(2):  # quick needs the one slot that spin holds until its deadline
            quick = await engine.wait(quick_id)
            spin = await engine.wait(spin_id)
    assert quick.status is RunStatus.SUCCEEDED and quick.result == "done"
    assert spin.status is RunStatus.TIMED_OUT
    assert spin.error is not None and "abandoned" in spin.error["message"]
    seen = jobs().SEEN
    assert seen["daemon"] is True  # an abandoned thread never keeps the process alive
    await wait_for(lambda: "spin_stopped_by" in seen)
    assert seen["spin_stopped_by"] == "TaskTimeout"  # injected into the thread, best effort


@pytest.mark.anyio
async def test_max_concurrency_bounds_the_runs_executing_at_once(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          occupy:
            type: python
            callable: plugins.jobs:occupy
        """,
    )
    await sync_project(project.root, store)
    async with Engine(store, project.root, max_concurrency=2) as engine:
        ids = [await engine.submit("occupy") for _ in range(5)]
        with anyio.fail_after(5):
            finished = [await engine.wait(run_id) for run_id in ids]
    assert [r.status for r in finished] == [RunStatus.SUCCEEDED] * 5
    assert jobs().ACTIVE["peak"] == 2


@pytest.mark.anyio
async def test_running_and_queued_are_visible_to_another_connection(
    project: ProjectDir, store: Store, db: Path
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          gated:
            type: python
            callable: plugins.jobs:gated
          after:
            type: python
            callable: plugins.jobs:quick
        """,
    )
    await sync_project(project.root, store)
    async with Engine(store, project.root, max_concurrency=1) as engine:
        gated_id = await engine.submit("gated")
        after_id = await engine.submit("after")
        await anyio.to_thread.run_sync(jobs().STARTED.wait, 3)
        running = await wait_for_status(db, gated_id, RunStatus.RUNNING)
        assert running.started_at is not None and running.finished_at is None
        async with open_store(db) as other:
            assert (await other.run(after_id)).status is RunStatus.QUEUED  # waiting for the slot
        jobs().GATE.set()
        with anyio.fail_after(3):
            await engine.wait(after_id)
    async with open_store(db) as other:
        done = await other.run(gated_id)
    assert done.status is RunStatus.SUCCEEDED and done.result == "opened"
    assert done.finished_at is not None


@pytest.mark.anyio
async def test_injected_session_commits_on_success_and_rolls_back_on_failure(
    project: ProjectDir, store: Store, db: Path
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          note:
            type: python
            callable: plugins.jobs:write_note
            parameters: {value: none}
        """,
    )
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE notes (value TEXT)")
        conn.commit()
    kept = (await run(project, store, "note", parameters={"value": "kept"})).target
    lost = (await run(project, store, "note", parameters={"value": "lost", "fail": True})).target
    assert kept is not None and kept.status is RunStatus.SUCCEEDED
    assert lost is not None and lost.status is RunStatus.FAILED
    assert lost.error is not None and lost.error["message"] == "after writing"
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT value FROM notes").fetchall() == [("kept",)]


@pytest.mark.anyio
async def test_plugin_registers_its_own_injectable_and_optional_hints_work(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          greet:
            type: python
            callable: plugins.jobs:greet
        """,
    )
    target = (await run(project, store, "greet")).target
    assert target is not None, target
    assert target.status is RunStatus.SUCCEEDED, target.error
    assert target.result == {
        "task": "greet",
        "same_run": True,
        "tasks": ["greet"],
        "tasks_seen_by_a_provider": ["greet"],
        "can_write": [],
        "engine": "Engine",
    }


@pytest.mark.anyio
async def test_injected_engine_submits_another_task_and_waits_for_it(
    project: ProjectDir, store: Store, db: Path
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          parent:
            type: python
            callable: plugins.jobs:parent
          child:
            type: python
            callable: plugins.jobs:add
            parameters: {a: 1}
        """,
    )
    target = (await run(project, store, "parent")).target
    assert target is not None and target.status is RunStatus.SUCCEEDED, target
    result = target.result
    assert result["status"] == "succeeded" and result["result"] == {"sum": 7}
    async with open_store(db) as other:
        child = await other.run(result["child_id"])
        children = await other.runs(task="child")
    assert child.status is RunStatus.SUCCEEDED
    assert (child.trigger, child.parent_id) == ("task", target.id)
    assert child.parameters == {"a": 5}
    assert [r.id for r in children] == [child.id]


@pytest.mark.anyio
async def test_a_task_waiting_for_the_task_it_started_gives_its_slot_back(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          parent:
            type: python
            callable: plugins.jobs:parent
          child:
            type: python
            callable: plugins.jobs:add
            parameters: {a: 1}
        """,
    )
    with anyio.fail_after(5):  # with the one slot held while waiting, this would never end
        target = (await run(project, store, "parent", max_concurrency=1)).target
    assert target is not None and target.status is RunStatus.SUCCEEDED, target
    assert target.result["status"] == "succeeded"


@pytest.mark.anyio
async def test_run_context_fields_and_logger_lines_are_stored_and_masked(
    project: ProjectDir, store: Store, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_SECRET", SECRET)
    write(
        project,
        """
        version: 1
        tasks:
          ctx:
            type: python
            callable: plugins.jobs:context_and_logs
            env: {TOKEN: {from_env: RUNNER_TEST_SECRET}}
        """,
    )
    target = (await run(project, store, "ctx", parameters={"level": "high"})).target
    assert target is not None and target.status is RunStatus.SUCCEEDED
    assert target.result == {
        "run_id": target.id,
        "task": "ctx",
        "attempt": 1,
        "parameters": {"level": "high"},
        "token_seen": True,
    }
    async with open_store(db) as other:
        shown = (await other.run(target.id)).to_json(with_logs=True)
    assert [(line["level"], line["message"]) for line in shown["logs"]] == [
        ("info", "using token ***"),
        ("warning", "careful with high"),
    ]
    assert all(line["at"].endswith("+00:00") for line in shown["logs"])
    assert SECRET.encode() not in db_bytes(db)


# -- secrets --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_secrets_are_masked_in_everything_kept_and_never_reach_the_store(
    project: ProjectDir, store: Store, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_SECRET", SECRET)
    (project.root / "secrets").mkdir()
    (project.root / "secrets" / "file_token").write_text("f1le-Zq9P\n")
    write(
        project,
        """
        version: 1
        tasks:
          shell:
            command: 'echo "env=$TOKEN file=$FROM_FILE note=$PARAM_NOTE"; echo "$TOKEN" >&2; exit 1'
            env: {TOKEN: {from_env: RUNNER_TEST_SECRET}, FROM_FILE: {from_file: secrets/file_token}}
            parameters: {note: plain}
          result:
            type: python
            callable: plugins.jobs:leaky
            env: {TOKEN: {from_env: RUNNER_TEST_SECRET}}
          raises:
            type: python
            callable: plugins.jobs:leaky_fail
            env: {TOKEN: {from_env: RUNNER_TEST_SECRET}}
        """,
    )
    shell = (await run(project, store, "shell", parameters={"note": SECRET})).target
    result = (await run(project, store, "result", parameters={"note": f"x{SECRET}x"})).target
    raises = (await run(project, store, "raises")).target
    assert shell is not None and result is not None and raises is not None
    assert shell.stdout == "env=*** file=*** note=***\n"
    assert shell.stderr == "***\n"
    assert shell.parameters == {"note": "***"}
    assert result.result == {"token": "***", "note": "x***x"}
    assert result.parameters == {"note": "x***x"}
    assert raises.error is not None
    assert raises.error["message"] == "token is ***"
    assert SECRET not in raises.error["traceback"]
    # The original result held the secret, so it is not kept: the masked copy is what loads.
    assert await store.load_result(result.id) == {"token": "***", "note": "x***x"}
    async with open_store(db) as other:
        shown = [(await other.run(r.id)).to_json() for r in (shell, result, raises)]
    assert SECRET not in json.dumps(shown) and "f1le-Zq9P" not in json.dumps(shown)
    raw = db_bytes(db)
    assert SECRET.encode() not in raw and b"f1le-Zq9P" not in raw


@pytest.mark.anyio
async def test_secret_parameter_is_masked_while_queued_running_and_after_cancel(
    project: ProjectDir, store: Store, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_SECRET", SECRET)
    write(
        project,
        """
        version: 1
        tasks:
          gated:
            type: python
            callable: plugins.jobs:gated
            env: {TOKEN: {from_env: RUNNER_TEST_SECRET}}
        """,
    )
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(
                functools.partial(run, project, store, "gated", parameters={"note": SECRET})
            )
            await wait_for(lambda: "plugins.jobs" in sys.modules)
            await anyio.to_thread.run_sync(jobs().STARTED.wait, 3)
            [running] = await store.runs()
            await wait_for_status(db, running.id, RunStatus.RUNNING)
            assert SECRET.encode() not in db_bytes(db)
            assert (await store.run(running.id)).parameters == {"note": "***"}
            scope.cancel()
    jobs().GATE.set()  # let the abandoned thread end
    cancelled = await store.run(running.id)
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.parameters == {"note": "***"}
    assert SECRET.encode() not in db_bytes(db)


@pytest.mark.anyio
async def test_missing_secret_fails_the_run_with_a_clear_error(
    project: ProjectDir, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNNER_TEST_ABSENT", raising=False)
    write(
        project,
        """
        version: 1
        tasks:
          needs_token:
            command: 'echo should not run'
            env: {TOKEN: {from_env: RUNNER_TEST_ABSENT}}
        """,
    )
    target = (await run(project, store, "needs_token")).target
    assert target is not None and target.status is RunStatus.FAILED
    assert target.stdout is None and target.exit_code is None
    assert target.error is not None
    assert target.error["type"] == "SecretUnavailable"
    assert "environment variable RUNNER_TEST_ABSENT is not set" in target.error["message"]


# -- needs, retries, cancellation, recovery ---------------------------------------------------


NEEDS = """
version: 1
tasks:
  first:
    command: 'echo first >> order; test "$PARAM_OK" = yes'
    parameters: {ok: "yes"}
  second:
    command: 'echo second >> order; echo "x=$PARAM_X"'
    parameters: {x: own}
    needs: [first]
  third:
    command: 'echo third >> order; echo "x=$PARAM_X"'
    parameters: {x: own}
    needs: [second]
"""


@pytest.mark.anyio
async def test_needs_run_first_and_the_target_comes_last(project: ProjectDir, store: Store) -> None:
    write(project, NEEDS)
    outcome = await run(project, store, "third", parameters={"x": "override"})
    assert [(r.task, r.status) for r in outcome.runs] == [
        ("first", RunStatus.SUCCEEDED),
        ("second", RunStatus.SUCCEEDED),
        ("third", RunStatus.SUCCEEDED),
    ]
    assert outcome.target is outcome.runs[-1]
    assert (project.root / "order").read_text() == "first\nsecond\nthird\n"
    # -p overrides the target's parameters only, never its needs'.
    assert outcome.runs[1].stdout == "x=own\n"
    assert outcome.runs[2].stdout == "x=override\n"
    assert outcome.runs[2].parameters == {"x": "override"}


@pytest.mark.anyio
async def test_failed_need_skips_everything_downstream(project: ProjectDir, store: Store) -> None:
    write(project, NEEDS.replace('ok: "yes"', 'ok: "no"'))
    outcome = await run(project, store, "third")
    assert [(r.task, r.status) for r in outcome.runs] == [
        ("first", RunStatus.FAILED),
        ("second", RunStatus.SKIPPED),
        ("third", RunStatus.SKIPPED),
    ]
    third = outcome.runs[2]
    assert (
        third.error is not None
        and third.error["message"] == "a need did not succeed: second skipped"
    )
    assert third.started_at is None  # a skipped run never started
    assert (project.root / "order").read_text() == "first\n"
    assert {r.status for r in await store.runs()} == {RunStatus.FAILED, RunStatus.SKIPPED}


@pytest.mark.anyio
async def test_without_needs_only_the_target_runs(project: ProjectDir, store: Store) -> None:
    write(project, NEEDS)
    outcome = await run(project, store, "third", with_needs=False)
    assert [r.task for r in outcome.runs] == ["third"]
    assert (project.root / "order").read_text() == "third\n"


@pytest.mark.anyio
async def test_retry_reruns_a_failed_run_as_a_new_attempt(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          flaky:
            command: 'if [ -f marker ]; then echo second try; else touch marker; exit 1; fi'
            retries: {count: 2, backoff: 0s}
        """,
    )
    outcome = await run(project, store, "flaky")
    second, first = await store.runs(task="flaky")  # newest first
    assert (first.status, first.attempt, first.trigger) == (RunStatus.FAILED, 1, "cli")
    assert (second.status, second.attempt, second.trigger) == (RunStatus.SUCCEEDED, 2, "retry")
    assert second.parent_id == first.id
    assert second.stdout == "second try\n"
    assert outcome.target is not None and outcome.target.id == second.id
    # Every run made is reported, the target's final attempt last.
    assert [r.id for r in outcome.runs] == [first.id, second.id]


@pytest.mark.anyio
async def test_timed_out_run_is_retried_until_its_retries_are_used_up(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          slow:
            command: 'sleep 10'
            timeout: 0.2s
            retries: 1
        """,
    )
    with anyio.fail_after(4):
        outcome = await run(project, store, "slow")
    history = await store.runs(task="slow")
    assert [(r.attempt, r.status) for r in history] == [
        (2, RunStatus.TIMED_OUT),
        (1, RunStatus.TIMED_OUT),
    ]
    assert outcome.target is not None and outcome.target.attempt == 2


@pytest.mark.anyio
async def test_cancelling_a_run_kills_its_shell_and_records_it_cancelled(
    project: ProjectDir, store: Store, db: Path
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          long:
            command: 'echo $$ > pgid; sleep 100 & sleep 100'
          after:
            command: 'echo never'
            needs: [long]
        """,
    )
    pgid_file = project.root / "pgid"
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(run, project, store, "after")
            await wait_for(pgid_file.exists)
            await wait_for(lambda: pgid_file.read_text().strip() != "")
            scope.cancel()
    pgid = int(pgid_file.read_text())
    try:
        await wait_for(lambda: not live_members(pgid), within=2)
    finally:  # whatever this test's failure, it leaves nothing running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    async with open_store(db) as other:
        runs = {r.task: r for r in await other.runs()}
    assert runs["long"].status is RunStatus.CANCELLED
    assert runs["long"].error is not None and runs["long"].error["message"] == "stopped on request"
    assert runs["after"].status is RunStatus.CANCELLED
    assert runs["after"].started_at is None


@pytest.mark.anyio
async def test_cancel_while_the_shell_is_being_started_leaves_nothing_behind(
    project: ProjectDir, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a busy machine a SIGINT can land after the shell forked its children but before
    # open_process returned. Here that moment is made certain: the cancel comes from inside
    # Popen, once the shell's background child exists.
    write(
        project,
        """
        version: 1
        tasks:
          long:
            command: 'sleep 100 & echo $! > bgpid; sleep 100'
        """,
    )
    bgpid = project.root / "bgpid"
    scope = anyio.CancelScope()
    spawn = subprocess.Popen._execute_child

    def spawn_then_cancel(self: subprocess.Popen[bytes], *args: Any, **kwargs: Any) -> None:
        spawn(self, *args, **kwargs)
        if "sleep 100 &" in str(args[0]):
            deadline = time.monotonic() + 3
            while not (bgpid.exists() and bgpid.read_text().strip()):
                assert time.monotonic() < deadline, "the shell never started its child"
                time.sleep(0.01)  # blocks the loop on purpose: open_process has not returned
            scope.cancel()

    monkeypatch.setattr(subprocess.Popen, "_execute_child", spawn_then_cancel)
    with scope:
        await run(project, store, "long")
    monkeypatch.undo()
    try:
        pgid = os.getpgid(int(bgpid.read_text()))
    except ProcessLookupError:
        pass  # the background child is gone already, as it should be
    else:
        try:
            await wait_for(lambda: not live_members(pgid), within=3)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    [cancelled] = await store.runs()
    assert cancelled.status is RunStatus.CANCELLED


@pytest.mark.anyio
async def test_opening_the_store_marks_runs_of_dead_processes_interrupted(
    store: Store, db: Path
) -> None:
    dead = await anyio.run_process([sys.executable, "-c", "import os; print(os.getpid())"])
    dead_pid = int(dead.stdout)  # a process that has exited: its runs can never finish

    def row(run_id: str, pid: int) -> QueuedRun:
        return QueuedRun(
            id=run_id, task="t", type=TaskType.SHELL, attempt=1, trigger="cli", parent_id=None,
            invocation=run_id, parameters_json="{}", queued_at=1.0, owner=Owner(HOST, pid, None),
        )

    await store.write_runs(
        RunBatch(
            inserts=[
                row("dead-running", dead_pid),
                row("dead-queued", dead_pid),
                row("dead-finished", dead_pid),
                row("alive-running", os.getpid()),
            ],
            starts=[("dead-running", 1.0), ("alive-running", 1.0)],
            finishes=[RunEnd("dead-finished", RunStatus.SUCCEEDED, 1.0)],
        )
    )
    async with open_store(db) as reopened:
        statuses = {r.id: r.status for r in await reopened.runs()}
        interrupted = await reopened.run("dead-running")
    assert statuses == {
        "dead-running": RunStatus.INTERRUPTED,
        "dead-queued": RunStatus.INTERRUPTED,
        "dead-finished": RunStatus.SUCCEEDED,
        "alive-running": RunStatus.RUNNING,
    }
    assert interrupted.error is not None and interrupted.error["type"] == "Interrupted"
    assert interrupted.finished_at is not None


# -- what cannot run ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tasks_that_cannot_run_say_which_and_where(project: ProjectDir, store: Store) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          hello:
            command: echo hi
          paused:
            command: echo paused
            enabled: false
          lost:
            type: python
            callable: plugins.jobs:no_such_thing
          unfit:
            type: python
            callable: plugins.jobs:add
            parameters: {b: 1}
          wants_paused:
            command: echo hi
            needs: [paused]
          gone:
            command: echo gone
        """,
    )
    await sync_project(project.root, store)
    tasks = (project.root / "tasks.d" / "a.yaml").read_text()
    (project.root / "tasks.d" / "a.yaml").write_text(
        tasks.replace("  gone:\n    command: echo gone\n", "")
    )
    cases = {
        "helo": r"task 'helo' is not declared in tasks\.d \(did you mean 'hello'\?\)",
        "paused": r"task 'paused' is disabled in tasks\.d/a\.yaml:5 \(enabled: false\)",
        "lost": r"task 'lost' is orphaned \(tasks\.d/a\.yaml:8\): module plugins\.jobs has no attribute 'no_such_thing'",
        "unfit": r"task 'unfit' is invalid \(tasks\.d/a\.yaml:11\): missing parameter 'a'",
        "wants_paused": r"task 'wants_paused' needs 'paused', which is disabled in tasks\.d/a\.yaml:5",
        "gone": r"task 'gone' was removed from the task files",
    }
    for name, message in cases.items():
        with pytest.raises(TaskNotRunnable, match=message):
            await run(project, store, name)
    assert await store.runs() == []


# -- runner.testing -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_run_task_returns_the_run_the_runs_of_its_needs_and_the_value(
    project: ProjectDir,
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          prepare:
            command: echo ready
          mixed:
            type: python
            callable: plugins.jobs:mixed
            needs: [prepare]
        """,
    )
    outcome = await run_task("mixed", project=project.root)
    assert outcome.succeeded
    assert [r.task for r in outcome.runs] == ["prepare", "mixed"]
    assert outcome.run is outcome.runs[-1]
    assert outcome.value["point"] == jobs().Point(1, 2)  # the original object, not its stand-in
    assert outcome.run.result["point"]["_type"] == "Point"


@pytest.mark.anyio
async def test_the_runs_reported_are_whole_records_as_their_constructor_makes_them(
    project: ProjectDir, store: Store
) -> None:
    # The engine fills its Run records, and the RunContext a task gets, without the dataclass's
    # __init__ (a frozen one's costs a twelfth of a no-op run): each must still have every
    # field, and equal the one the constructor makes from the same values.
    plugin = PLUGIN + """

def whole_context(ctx: RunContext) -> dict:
    import dataclasses

    return {
        "fields": sorted(vars(ctx)) == sorted(field.name for field in dataclasses.fields(ctx)),
        "equal": dataclasses.replace(ctx) == ctx,
    }
"""
    write(
        project,
        """
        version: 1
        tasks:
          hello:
            command: echo hi
          returns:
            type: python
            callable: plugins.jobs:whole_context
            needs: [hello]
          fails:
            type: python
            callable: plugins.jobs:fails
            needs: [returns]
          skipped:
            command: "true"
            needs: [fails]
        """,
        plugin,
    )
    outcome = await run(project, store, "skipped")
    assert [(r.task, r.status) for r in outcome.runs] == [
        ("hello", RunStatus.SUCCEEDED), ("returns", RunStatus.SUCCEEDED), ("fails", RunStatus.FAILED),
        ("skipped", RunStatus.SKIPPED),
    ]
    assert outcome.runs[1].result == {"fields": True, "equal": True}
    names = {field.name for field in dataclasses.fields(Run)}
    for run_ in outcome.runs:
        assert set(vars(run_)) == names
        assert dataclasses.replace(run_) == run_


def test_run_task_sync_works_from_plain_tests(project: ProjectDir) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          add:
            type: python
            callable: add_numbers
            parameters: {a: 1}
        """,
    )
    outcome = run_task_sync("add", project=project.root, parameters={"a": 10, "b": 5})
    assert outcome.succeeded
    assert outcome.value == {"sum": 15}
    assert outcome.run.parameters == {"a": 10, "b": 5}
    assert outcome.runs == [outcome.run]
