"""`runner cancel RUN_ID` as a user types it, against `runner run` in another process: the
request goes through the store, the process running the run kills its task and records it
cancelled; queued runs, finished ones, unknown ones, runs of a dead process, and a process that
does not answer within --wait. (A daemon's run, over HTTP: test_http.py; a worker's:
test_workers.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time

import pytest
from conftest import Cli, ProjectDir, live_members, ok, poll

pytestmark = pytest.mark.timeout(60)

STARTED = 'echo "$$ $RUNNER_RUN_ID" > started.tmp && mv started.tmp started'

TASKS = f"""
    version: 1
    tasks:
      long:
        command: {json.dumps(STARTED + "; sleep 100 & sleep 100")}
      after:
        command: echo after
        needs: [long]
      quick:
        command: echo quick
      pylong:
        type: python
        callable: plugins.slow:forever
"""

SLOW = """
    import time
    from pathlib import Path

    from runner import RunContext

    def forever(ctx: RunContext) -> None:
        Path("started.tmp").write_text(f"{ctx.run_id}")
        Path("started.tmp").rename("started")
        while True:
            time.sleep(0.02)
"""


@pytest.fixture
def tasks(project: ProjectDir) -> ProjectDir:
    project.tasks("a.yaml", TASKS)
    project.plugin("slow", SLOW)
    return project


def row(project: ProjectDir, run_id: str) -> tuple[str, float | None, float | None]:
    """The run's status, when its cancel was asked for and when it finished, from the file."""
    with contextlib.closing(sqlite3.connect(project.db)) as conn:
        found = conn.execute(
            "SELECT status, cancel_requested_at, finished_at FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    assert found is not None
    return found


def runs_of(project: ProjectDir, task: str) -> list[dict[str, object]]:
    """The task's runs, newest first, read from the file (cheaper than a `runner runs`)."""
    with contextlib.closing(sqlite3.connect(project.db)) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM runs WHERE task = ? ORDER BY queued_at DESC", (task,)).fetchall()
    return [dict(r) for r in found]


def test_a_running_shell_task_is_killed_and_recorded_cancelled_and_its_needers_skipped(tasks: ProjectDir, cli: Cli) -> None:
    running = cli.start("run", "after")
    pgid, run_id = cli.task_started()
    assert live_members(pgid)

    cancelled = ok(cli("cancel", run_id))
    assert cancelled.stdout == f"run {run_id} (long) cancelled\n"
    status, asked, finished = row(tasks, run_id)
    assert status == "cancelled" and asked is not None and finished is not None
    assert finished - asked < 1.0, "recorded within a second of the request"
    poll(lambda: live_members(pgid) == [], within=2, what="the task's process group to be gone")

    result = cli.finish(running)
    assert result.returncode == 1, result.stdout + result.stderr
    (long,), (after,) = runs_of(tasks, "long"), runs_of(tasks, "after")
    assert json.loads(str(long["error"]))["type"] == "Cancelled"
    assert after["status"] == "skipped" and "long cancelled" in str(after["error"])


def test_a_running_python_task_is_recorded_cancelled(tasks: ProjectDir, cli: Cli) -> None:
    running = cli.start("run", "pylong")
    run_id = poll(lambda: (tasks.root / "started").exists() and (tasks.root / "started").read_text(), what="the task")

    cancelled = ok(cli("cancel", "--json", run_id))
    body = json.loads(cancelled.stdout)
    assert (body["id"], body["status"]) == (run_id, "cancelled")
    _, asked, finished = row(tasks, run_id)
    assert asked is not None and finished is not None and finished - asked < 1.0
    assert cli.finish(running).returncode == 1


def test_a_queued_run_is_cancelled_before_it_starts(tasks: ProjectDir, cli: Cli) -> None:
    running = cli.start("run", "after")
    pgid, long_id = cli.task_started()
    (queued,) = runs_of(tasks, "after")
    assert queued["status"] == "queued"

    ok(cli("cancel", str(queued["id"])))
    (after,) = runs_of(tasks, "after")
    assert after["status"] == "cancelled" and after["started_at"] is None
    assert row(tasks, long_id)[0] == "running", "only the run asked for is stopped"
    ok(cli("cancel", long_id))
    assert cli.finish(running).returncode == 1
    assert live_members(pgid) == []


def test_unknown_finished_and_interrupted_runs_are_refused(tasks: ProjectDir, cli: Cli) -> None:
    unknown = cli("cancel", "0123456789abcdef0123456789abcdef")
    assert unknown.returncode == 3 and "no run with id" in unknown.stderr

    ok(cli("run", "quick"))
    (quick,) = runs_of(tasks, "quick")
    finished = cli("cancel", "--json", str(quick["id"]))
    assert finished.returncode == 1
    assert f"run {quick['id']} (quick) had already finished: succeeded" in finished.stderr
    assert json.loads(finished.stdout)["status"] == "succeeded"

    running = cli.start("run", "long")
    _, run_id = cli.task_started()
    cli.group_recorded(run_id)
    running.kill()
    running.wait()
    interrupted = cli("cancel", run_id)
    assert interrupted.returncode == 1
    assert "was interrupted: the process running it died; there is nothing to cancel" in interrupted.stderr


def test_a_process_that_does_not_answer_within_wait_is_reported_and_the_request_stands(
    tasks: ProjectDir, cli: Cli
) -> None:
    running = cli.start("run", "long")
    pgid, run_id = cli.task_started()
    # Stopped once it has nothing left to write: stopped inside a write, it would hold the
    # SQLite file's write lock, and the request would wait for it.
    cli.group_recorded(run_id)
    running.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        late = cli("cancel", "--wait", "0.3", run_id)
        assert late.returncode == 1
        assert f"is still running after 0.3s: the process running it on {os.uname().nodename}" in late.stderr
        assert "The request stands" in late.stderr
        assert time.monotonic() - started < 5
    finally:
        running.send_signal(signal.SIGCONT)
    assert cli.finish(running).returncode == 1
    assert row(tasks, run_id)[0] == "cancelled"
    assert live_members(pgid) == []
