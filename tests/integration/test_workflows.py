"""Workflows in-process: per-task concurrency, retry delays, and results passed downstream.

What is easier to see from inside than through the command: how many runs of one task execute
at once (a plugin counts them), which runs wait for a slot and in which status, the numbers
``retry_delay`` produces, and what a callable that asks for ``Upstream`` is given. Projects are
written under ``tmp_path`` and run against a real SQLite store; tasks signal through module
state, and the tests poll for a condition with a deadline instead of waiting on a clock.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ProjectDir

from runner import Upstream
from runner.engine import MAX_BACKOFF, Engine, retry_delay
from runner.models import RunStatus
from runner.oneshot import run_once
from runner.store import Store, open_store
from runner.sync import sync_project

pytestmark = [pytest.mark.timeout(10), pytest.mark.usefixtures("fresh_plugins")]

PLUGIN = '''
import anyio

from runner import Upstream

ACTIVE = {}  # task name -> {"now": runs executing, "peak": most at once}
OPEN = {"gate": False}


async def occupy(ctx_name: str, fill: int) -> int:
    """Stay running until ``fill`` runs of ``ctx_name`` run at once (so that a limit that let in
    more would show in the peak), then a little longer; return the peak seen."""
    seen = ACTIVE.setdefault(ctx_name, {"now": 0, "peak": 0})
    seen["now"] += 1
    seen["peak"] = max(seen["peak"], seen["now"])
    try:
        with anyio.fail_after(5):
            while seen["now"] < fill and seen["peak"] < fill:
                await anyio.sleep(0)
        for _ in range(20):
            await anyio.sleep(0)
        return seen["peak"]
    finally:
        seen["now"] -= 1


async def gate() -> str:
    """Run until the test opens the gate (or 5 s pass)."""
    seen = ACTIVE.setdefault("gate", {"now": 0, "peak": 0})
    seen["now"] += 1
    seen["peak"] = max(seen["peak"], seen["now"])
    try:
        with anyio.fail_after(5):
            while not OPEN["gate"]:
                await anyio.sleep(0.005)
        return "opened"
    finally:
        seen["now"] -= 1


def quick() -> str:
    return "done"


def numbers() -> dict:
    return {"a": 1, "b": 2}


def lookup(upstream: Upstream, name: str) -> object:
    return upstream[name]


def inspect(upstream: Upstream) -> dict:
    return {
        "names": sorted(upstream),
        "len": len(upstream),
        "has_words": "words" in upstream,
        "get_missing": upstream.get("nope", "default"),
        "runs": sorted(upstream.runs),
        "statuses": sorted(run.status.value for run in upstream.runs.values()),
        "repr": repr(upstream),
    }
'''


def write(project: ProjectDir, tasks: str) -> None:
    project.tasks("a.yaml", tasks)
    project.plugin("flow", PLUGIN)


def flow() -> Any:
    """The project's plugin module, as the engine imported it."""
    return sys.modules["plugins.flow"]


async def wait_for(condition: Callable[[], Any], *, within: float = 3.0) -> None:
    """Poll ``condition`` until it is true; no event tells us when a task reached a point."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


# -- per-task concurrency -------------------------------------------------------------------------

LIMITS = """
version: 1
tasks:
  limited:
    type: python
    callable: plugins.flow:occupy
    parameters: {ctx_name: limited, fill: 2}
    concurrency: 2
  free:
    type: python
    callable: plugins.flow:occupy
    parameters: {ctx_name: free, fill: 4}
"""


@pytest.mark.anyio
async def test_concurrency_bounds_the_runs_of_one_task_and_no_limit_is_the_default(
    project: ProjectDir, store: Store
) -> None:
    write(project, LIMITS)
    await sync_project(project.root, store)
    async with Engine(store, project.root) as engine:
        ids = [await engine.submit(name) for name in ["limited", "free"] * 4]
        with anyio.fail_after(5):
            finished = [await engine.wait(run_id) for run_id in ids]
    assert [r.status for r in finished] == [RunStatus.SUCCEEDED] * 8
    assert flow().ACTIVE["limited"]["peak"] == 2  # 4 submitted, 2 at a time
    assert flow().ACTIVE["free"]["peak"] == 4  # no limit of its own: all 4 at once


@pytest.mark.anyio
async def test_a_changed_concurrency_applies_to_the_next_runs_after_a_sync(
    project: ProjectDir, store: Store
) -> None:
    write(project, LIMITS)
    await sync_project(project.root, store)
    async with Engine(store, project.root) as engine:
        first = [await engine.submit("limited") for _ in range(2)]
        with anyio.fail_after(5):
            for run_id in first:
                await engine.wait(run_id)
        write(
            project,
            LIMITS.replace("concurrency: 2", "concurrency: 3").replace("fill: 2", "fill: 3"),
        )
        await sync_project(project.root, store)
        await engine.reload()
        flow().ACTIVE["limited"]["peak"] = 0
        again = [await engine.submit("limited") for _ in range(6)]
        with anyio.fail_after(5):
            finished = [await engine.wait(run_id) for run_id in again]
    assert [r.status for r in finished] == [RunStatus.SUCCEEDED] * 6
    assert flow().ACTIVE["limited"]["peak"] == 3


@pytest.mark.anyio
async def test_a_run_waiting_for_its_tasks_limit_is_queued_and_holds_no_global_slot(
    project: ProjectDir, store: Store, db: Path
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          gate:
            type: python
            callable: plugins.flow:gate
            concurrency: 1
          quick:
            type: python
            callable: plugins.flow:quick
        """,
    )
    await sync_project(project.root, store)
    async with Engine(store, project.root, max_concurrency=2) as engine:
        running_id = await engine.submit("gate")
        waiting_id = await engine.submit("gate")
        await wait_for(lambda: flow().ACTIVE.get("gate", {}).get("now") == 1)
        # Two global slots, one taken by the gate: the waiting gate must not hold the other.
        quick = await engine.wait(await engine.submit("quick"))
        assert (quick.status, quick.result) == (RunStatus.SUCCEEDED, "done")
        async with open_store(db) as other:
            assert (await other.run(running_id)).status is RunStatus.RUNNING
            assert (await other.run(waiting_id)).status is RunStatus.QUEUED
        # Stopping now: the one running is cancelled, the one waiting never started.
        engine.cancel_submitted()
        with anyio.fail_after(3):
            running, waiting = await engine.wait(running_id), await engine.wait(waiting_id)
    assert flow().ACTIVE["gate"]["peak"] == 1
    assert running.status is RunStatus.CANCELLED and running.started_at is not None
    assert waiting.status is RunStatus.CANCELLED and waiting.started_at is None
    assert waiting.error is not None
    assert waiting.error["message"] == "stopped on request before it started"


# -- retry delays ---------------------------------------------------------------------------------


def test_retry_delay_doubles_each_attempt_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # no jitter: the upper bound
    assert [retry_delay(10, n) for n in range(1, 6)] == [10, 20, 40, 80, 160]
    assert retry_delay(10, 9) == 2560
    assert retry_delay(10, 10) == MAX_BACKOFF == 3600  # 5120 is past the one-hour cap
    assert retry_delay(10, 5000) == 3600  # no overflow, however many attempts
    assert retry_delay(0.01, 3) == pytest.approx(0.04)
    assert retry_delay(7200, 1) == retry_delay(7200, 30) == 7200  # a longer backoff is its own cap
    assert retry_delay(0, 1) == retry_delay(0, 2000) == 0  # backoff 0: retry at once
    monkeypatch.setattr(random, "uniform", lambda low, high: low)  # the most jitter: half
    assert [retry_delay(10, n) for n in range(1, 4)] == [5, 10, 20]
    assert retry_delay(10, 60) == 1800


def test_retry_delay_jitter_spreads_over_the_upper_half() -> None:
    delays = [retry_delay(2, 3) for _ in range(2000)]  # 2 s doubled twice: 8 s at most
    assert all(4 <= d <= 8 for d in delays)
    assert min(delays) < 4.5 and max(delays) > 7.5  # spread over the whole range...
    assert len(set(delays)) > 1900  # ...not a few fixed values


@pytest.mark.anyio
async def test_the_engine_waits_the_backoff_between_attempts(
    project: ProjectDir, store: Store
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          flaky:
            command: 'exit 1'
            retries: {count: 2, backoff: 0.1s}
        """,
    )
    outcome = await run_once(project.root, store, "flaky", handle_signals=False)
    first, second, third = outcome.runs
    assert [r.attempt for r in outcome.runs] == [1, 2, 3]
    assert first.finished_at and second.started_at and second.finished_at and third.started_at
    assert second.started_at - first.finished_at >= 0.05  # 0.1 s, less up to half of it
    assert third.started_at - second.finished_at >= 0.1  # 0.2 s, less up to half of it


# -- results downstream ---------------------------------------------------------------------------

UPSTREAM = """
version: 1
tasks:
  numbers:
    type: python
    callable: plugins.flow:numbers
  words:
    command: 'echo "some words"'
  lookup:
    type: python
    callable: plugins.flow:lookup
    parameters: {name: numbers}
    needs: [numbers, words]
  inspect:
    type: python
    callable: plugins.flow:inspect
    needs: [numbers, words]
"""


@pytest.mark.anyio
async def test_upstream_is_a_mapping_of_the_needs_results_and_their_runs(
    project: ProjectDir, store: Store
) -> None:
    write(project, UPSTREAM)
    outcome = await run_once(project.root, store, "inspect", handle_signals=False)
    assert outcome.target is not None and outcome.target.status is RunStatus.SUCCEEDED
    assert outcome.target.result == {
        "names": ["numbers", "words"],
        "len": 2,
        "has_words": True,
        "get_missing": "default",
        "runs": ["numbers", "words"],
        "statuses": ["succeeded", "succeeded"],
        "repr": "Upstream(['numbers', 'words'])",
    }
    found = await run_once(
        project.root, store, "lookup", parameters={"name": "words"}, handle_signals=False
    )
    assert found.target is not None and found.target.result == "some words\n"


@pytest.mark.anyio
async def test_asking_upstream_for_a_result_it_lacks_names_the_results_it_has(
    project: ProjectDir, store: Store
) -> None:
    write(project, UPSTREAM)
    outcome = await run_once(
        project.root, store, "lookup", parameters={"name": "nope"}, handle_signals=False
    )
    run = outcome.target
    assert run is not None and run.status is RunStatus.FAILED
    assert run.error is not None and run.error["type"] == "NoUpstreamResult"
    assert "no result of 'nope' upstream (results: numbers, words)" in run.error["message"]
    assert "upstream[name]" in run.error["traceback"]  # raised in the task's own line

    with pytest.raises(KeyError, match=r"no result of 'b' upstream \(results: a\)"):
        Upstream({"a": 1}, {})["b"]
    with pytest.raises(KeyError, match=r"no result of 'b' upstream \(results: none\)"):
        Upstream({}, {})["b"]


@pytest.mark.anyio
async def test_without_needs_the_latest_succeeded_runs_stand_in_and_missing_ones_are_absent(
    project: ProjectDir, store: Store
) -> None:
    write(project, UPSTREAM)
    nothing = await run_once(project.root, store, "inspect", with_needs=False, handle_signals=False)
    assert nothing.target is not None
    assert nothing.target.result["names"] == [] and nothing.target.result["runs"] == []

    first = await run_once(project.root, store, "numbers", handle_signals=False)
    alone = await run_once(project.root, store, "lookup", with_needs=False, handle_signals=False)
    assert [r.task for r in alone.runs] == ["lookup"]
    assert alone.target is not None and alone.target.result == {"a": 1, "b": 2}
    inspected = await run_once(
        project.root, store, "inspect", with_needs=False, handle_signals=False
    )
    assert inspected.target is not None
    assert inspected.target.result["names"] == ["numbers"]  # words never ran
    assert first.target is not None
    assert [r.id for r in await store.runs(task="numbers")] == [first.target.id]


@pytest.mark.anyio
async def test_a_shell_task_without_needs_never_sees_an_upstream_file(
    project: ProjectDir, store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # As when a shell task with needs runs `runner run` itself: the outer file is not ours.
    outer = tmp_path / "outer-upstream.json"
    outer.write_text('{"someone": "else"}')
    monkeypatch.setenv("RUNNER_UPSTREAM_FILE", str(outer))
    write(
        project,
        """
        version: 1
        tasks:
          alone:
            command: 'echo "${RUNNER_UPSTREAM_FILE:-none}"'
          after:
            command: 'cat "$RUNNER_UPSTREAM_FILE"'
            needs: [alone]
        """,
    )
    outcome = await run_once(project.root, store, "after", handle_signals=False)
    alone, after = outcome.runs
    assert alone.stdout == "none\n"
    assert after.stdout is not None and list(json.loads(after.stdout)) == ["alone"]
