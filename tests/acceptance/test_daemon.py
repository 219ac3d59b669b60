"""`runner daemon` as operators run it: a real process on a real store, files edited under it,
signals, `kill -9`, a second daemon, triggers from other shells.

What a process shows is tested here; the scheduling logic (fire times, misfire, overlap, needs,
cron) runs in process on a fake clock in tests/integration/test_scheduler.py. The daemon logs JSON lines (``--log-format json``) to a file the tests read, so they wait for
what the daemon says it did instead of for time to pass.
"""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from typing import Any

import pytest
from conftest import Cli, ProjectDir, live_members, logged_events, ok, poll, wait_for_event

pytestmark = pytest.mark.timeout(60)


class Daemon:
    """One `runner daemon` process and what it logged."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.cli = cli
        self.log_path = cli.project.root / f"daemon-{len(cli.started)}.log"
        self.log_file = self.log_path.open("w")
        self.process = cli.start("--log-format", "json", "daemon", *args, stderr=self.log_file)

    def events(self, event: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        return logged_events(self.log_path, event, **fields)

    def wait_for(self, event: str, *, count: int = 1, within: float = 10, **fields: Any) -> list[dict[str, Any]]:
        return wait_for_event(self.log_path, event, count=count, within=within, **fields)

    def started(self) -> Daemon:
        self.wait_for("daemon_started")
        return self

    def stop(self, signum: int = signal.SIGTERM, *, within: float = 15) -> int:
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=within)
            assert self.events("leftover_task") == [], "a task outlived the daemon's own"
            return code
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)  # the daemon dumps its stacks to its log
            time.sleep(0.5)
            raise AssertionError(f"the daemon did not stop within {within}s:\n{self.log_path.read_text()}") from None
        finally:
            self.log_file.close()


def store_rows(project: ProjectDir, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(project.db)) as conn:
        return conn.execute(query, args).fetchall()


def runs_of(project: ProjectDir, task: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(project.db)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM runs WHERE task = ? ORDER BY queued_at", (task,)).fetchall()
        return [dict(row) for row in rows]


TICK = """
    version: 1
    tasks:
      tick:
        command: echo tick
        schedule: {every: 0.5s}
"""


# -- schedules across a crash ---------------------------------------------------------------------


def test_a_restart_after_kill_9_neither_repeats_nor_drops_a_fire(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", TICK)
    first = Daemon(cli).started()
    first.wait_for("run_finished", count=2, task="tick")
    first.process.kill()
    first.process.wait()
    first.log_file.close()

    second = Daemon(cli).started()
    second.wait_for("run_finished", count=2, task="tick")
    assert second.stop() == 0

    (anchor,) = store_rows(project, "SELECT anchor FROM schedules WHERE task = 'tick'")[0]
    slots = [round((r["scheduled_for"] - anchor) / 0.5) for r in runs_of(project, "tick")]
    assert len(slots) == len(set(slots)), f"a fire ran twice: {slots}"
    # Fires missed while no daemon ran are run once (misfire: once), so no slot is skipped
    # except those that one catch-up run stands for.
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert gaps.count(1) >= len(gaps) - 1, f"fires dropped: {slots}"


# -- hot reload -----------------------------------------------------------------------------------


def test_an_edited_task_file_is_live_without_a_restart(project: ProjectDir, cli: Cli) -> None:
    path = project.tasks("a.yaml", TICK)
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="tick")

    path.write_text(path.read_text().replace("echo tick", "echo tock"))
    daemon.wait_for("reloaded")
    poll(lambda: any(r["stdout"] == "tock\n" for r in runs_of(project, "tick")), what="a run of the new command")

    project.tasks("b.yaml", "version: 1\ntasks:\n  added:\n    command: echo new\n    schedule: {every: 0.5s}\n")
    daemon.wait_for("run_finished", task="added")
    assert daemon.stop() == 0


def test_an_invalid_edit_is_logged_with_its_place_and_the_last_good_tasks_keep_running(
    project: ProjectDir, cli: Cli
) -> None:
    path = project.tasks("a.yaml", TICK)
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="tick")

    path.write_text(path.read_text() + "      timeout: soon\n")
    (problem,) = daemon.wait_for("invalid_task_file")
    assert problem["path"] == "tasks.d/a.yaml" and problem["line"] == 6
    assert problem["message"].startswith("tasks.d/a.yaml:6:")
    daemon.wait_for("reload_failed")
    finished = len(daemon.events("run_finished", task="tick"))
    daemon.wait_for("run_finished", task="tick", count=finished + 2)
    assert ok(cli("list", "--json")).stdout.count('"tick"') == 1
    assert daemon.stop() == 0


def test_a_removed_task_stops_firing_at_once(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", TICK)
    other = project.tasks("b.yaml", TICK.replace("tick", "tock"))
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="tock")

    other.unlink()
    (reload,) = daemon.wait_for("reloaded")
    assert reload["removed"] == ["tock"]
    fired_after = len(daemon.events("fired", task="tick"))
    daemon.wait_for("fired", task="tick", count=fired_after + 2)
    assert daemon.stop() == 0
    assert all(r["queued_at"] <= time.time() for r in runs_of(project, "tock"))
    removed_at = json.loads(ok(cli("list", "--all", "--json")).stdout)
    assert [t["disabled_reason"] for t in removed_at if t["name"] == "tock"] == ["removed"]
    last_tock = max(r["queued_at"] for r in runs_of(project, "tock"))
    assert last_tock < min(
        r["queued_at"] for r in runs_of(project, "tick")[-2:]
    ), "tock fired after it was removed"


def test_a_changed_plugin_is_imported_afresh_and_orphans_are_found_again(project: ProjectDir, cli: Cli) -> None:
    module = project.plugin("calc", "def answer() -> int:\n    return 1\n")
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          answer:
            type: python
            callable: plugins.calc:answer
            schedule: {every: 0.5s}
        """,
    )
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="answer")

    module.write_text("def answer() -> int:\n    return 2\n")
    poll(lambda: any(r["result_json"] == "2" for r in runs_of(project, "answer")), what="a run of the new code")

    module.write_text("def renamed() -> int:\n    return 3\n")
    daemon.wait_for("task_orphaned", task="answer")
    tasks = json.loads(ok(cli("list", "--json")).stdout)
    assert tasks[0]["enabled"] is False and tasks[0]["disabled_reason"].startswith("orphaned:")

    module.write_text("def answer() -> int:\n    return 4\n")
    poll(lambda: any(r["result_json"] == "4" for r in runs_of(project, "answer")), what="the task enabled again")
    assert daemon.stop() == 0


# -- triggers and one-shot runs beside the daemon ------------------------------------------------


def test_trigger_asks_the_daemon_and_wait_reports_like_run(project: ProjectDir, cli: Cli) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          greet:
            command: echo "hello $PARAM_WHO"
            parameters: {who: world}
          broken:
            command: exit 4
        """,
    )
    daemon = Daemon(cli).started()

    result = ok(cli("trigger", "greet", "-p", "who=daemon", "--wait"))
    run_id, output = result.stdout.split("\n", 1)
    assert output == "hello daemon\n"
    (run,) = runs_of(project, "greet")
    assert run["id"] == run_id and run["trigger"] == "trigger" and run["pid"] == daemon.process.pid

    quick = ok(cli("trigger", "greet"))
    (queued_id,) = quick.stdout.split()
    done = poll(lambda: [r for r in runs_of(project, "greet") if r["id"] == queued_id and r["finished_at"]])
    assert done[0]["stdout"] == "hello world\n"

    assert cli("trigger", "broken", "--wait").returncode == 1
    as_json = json.loads(ok(cli("trigger", "greet", "--json")).stdout)
    assert as_json == {"id": as_json["id"], "task": "greet", "status": "queued"}
    waited = [json.loads(line) for line in ok(cli("trigger", "greet", "--json", "--wait")).stdout.splitlines()]
    assert [(r["task"], r["status"], r["stdout"]) for r in waited] == [("greet", "succeeded", "hello world\n")]
    missing = cli("trigger", "nope")
    assert missing.returncode == 3 and "'nope' is not declared" in missing.stderr

    one_shot = ok(cli("run", "greet"))
    assert one_shot.stdout == "hello world\n"
    assert daemon.stop() == 0


def test_trigger_without_a_daemon_waits_for_one(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  greet:\n    command: echo hi\n")
    # Not synced yet: the files declare it, and the message says what to do.
    unsynced = cli("trigger", "greet")
    assert unsynced.returncode == 3
    assert unsynced.stderr == (
        "runner: 'greet' (tasks.d/a.yaml:3) is declared in the task files but not in the store yet: run "
        "`runner sync`, or start the daemon (it syncs when it starts and when files change)\n"
    )
    ok(cli("sync"))
    project.tasks("b.yaml", "version: 1\ntasks:\n  later:\n    command: echo hi\n    needs: [greet]\n")
    added = cli("trigger", "later")
    assert added.returncode == 3 and "'later' (tasks.d/b.yaml:3) is declared" in added.stderr
    queued = ok(cli("trigger", "greet"))
    assert "no daemon is running" in queued.stderr
    (run_id,) = queued.stdout.split()

    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", run_id=run_id, status="succeeded")
    assert daemon.stop() == 0


def test_a_trigger_whose_task_went_away_is_recorded_failed_with_the_reason(project: ProjectDir, cli: Cli) -> None:
    path = project.tasks("a.yaml", "version: 1\ntasks:\n  greet:\n    command: echo hi\n  other:\n    command: 'true'\n")
    ok(cli("sync"))
    (run_id,) = ok(cli("trigger", "greet")).stdout.split()
    path.write_text("version: 1\ntasks:\n  other:\n    command: 'true'\n")

    daemon = Daemon(cli).started()
    daemon.wait_for("trigger_refused", run_id=run_id)
    assert daemon.stop() == 0
    shown = json.loads(ok(cli("show", run_id, "--json")).stdout)
    assert shown["status"] == "failed" and shown["error"]["type"] == "TaskNotRunnable"
    assert "removed from the task files" in shown["error"]["message"]


# -- crash recovery --------------------------------------------------------------------------------


SLOW = """
    version: 1
    tasks:
      slow:
        command: echo "$(ps -o pgid= $$) $RUNNER_RUN_ID" > started; sleep 30
        retries: {count: 1, backoff: 0s}
"""


def test_runs_of_a_daemon_killed_with_9_are_interrupted_and_retried(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", SLOW)
    first = Daemon(cli).started()
    ok(cli("trigger", "slow"))
    pgid, run_id = cli.task_started()
    cli.group_recorded(run_id)
    first.process.kill()
    first.process.wait()
    first.log_file.close()
    assert live_members(pgid), "the task outlives its daemon until someone notices"
    (cli.project.root / "started").unlink()

    second = Daemon(cli, "--grace", "0s").started()
    (taken,) = second.wait_for("lease_taken_over")
    assert taken["pid"] == first.process.pid
    poll(lambda: live_members(pgid) == [], what="the dead daemon's task to be killed")
    _, retry_id = cli.task_started()
    # Found at start, it is logged as the sweep logs it, before its retry.
    (interrupted,) = second.wait_for("run_interrupted", run_id=run_id)
    (retrying,) = second.wait_for("retry_interrupted", run_id=retry_id)
    assert second.events().index(interrupted) < second.events().index(retrying)
    assert second.stop() == 0

    runs = {r["id"]: r for r in runs_of(project, "slow")}
    assert runs[run_id]["status"] == "interrupted"
    retry = runs[retry_id]
    assert (retry["attempt"], retry["trigger"], retry["parent_id"]) == (2, "retry", run_id)


def test_a_one_shot_run_that_dies_is_interrupted_by_the_running_daemon(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", SLOW)
    daemon = Daemon(cli).started()
    one_shot = cli.start("run", "slow")
    pgid, run_id = cli.task_started()
    cli.group_recorded(run_id)
    one_shot.kill()
    one_shot.wait()
    daemon.wait_for("run_interrupted", run_id=run_id)
    assert runs_of(project, "slow")[0]["status"] == "interrupted"
    poll(lambda: live_members(pgid) == [], what="the dead run's sleep to be killed")
    assert daemon.stop() == 0


# -- shutdown and the lease ----------------------------------------------------------------------


def test_sigterm_lets_runs_finish_within_the_grace_period(project: ProjectDir, cli: Cli) -> None:
    project.tasks(
        "a.yaml",
        'version: 1\ntasks:\n  short:\n    command: echo "$(ps -o pgid= $$) $RUNNER_RUN_ID" > started; sleep 0.5; echo done\n',
    )
    daemon = Daemon(cli, "--grace", "10s").started()
    ok(cli("trigger", "short"))
    cli.task_started()
    assert daemon.stop() == 0
    (run,) = runs_of(project, "short")
    assert (run["status"], run["stdout"]) == ("succeeded", "done\n")


def test_a_stop_just_after_a_fire_still_runs_what_the_fire_queued(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", TICK)
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="tick")
    (anchor,) = store_rows(project, "SELECT anchor FROM schedules WHERE task = 'tick'")[0]
    # Aim the signal a few milliseconds after a fire time, while that fire is being committed.
    next_fire = anchor + 0.5 * (int((time.time() - anchor) / 0.5) + 2)
    time.sleep(next_fire + 0.003 - time.time())
    assert daemon.stop() == 0
    statuses = [r["status"] for r in runs_of(project, "tick")]
    assert set(statuses) == {"succeeded"}, statuses


def test_runs_still_going_after_the_grace_period_are_killed_and_recorded_cancelled(
    project: ProjectDir, cli: Cli
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          stubborn:
            command: sleep 30 & echo "$(ps -o pgid= $$) $RUNNER_RUN_ID" > started; wait
        """,
    )
    daemon = Daemon(cli, "--grace", "0.3s").started()
    ok(cli("trigger", "stubborn"))
    pgid, _ = cli.task_started()
    assert daemon.stop() == 0
    (run,) = runs_of(project, "stubborn")
    assert run["status"] == "cancelled"
    assert live_members(pgid) == [], "the background sleep was left running"
    assert store_rows(project, "SELECT * FROM leases") == []


def test_a_second_daemon_exits_naming_the_first_and_a_stale_lease_is_taken_over(
    project: ProjectDir, cli: Cli
) -> None:
    project.tasks("a.yaml", TICK)
    first = Daemon(cli).started()

    second = cli.finish(cli.start("daemon"))
    assert second.returncode == 2
    assert "another daemon is running on the store" in second.stderr
    assert f"pid {first.process.pid} on " in second.stderr and "since 20" in second.stderr

    first.process.kill()
    first.process.wait()
    first.log_file.close()
    third = Daemon(cli).started()
    assert third.events("lease_taken_over")[0]["pid"] == first.process.pid
    assert third.stop() == 0


def test_log_lines_are_structured_with_task_and_run_id(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", TICK)
    daemon = Daemon(cli).started()
    (fired,) = daemon.wait_for("fired", task="tick")[:1]
    (finished,) = daemon.wait_for("run_finished", run_id=fired["run_id"])
    assert finished["task"] == "tick" and finished["status"] == "succeeded"
    assert {"at", "level", "message"} <= set(finished)
    assert daemon.stop() == 0


def test_no_watch_ignores_file_changes(project: ProjectDir, cli: Cli) -> None:
    path = project.tasks("a.yaml", TICK)
    daemon = Daemon(cli, "--no-watch").started()
    daemon.wait_for("run_finished", task="tick")
    path.write_text(path.read_text().replace("echo tick", "echo tock"))
    count = len(daemon.events("run_finished", task="tick"))
    daemon.wait_for("run_finished", task="tick", count=count + 2)
    assert daemon.events("reloaded") == []
    assert daemon.stop() == 0
    # A fire prepared ahead of its time when the daemon stopped is recorded cancelled, unrun.
    ran = [r for r in runs_of(project, "tick") if r["started_at"] is not None]
    assert {r["stdout"] for r in ran} == {"tick\n"}


def test_the_daemon_prunes_old_runs_by_its_retention_options(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  greet:\n    command: echo hi\n")
    ok(cli("sync"))
    long_ago = time.time() - 3 * 86400
    with closing(sqlite3.connect(project.db)) as conn, conn:
        conn.executemany(
            "INSERT INTO runs (id, task, type, status, attempt, trigger, parameters, queued_at, finished_at, host, pid)"
            " VALUES (?, 'greet', 'shell', ?, 1, 'cli', '{}', ?, ?, 'elsewhere', 1)",
            [(f"old{i:029d}", "failed", long_ago + i, long_ago + i) for i in range(5)]
            + [("latest-succeeded-is-kept-000000", "succeeded", long_ago, long_ago)],
        )
    daemon = Daemon(cli, "--retain", "1d").started()
    (pruned,) = daemon.wait_for("pruned")
    assert pruned["count"] == 5
    assert daemon.stop() == 0
    assert [r["id"] for r in runs_of(project, "greet")] == ["latest-succeeded-is-kept-000000"]
