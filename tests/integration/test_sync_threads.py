"""Sync python tasks in the engine's reused threads: few threads for many runs, each run with
its own context variables and its own print() and logging, and a timed-out run's thread
abandoned and replaced. A real SQLite store and real threads; nothing waits on a clock."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import weakref
from typing import Any

import anyio
import pytest
from conftest import ProjectDir

from runner.engine import Engine
from runner.executors.python import call_python
from runner.models import RunStatus
from runner.signature import inspect_callable
from runner.store import Store
from runner.sync import sync_project

pytestmark = [pytest.mark.timeout(10), pytest.mark.usefixtures("fresh_plugins")]

PLUGIN = '''
import logging
import threading
from contextvars import ContextVar

from runner import RunContext, current_run

THREADS = []                # the thread each run ran in, in order
MARK = ContextVar("mark", default=None)
GATE = threading.Event()    # the test opens it to let a stuck task return


def which() -> str:
    THREADS.append(threading.current_thread())
    return threading.current_thread().name


def context(ctx: RunContext) -> dict:
    before = MARK.get()
    MARK.set(ctx.run_id)    # a reused thread must not hand this to the next run
    return {"before": before, "current_run": current_run.get().run_id, "ctx": ctx.run_id}


def talk(ctx: RunContext, lines: int = 1) -> None:
    for i in range(lines):
        print(ctx.run_id, i)
        logging.getLogger("plugins.talk").warning("%s %d", ctx.run_id, i)


def stuck() -> None:
    THREADS.append(threading.current_thread())
    GATE.wait(8)            # a blocking call: TaskTimeout cannot stop it, only its return can
'''

TASKS = """
version: 1
tasks:
  which:
    type: python
    callable: plugins.jobs:which
  context:
    type: python
    callable: plugins.jobs:context
  talk:
    type: python
    callable: plugins.jobs:talk
  stuck:
    type: python
    callable: plugins.jobs:stuck
    timeout: 0.2s
"""


def jobs() -> Any:
    return sys.modules["plugins.jobs"]


async def submit_all(engine: Engine, task: str, count: int, **parameters: Any) -> list[Any]:
    ids = [await engine.submit(task, parameters=parameters) for _ in range(count)]
    with anyio.fail_after(8):
        return [await engine.wait(run_id) for run_id in ids]


@pytest.fixture
async def project_synced(project: ProjectDir, store: Store) -> ProjectDir:
    project.tasks("a.yaml", TASKS)
    project.plugin("jobs", PLUGIN)
    await sync_project(project.root, store)
    return project


@pytest.mark.anyio
async def test_many_sync_runs_share_as_many_threads_as_run_at_once(project_synced: ProjectDir, store: Store) -> None:
    async with Engine(store, project_synced.root, max_concurrency=4) as engine:
        runs = await submit_all(engine, "which", 200)
    assert [run.status for run in runs] == [RunStatus.SUCCEEDED] * 200
    assert [run.result for run in runs] == [f"runner:which:{run.id}" for run in runs]  # named per run
    threads = jobs().THREADS
    assert len(threads) == 200
    assert 1 <= len({id(thread) for thread in threads}) <= 4
    assert all(thread.daemon for thread in threads)


@pytest.mark.anyio
async def test_sync_calls_started_together_that_block_each_get_a_thread() -> None:
    # Started in one go, the calls wait in one queue for the pool's one idle thread; the thread
    # that takes the first wakes another for the rest, so none waits behind a call that blocks.
    meet = threading.Barrier(3, timeout=5)

    def warm() -> None:
        pass

    def block() -> str:
        meet.wait()  # returns only when two more calls wait beside this one
        return threading.current_thread().name

    await call_python(warm, inspect_callable(warm), {}, scope=None, time_limit=None)
    outcomes = await asyncio.gather(
        *(call_python(block, inspect_callable(block), {}, scope=None, time_limit=None, thread_name=f"t{i}")
          for i in range(3))
    )
    assert [outcome.error for outcome in outcomes] == [None] * 3
    assert [outcome.value for outcome in outcomes] == ["t0", "t1", "t2"]


@pytest.mark.anyio
async def test_a_timed_out_run_frees_its_slot_at_the_deadline_and_its_thread_is_replaced(
    project_synced: ProjectDir, store: Store
) -> None:
    async with Engine(store, project_synced.root, max_concurrency=1) as engine:
        [warm] = await submit_all(engine, "which", 1)  # a thread to reuse, were it not abandoned
        stuck_id = await engine.submit("stuck")
        after_id = await engine.submit("which")
        with anyio.fail_after(3):  # "which" needs the one slot that "stuck" holds until 0.2 s
            after = await engine.wait(after_id)
            stuck = await engine.wait(stuck_id)
        warm_thread, stuck_thread, after_thread = jobs().THREADS
        assert stuck_thread is warm_thread  # the idle thread was reused ...
        assert stuck_thread.is_alive()      # ... and is still blocked when the next run ends
        assert after_thread is not stuck_thread  # so that run got another thread
        jobs().GATE.set()
        await anyio.to_thread.run_sync(stuck_thread.join, 3)
        assert not stuck_thread.is_alive()  # TaskTimeout raised in it once the blocking call returned
        [later] = await submit_all(engine, "which", 1)
    assert warm.status is after.status is later.status is RunStatus.SUCCEEDED
    assert stuck.status is RunStatus.TIMED_OUT
    assert stuck.error is not None and "abandoned" in stuck.error["message"]
    assert jobs().THREADS[-1] is after_thread  # the abandoned thread never came back to the pool
    assert stuck_thread.daemon  # and would never have kept the process from exiting


@pytest.mark.anyio
async def test_context_variables_and_current_run_are_each_runs_own_in_a_reused_thread(
    project_synced: ProjectDir, store: Store
) -> None:
    async with Engine(store, project_synced.root, max_concurrency=2) as engine:
        runs = await submit_all(engine, "context", 50)
    assert [run.status for run in runs] == [RunStatus.SUCCEEDED] * 50
    assert [run.result for run in runs] == [
        {"before": None, "current_run": run.id, "ctx": run.id} for run in runs
    ]


@pytest.mark.anyio
async def test_print_and_logging_of_concurrent_sync_runs_go_to_their_own_runs(
    project_synced: ProjectDir, store: Store
) -> None:
    async with Engine(store, project_synced.root, max_concurrency=4) as engine:
        runs = await submit_all(engine, "talk", 24, lines=40)
    for run in runs:
        assert run.status is RunStatus.SUCCEEDED
        assert run.stdout == "".join(f"{run.id} {i}\n" for i in range(40))
        assert [line.message for line in run.logs] == [f"plugins.talk: {run.id} {i}" for i in range(40)]


FORK_SCRIPT = """
import asyncio, os, sys
from runner.executors.python import call_python
from runner.signature import inspect_callable

def me():
    return "ran in " + ("child" if os.getpid() != PARENT else "parent")

async def call():
    outcome = await asyncio.wait_for(call_python(me, inspect_callable(me), {}, scope=None, time_limit=None), 3)
    return outcome.value

PARENT = os.getpid()
print(asyncio.run(call()), flush=True)  # leaves an idle thread in the pool, which a fork does not copy
pid = os.fork()
if pid == 0:
    try:
        print(asyncio.run(call()), flush=True)
    finally:
        os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_forked_child_runs_sync_calls_in_threads_of_its_own() -> None:
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=10)
    assert done.stdout == "ran in parent\nran in child\n", done.stderr


def test_an_event_loop_that_ran_sync_calls_is_not_kept_alive_once_closed() -> None:
    def quick() -> int:
        return 1

    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(call_python(quick, inspect_callable(quick), {}, scope=None, time_limit=None)).value == 1
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None
