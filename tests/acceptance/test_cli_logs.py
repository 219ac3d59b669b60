"""``runner logs``: a run's output and log lines, printed from the store, and followed live with -f
from another process while ``runner run`` (or the next run) writes them.

Tasks that must still be running while a test looks wait for a gate file the test creates; the
test reads the follower's output as it comes and polls for lines with a deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import Cli, ProjectDir, Result, cli_env, ok, poll

pytestmark = pytest.mark.timeout(30)

SECRET = "Zx9-follow-s3cret"
STARTED = 'echo "$$ $RUNNER_RUN_ID" > started.tmp && mv started.tmp started'
GATE = "until [ -e gate ]; do sleep 0.01; done"

PLUGIN = """
import os
import time
from pathlib import Path

from runner import RunContext


def chatty(ctx: RunContext, fail: bool = False) -> str:
    ctx.logger.info("first %s", ctx.task)
    Path("run_id.tmp").write_text(ctx.run_id)
    os.rename("run_id.tmp", "run_id")
    deadline = time.monotonic() + 20
    while not Path("gate").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    ctx.logger.warning("second")
    if fail:
        raise RuntimeError("it went wrong")
    return "done"


def leaky(ctx: RunContext) -> None:
    ctx.logger.info("token is %s", ctx.env["TOKEN"])
"""


class Follower:
    """A ``runner logs`` process whose stdout lines are collected as they come."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.process = cli.start("logs", *args)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def shows(self, text: str) -> None:
        poll(lambda: any(text in line for line in self.lines), within=10, what=f"{text!r} from runner logs")

    def finish(self, *, within: float = 10) -> Result:
        try:
            self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"runner logs did not exit within {within}s: {self.lines}") from None
        self._reader.join(timeout=5)
        assert self.process.stderr is not None
        return subprocess.CompletedProcess(
            self.process.args, self.process.returncode, "".join(self.lines), self.process.stderr.read()
        )


def write(project: ProjectDir, tasks: str) -> None:
    project.tasks("a.yaml", tasks)
    project.plugin("jobs", PLUGIN)


def db_bytes(project: ProjectDir) -> bytes:
    """The store as it is on disk, write-ahead log included."""
    return b"".join(p.read_bytes() for p in sorted(project.db.parent.glob("runner.db*")))


# -- following one run ------------------------------------------------------------------------------


def test_follow_shows_shell_output_while_the_run_goes_and_exits_0_when_it_succeeds(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          slow:
            command: 'echo first; echo warned >&2; {STARTED}; {GATE}; echo second'
        """,
    )
    run = cli.start("run", "slow")
    _pgid, run_id = cli.task_started()
    follower = Follower(cli, run_id, "-f")
    follower.shows("first")
    # The task waits for the gate: it cannot have finished, and the follower goes on.
    assert follower.process.poll() is None
    (project.root / "gate").touch()
    followed = follower.finish()
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "first\nsecond\n"
    assert followed.stderr == "warned\n"
    ok(cli.finish(run))


def test_follow_shows_python_log_lines_as_json_while_the_run_goes_and_exits_1_when_it_fails(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          chatty:
            type: python
            callable: plugins.jobs:chatty
            parameters: {fail: true}
        """,
    )
    run = cli.start("run", "chatty")
    marker = project.root / "run_id"
    run_id = poll(lambda: marker.exists() and marker.read_text(), what="the task")
    follower = Follower(cli, run_id, "--follow", "--json")
    follower.shows("first chatty")
    assert follower.process.poll() is None
    (project.root / "gate").touch()
    followed = follower.finish()
    assert followed.returncode == 1, followed.stderr
    first, second = (json.loads(line) for line in followed.stdout.splitlines())
    assert first["at"].endswith("+00:00")
    assert {k: v for k, v in first.items() if k != "at"} == {
        "run_id": run_id, "task": "chatty", "stream": "log", "level": "info", "message": "first chatty",
    }
    assert (second["level"], second["message"]) == ("warning", "second")
    assert cli.finish(run).returncode == 1


def test_follow_waits_for_a_queued_run(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          first:
            command: '{STARTED}; {GATE}'
          after:
            command: 'echo after ran'
            needs: [first]
        """,
    )
    run = cli.start("run", "after")
    cli.task_started()
    [queued] = cli.runs("--task", "after")
    assert queued["status"] == "queued"
    follower = Follower(cli, queued["id"], "-f")
    (project.root / "gate").touch()
    followed = follower.finish()
    assert (followed.returncode, followed.stdout) == (0, "after ran\n"), followed.stderr
    ok(cli.finish(run))


def test_follow_ends_with_1_when_the_runner_running_the_run_dies(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          slow:
            command: 'echo first; {STARTED}; {GATE}'
        """,
    )
    run = cli.start("run", "slow")
    _pgid, run_id = cli.task_started()
    follower = Follower(cli, run_id, "-f")
    follower.shows("first")
    run.kill()  # no chance to record anything
    run.wait()
    followed = follower.finish()
    assert (followed.returncode, followed.stdout) == (1, "first\n"), followed.stderr
    [record] = cli.runs("--task", "slow")
    assert record["status"] == "interrupted"


# -- following a task ---------------------------------------------------------------------------------


def test_follow_task_picks_up_each_next_run_until_sigterm(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          say:
            command: 'echo "hello $PARAM_WHO"'
            parameters: {who: nobody}
        """,
    )
    ok(cli("sync"))
    follower = Follower(cli, "--task", "say", "-f")  # no run yet: it waits for the first
    ok(cli("run", "say", "-p", "who=one"))
    follower.shows("hello one")
    ok(cli("run", "say", "-p", "who=two"))
    follower.shows("hello two")
    follower.process.send_signal(signal.SIGTERM)
    followed = follower.finish()
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "hello one\nhello two\n"
    runs = [r["id"] for r in reversed(cli.runs("--task", "say"))]
    assert followed.stderr.splitlines() == [f"==> run {run_id} of say <==" for run_id in runs]


# -- what is stored ---------------------------------------------------------------------------------


def test_logs_prints_what_is_stored_and_exit_codes(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          loud:
            command: 'echo out; echo err >&2; exit 4'
          never:
            command: 'true'
        """,
    )
    assert cli("run", "loud").returncode == 1
    [loud] = cli.runs("--task", "loud")
    stored, latest, followed, no_run, no_task_run, no_task, no_task_now, neither, both = cli.side_by_side(
        ("logs", loud["id"]),
        ("logs", "--task", "loud", "--json"),
        ("logs", loud["id"], "-f"),
        ("logs", "0123"),
        ("logs", "--task", "never"),
        ("logs", "--task", "nosuch", "-f"),
        ("logs", "--task", "nosuch"),
        ("logs",),
        ("logs", loud["id"], "--task", "loud"),
    )
    ok(stored)  # no -f: exit 0, whatever the run's status
    assert (stored.stdout, stored.stderr) == ("out\n", "err\n")
    assert [(r["stream"], r["message"]) for r in map(json.loads, ok(latest).stdout.splitlines())] == [
        ("stdout", "out\n"), ("stderr", "err\n"),
    ]
    assert (followed.returncode, followed.stdout) == (1, "out\n")  # final: printed, then its status
    for missing, message in (
        (no_run, "no run with id '0123'"),
        (no_task_run, "task 'never' has no runs yet"),
        (no_task, "task 'nosuch' has no runs and is not in the store"),
        (no_task_now, "task 'nosuch' has no runs and is not in the store"),
    ):
        assert missing.returncode == 3, missing.stderr
        assert message in missing.stderr
    assert (neither.returncode, both.returncode) == (2, 2)


def test_secrets_never_appear_in_streamed_rows(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          shell:
            # The secret comes in two writes, a flush interval apart.
            command: 'printf "tok=%.5s" "$TOKEN"; sleep 0.3; printf "%s\\n" "${TOKEN#?????}"; echo "$TOKEN" >&2'
            env: {TOKEN: {from_env: ACCEPTANCE_TOKEN}}
          python:
            type: python
            callable: plugins.jobs:leaky
            env: {TOKEN: {from_env: ACCEPTANCE_TOKEN}}
            needs: [shell]
        """,
    )
    ok(cli("run", "python", env={"ACCEPTANCE_TOKEN": SECRET}))
    ids = {run["task"]: run["id"] for run in cli.runs()}
    rows = [
        json.loads(line)
        for run_id in (ids["shell"], ids["python"])
        for line in ok(cli("logs", run_id, "--json")).stdout.splitlines()
    ]
    assert [(r["stream"], r["message"]) for r in rows] == [
        ("stdout", "tok=***\n"), ("stderr", "***\n"), ("log", "token is ***"),
    ]
    assert SECRET[:5].encode() not in db_bytes(project)


def test_logs_help_does_not_import_sqlalchemy(project: ProjectDir) -> None:
    probe = (
        "import sys\nfrom runner.cli import main\ntry:\n    main(['logs', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('sqlalchemy' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=Path(project.root), capture_output=True, text=True, env=cli_env(), timeout=30
    )
    assert result.stdout.splitlines()[-1] == "False", result.stderr
    assert "--follow" in result.stdout
