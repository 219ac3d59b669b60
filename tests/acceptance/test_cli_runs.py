"""Running tasks through the real ``runner`` command: run, runs, show, as a user or a script would.

Every test runs ``python -m runner --project <tmp>`` in subprocesses against a temporary project
and a real SQLite store, and checks what the user sees: exit codes, the lines on stdout and
stderr, JSON, which processes are left, and what is in the database file. Long-running tasks
write a pid file when they start; the tests poll for it (and for processes to be gone) with a
deadline instead of sleeping. Commands that do not depend on each other run side by side, which
also exercises several runner processes on one store.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import Cli, ProjectDir, Result, RunnerCli, json_lines, live_members, ok, poll

pytestmark = pytest.mark.timeout(20)


SECRET = "Zx9-acceptance-s3cret"

PLUGIN = """
import datetime
import time

from runner import RunContext, task
from runner.engine import Engine


@task("double")
def double(ctx: RunContext, a: int) -> dict:
    ctx.logger.info("doubling %s", a)
    return {"total": a * 2, "when": datetime.date(2026, 1, 2)}


def add(a: int, b: int = 1) -> int:
    return a + b


def explode(what: str = "bad input") -> None:
    raise ValueError(f"cannot handle {what}")


def leaky(ctx: RunContext, note: str = "") -> dict:
    ctx.logger.warning("token is %s", ctx.env["TOKEN"])
    return {"token": ctx.env["TOKEN"], "note": note}


def stuck() -> None:
    time.sleep(30)


async def parent(engine: Engine) -> str:
    child = await engine.wait(await engine.submit("long"))
    return child.status.value
"""

# Writes "<pgid> <run id>" once it runs (atomically, so a reader never sees half of it).
STARTED = 'echo "$$ $RUNNER_RUN_ID" > started.tmp && mv started.tmp started'
LONG = f"{STARTED}; sleep 100 & sleep 100"


# -- helpers --------------------------------------------------------------------------------------


def exits(result: Result, code: int) -> Result:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr or code == 1
    return result


def describe(pids: list[int]) -> str:
    found = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append(f"{pid} [{stat.rpartition(')')[2].split()[0]}] {cmdline}")
    return "; ".join(found)


def assert_group_gone(pgid: int) -> None:
    try:
        poll(lambda: not live_members(pgid), within=2, what=f"process group {pgid} to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: left {describe(live_members(pgid))}") from None


def db_bytes(project: ProjectDir) -> bytes:
    """The store as it is on disk, write-ahead log included."""
    return b"".join(p.read_bytes() for p in sorted(project.db.parent.glob("runner.db*")))


def write(project: ProjectDir, tasks: str) -> None:
    project.tasks("a.yaml", tasks)
    project.plugin("jobs", PLUGIN)


def run_id_of(stderr: str, task: str) -> str:
    found = re.search(rf"^runner: {task} \w+ in [\d.]+s.* \(run ([0-9a-f]{{32}})\)$", stderr, re.M)
    assert found, stderr
    return found.group(1)


# -- run, runs, show ------------------------------------------------------------------------------


def test_run_prints_the_output_and_runs_and_show_list_the_run(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          hello:
            command: 'echo "hello $PARAM_WHO"; echo "a note" >&2'
            parameters: {who: world}
        """,
    )
    result = ok(runner_cli("run", "hello"))
    assert result.stdout == "hello world\n"
    assert "a note\n" in result.stderr
    run_id = run_id_of(result.stderr, "hello")
    assert re.search(r"^runner: hello succeeded in \d+\.\d{3}s \(run ", result.stderr, re.M)

    listing = ok(runner_cli("runs")).stdout.splitlines()
    assert listing[0].split() == ["ID", "TASK", "STATUS", "TRY", "STARTED", "TOOK", "INVOCATION"]
    assert listing[1].split()[:4] == [run_id, "hello", "succeeded", "1"]
    [as_json] = json.loads(ok(runner_cli("runs", "--json")).stdout)
    assert listing[1].split()[-1] == as_json["invocation"] and re.fullmatch(r"[0-9a-f]{32}", as_json["invocation"])

    shown = ok(runner_cli("show", run_id)).stdout
    assert f"id:          {run_id}\n" in shown
    assert "status:      succeeded\n" in shown
    assert "exit_code:   0\n" in shown
    assert 'parameters:  {"who": "world"}\n' in shown
    assert "--- stdout ---\nhello world\n--- stderr ---\na note\n" in shown


def test_run_json_prints_every_run_target_last_and_show_json_adds_logs(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          prepare:
            command: 'echo "a=$PARAM_A"'
            parameters: {a: 1}
          report:
            type: python
            callable: double
            parameters: {a: 1}
            needs: [prepare]
        """,
    )
    result = ok(cli("run", "report", "-p", "a=21", "--json"))
    prepare, report = json_lines(result.stdout)
    assert (prepare["task"], prepare["status"], prepare["stdout"]) == (
        "prepare",
        "succeeded",
        "a=1\n",
    )
    assert prepare["parameters"] == {"a": 1}  # -p is for the target only
    assert report["task"] == "report" and report["status"] == "succeeded"
    assert report["parameters"] == {"a": 21}  # read as YAML: the integer 21
    assert report["result"] == {
        "total": 42,
        "when": {"_type": "date", "_module": "datetime", "_repr": "datetime.date(2026, 1, 2)"},
    }
    assert report["type"] == "python" and report["attempt"] == 1
    assert (report["exit_code"], report["stdout"], report["stderr"], report["error"]) == (None,) * 4
    for key in ("started_at", "finished_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", report[key])
    assert report["duration_s"] >= 0

    as_json, as_text, newest = cli.side_by_side(
        ("show", report["id"], "--json"), ("show", report["id"]), ("runs", "--limit", "1", "--json")
    )
    shown = json.loads(ok(as_json).stdout)
    assert shown == {**report, "logs": shown["logs"]}
    [line] = shown["logs"]
    assert (line["level"], line["message"]) == ("info", "doubling 21")
    assert set(line) == {"at", "level", "message"}
    assert re.search(r"^--- logs ---\n\S+ INFO +doubling 21$", ok(as_text).stdout, re.M)
    assert [r["id"] for r in json.loads(ok(newest).stdout)] == [report["id"]]  # newest first


def test_runs_filters_by_task_and_status(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          good:
            command: 'true'
          bad:
            command: 'exit 4'
        """,
    )
    cli.side_by_side(("run", "good"), ("run", "bad"), ("run", "good"))
    by_task, by_status = cli.side_by_side(
        ("runs", "--task", "good", "--json"), ("runs", "--status", "failed", "--json")
    )
    assert [(r["task"], r["status"]) for r in json.loads(ok(by_task).stdout)] == [
        ("good", "succeeded")
    ] * 2
    assert [(r["task"], r["exit_code"]) for r in json.loads(ok(by_status).stdout)] == [("bad", 4)]


def test_no_deps_runs_only_the_target(project: ProjectDir, runner_cli: RunnerCli) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          first:
            command: 'exit 1'
          second:
            command: 'echo second'
            needs: [first]
        """,
    )
    result = ok(runner_cli("run", "second", "--no-deps", "--json"))
    assert [r["task"] for r in json_lines(result.stdout)] == ["second"]


# -- exit codes -----------------------------------------------------------------------------------


def test_exit_1_when_the_run_did_not_succeed(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          shell:
            command: 'echo partial; exit 7'
          python:
            type: python
            callable: plugins.jobs:explode
          secret:
            command: 'echo "$TOKEN"'
            env: {TOKEN: {from_env: RUNNER_ACCEPTANCE_UNSET}}
          prepare:
            command: 'exit 3'
          downstream:
            command: 'echo never'
            needs: [prepare]
          flaky:
            command: 'echo "try $RUNNER_RUN_ID"; exit 1'
            retries: {count: 1, backoff: 0s}
        """,
    )
    shell, python, secret, downstream, flaky = cli.side_by_side(
        ("run", "shell"),
        ("run", "python"),
        ("run", "secret"),
        ("run", "downstream"),
        ("run", "flaky", "--json"),
    )
    exits(shell, 1)
    assert shell.stdout == "partial\n"
    assert re.search(r"^runner: shell failed in [\d.]+s, exit code 7 \(run ", shell.stderr, re.M)

    exits(python, 1)
    assert "runner: python failed" in python.stderr
    assert "Traceback (most recent call last):" in python.stderr
    assert "plugins/jobs.py" in python.stderr
    assert python.stderr.rstrip().endswith("ValueError: cannot handle bad input")

    exits(secret, 1)
    assert "environment variable RUNNER_ACCEPTANCE_UNSET is not set" in secret.stderr
    assert "Traceback" not in secret.stderr

    exits(downstream, 1)
    assert "runner: prepare failed" in downstream.stderr
    assert "runner: downstream skipped" in downstream.stderr
    assert "a need did not succeed: prepare failed" in downstream.stderr

    first, second = json_lines(exits(flaky, 1).stdout)  # every run it made, the last try last
    assert [(r["attempt"], r["trigger"], r["status"]) for r in (first, second)] == [
        (1, "cli", "failed"),
        (2, "retry", "failed"),
    ]
    assert second["parent_id"] == first["id"]
    assert second["stdout"] == f"try {second['id']}\n"


def test_exit_2_for_parameters_that_do_not_fit(project: ProjectDir, cli: Cli) -> None:
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
    wrong, unknown, malformed = cli.side_by_side(
        ("run", "add", "-p", "a=ten"), ("run", "add", "-p", "c=3"), ("run", "add", "-p", "a")
    )
    assert "task 'add': parameter 'a': expected int, got str 'ten'" in exits(wrong, 2).stderr
    assert "unknown parameter 'c'" in exits(unknown, 2).stderr
    assert "'a' is not KEY=VALUE" in exits(malformed, 2).stderr
    assert json.loads(ok(cli("runs", "--json")).stdout) == []  # nothing ran, nothing recorded


def test_exit_3_says_why_the_task_cannot_run_and_where(
    project: ProjectDir, cli: Cli, runner_cli: RunnerCli
) -> None:
    tasks = """
        version: 1
        tasks:
          hello:
            command: echo hi
          paused:
            command: echo paused
            enabled: false
          lost:
            type: python
            callable: plugins.jobs:no_such_function
          unfit:
            type: python
            callable: plugins.jobs:add
            parameters: {b: 2}
          gone:
            command: echo gone
        """
    write(project, tasks)
    ok(runner_cli("sync"))
    write(project, tasks.replace("  gone:\n            command: echo gone\n", ""))
    results = cli.side_by_side(
        ("run", "helo"),
        ("run", "paused"),
        ("run", "lost"),
        ("run", "unfit"),
        ("run", "gone"),
        ("show", "0123456789abcdef0123456789abcdef"),
    )
    messages = [exits(r, 3).stderr for r in results]
    assert "task 'helo' is not declared in tasks.d (did you mean 'hello'?)" in messages[0]
    assert "task 'paused' is disabled in tasks.d/a.yaml:5 (enabled: false)" in messages[1]
    assert "task 'lost' is orphaned (tasks.d/a.yaml:8)" in messages[2]
    assert "no attribute 'no_such_function'" in messages[2]
    assert "task 'unfit' is invalid (tasks.d/a.yaml:11): missing parameter 'a'" in messages[3]
    assert "task 'gone' was removed from the task files" in messages[4]
    assert "no run with id '0123456789abcdef0123456789abcdef'" in messages[5]
    assert json.loads(ok(runner_cli("runs", "--json")).stdout) == []


# -- stopping: signals, timeouts, crashes ---------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_cancels_the_runs_and_leaves_no_process(
    project: ProjectDir, cli: Cli, signum: int, code: int
) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          long:
            command: '{LONG}'
          after:
            command: 'echo never'
            needs: [long]
        """,
    )
    runner = cli.start("run", "after", "--json")
    pgid, run_id = cli.task_started()
    running = json.loads(ok(cli("runs", "--status", "running", "--json")).stdout)
    assert [(r["id"], r["task"]) for r in running] == [
        (run_id, "long")
    ]  # seen from another process

    runner.send_signal(signum)
    result = exits(cli.finish(runner, within=5), code)
    assert f"stopped by signal {int(signum)}; unfinished runs recorded cancelled" in result.stderr
    assert_group_gone(pgid)
    printed = {r["task"]: r["status"] for r in json_lines(result.stdout)}
    assert printed == {"long": "cancelled", "after": "cancelled"}  # every run it made
    runs = {r["task"]: r for r in json.loads(ok(cli("runs", "--json")).stdout)}
    assert runs["long"]["status"] == "cancelled"
    assert runs["long"]["error"]["message"] == "stopped on request"
    assert runs["after"]["status"] == "cancelled"


def test_signal_also_cancels_runs_that_tasks_submitted(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          parent:
            type: python
            callable: plugins.jobs:parent
          long:
            command: '{LONG}'
        """,
    )
    runner = cli.start("run", "parent")
    pgid, run_id = cli.task_started()
    runner.send_signal(signal.SIGTERM)
    exits(cli.finish(runner, within=5), 143)
    assert_group_gone(pgid)
    runs = {r["task"]: r for r in json.loads(ok(cli("runs", "--json")).stdout)}
    assert (runs["long"]["id"], runs["long"]["status"]) == (run_id, "cancelled")
    assert runs["long"]["parent_id"] == runs["parent"]["id"]
    assert runs["parent"]["status"] == "cancelled"


def test_timeout_kills_the_task_and_everything_it_started(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          sleepy:
            command: >-
              {STARTED}; sh -c 'sleep 100 & sleep 100'
            timeout: 0.5s
        """,
    )
    began = time.monotonic()
    result = exits(cli("run", "sleepy", "--json"), 1)
    assert time.monotonic() - began < 10  # its children sleep 100 s: they were not waited for
    pgid, run_id = cli.task_started()
    [run] = json_lines(result.stdout)
    assert (run["id"], run["status"], run["exit_code"]) == (run_id, "timed_out", None)
    assert 0.5 <= run["duration_s"] < 3
    assert_group_gone(pgid)


def test_sync_python_timeout_is_recorded_and_the_process_still_exits(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          stuck:
            type: python
            callable: plugins.jobs:stuck
            timeout: 0.3s
        """,
    )
    began = time.monotonic()
    result = exits(runner_cli("run", "stuck"), 1)
    assert time.monotonic() - began < 4  # the thread sleeping 30 s does not keep runner alive
    assert re.search(r"^runner: stuck timed_out in 0\.3\d*s", result.stderr, re.M)
    assert "TaskTimeout: timed out after 0.3s; the thread was abandoned" in result.stderr


def test_runs_of_a_killed_runner_are_marked_interrupted_by_the_next_one(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          long:
            command: '{LONG}'
        """,
    )
    runner = cli.start("run", "long")
    _pgid, run_id = cli.task_started()
    runner.kill()
    assert cli.finish(runner).returncode == -signal.SIGKILL
    [run] = json.loads(ok(cli("runs", "--json")).stdout)
    assert (run["id"], run["status"]) == (run_id, "interrupted")
    assert run["error"]["message"] == "the process running it died"
    assert run["finished_at"] is not None


# -- secrets --------------------------------------------------------------------------------------


def test_secrets_are_masked_in_all_output_and_never_written_to_the_store(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          shell:
            command: 'echo "token=$TOKEN"; echo "$TOKEN" >&2'
            env: {TOKEN: {from_env: ACCEPTANCE_TOKEN}}
          python:
            type: python
            callable: plugins.jobs:leaky
            env: {TOKEN: {from_env: ACCEPTANCE_TOKEN}}
            needs: [shell]
        """,
    )
    env = {"ACCEPTANCE_TOKEN": SECRET}
    result = ok(cli("run", "python", "-p", f"note=with {SECRET}", "--json", env=env))
    assert SECRET not in result.stdout + result.stderr
    shell, python = json_lines(result.stdout)
    assert (shell["stdout"], shell["stderr"]) == ("token=***\n", "***\n")
    assert python["result"] == {"token": "***", "note": "with ***"}
    assert python["parameters"] == {"note": "with ***"}
    shown = ok(cli("show", python["id"], "--json"))
    assert SECRET not in shown.stdout
    assert json.loads(shown.stdout)["logs"][0]["message"] == "token is ***"
    assert SECRET.encode() not in db_bytes(project)
