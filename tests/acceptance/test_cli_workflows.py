"""Workflows through the real ``runner`` command: needs, concurrent branches, skipping, retries,
results passed downstream, invocations, Ctrl-C and live progress.

Every test runs ``python -m runner --project <tmp>`` in subprocesses against a temporary project
and a real SQLite store, and checks what a user or a script sees: exit codes, the lines on stdout
and stderr (a pseudo-terminal's for live progress), JSON, and what ``runner runs`` and
``runner show`` report afterwards. Overlap in time is judged from the runs' own ``started_at`` and
``finished_at``, not from how long a test took. Tasks that must wait for each other or for the
test do so through files, polled with a deadline; the tests never sleep to let something happen.
"""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, ProjectDir, Result, json_lines, live_members, ok, poll

pytestmark = pytest.mark.timeout(20)


PLUGIN = """
from runner import Upstream


class Measure:
    \"\"\"Not JSON-serialisable: only the original object tells what it was.\"\"\"

    def __init__(self, value, unit):
        self.value, self.unit = value, unit


def measure(value: int = 3) -> Measure:
    if value < 0:
        raise ValueError(f"cannot measure {value}")
    return Measure(value, "m")


def total(a: int = 40, b: int = 2) -> dict:
    return {"sum": a + b}


def describe(upstream: Upstream) -> dict:
    found = upstream["measure"]
    run = upstream.runs["measure"]
    return {
        "type": type(found).__name__,
        "value": found.value,
        "unit": found.unit,
        "run": run.id,
        "status": run.status.value,
        "names": sorted(upstream),
    }


def shout(upstream: Upstream) -> str:
    return upstream["words"].strip().upper()
"""

# Reads $RUNNER_UPSTREAM_FILE as a shell task's script would, and says where the file was.
READ_UPSTREAM = """
import json, os, sys

path = os.environ["RUNNER_UPSTREAM_FILE"]
upstream = json.load(open(path))
print(json.dumps(upstream, sort_keys=True))
print(path, file=sys.stderr)
"""


def wait_for_file(name: str, *, then: str) -> str:
    """A shell command that waits (up to ~5 s, then fails) for ``name`` to exist, then runs ``then``."""
    return (
        f"i=0; while [ ! -e {name} ]; do i=$((i+1)); "
        f'if [ "$i" -gt 500 ]; then echo "gave up on {name}" >&2; exit 9; fi; sleep 0.01; done; {then}'
    )


# Writes "<pgid> <run id>" once it runs (atomically, so a reader never sees half of it).
STARTED = 'echo "$$ $RUNNER_RUN_ID" > started.tmp && mv started.tmp started'
LONG = f"{STARTED}; sleep 100 & sleep 100"


# -- helpers --------------------------------------------------------------------------------------


def exits(result: Result, code: int) -> Result:
    assert result.returncode == code, result.stdout + result.stderr
    return result


def by_task(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each task's last run in ``runs``."""
    return {r["task"]: r for r in runs}


def at(run: dict[str, Any], key: str) -> float:
    return datetime.fromisoformat(run[key]).timestamp()


def overlap(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two runs were running at the same time, by their own records."""
    return at(one, "started_at") < at(other, "finished_at") and at(other, "started_at") < at(
        one, "finished_at"
    )


def write(project: ProjectDir, tasks: str) -> None:
    project.tasks("a.yaml", tasks)
    project.plugin("flow", PLUGIN)


DIAMOND = """
version: 1
tasks:
  a:
    command: 'echo a'
  b:
    command: 'sleep 1; echo b'
    needs: [a]
  c:
    command: 'sleep 1; echo c'
    needs: [a]
  d:
    command: 'echo d'
    needs: [b, c]
"""


# -- needs and concurrency ------------------------------------------------------------------------


def test_diamond_runs_its_branches_at_once_and_every_run_shares_one_invocation(
    project: ProjectDir, cli: Cli
) -> None:
    write(project, DIAMOND)
    runs = json_lines(ok(cli("run", "d", "--json")).stdout)
    assert runs[0]["task"] == "a" and runs[3]["task"] == "d"
    assert {r["task"] for r in runs} == {"a", "b", "c", "d"}  # each once
    a, b, c, d = (by_task(runs)[name] for name in "abcd")
    assert all(r["status"] == "succeeded" for r in runs)
    assert at(a, "finished_at") <= at(b, "started_at") and at(a, "finished_at") <= at(
        c, "started_at"
    )
    assert overlap(b, c), (b, c)  # the two sleeps ran side by side...
    assert at(d, "started_at") >= max(at(b, "finished_at"), at(c, "finished_at"))
    # ...so the diamond took about one second: one after the other, b and c alone take two.
    assert at(d, "finished_at") - at(a, "started_at") < 2.0

    invocation = d["invocation"]
    assert re.fullmatch(r"[0-9a-f]{32}", invocation)
    assert {r["invocation"] for r in runs} == {invocation}
    again, shown, listed = cli.side_by_side(
        ("run", "a", "--json"), ("show", d["id"]), ("runs", "--invocation", invocation, "--json")
    )
    [alone] = json_lines(ok(again).stdout)
    assert alone["invocation"] != invocation  # one invocation per `runner run`
    assert f"invocation:  {invocation}\n" in ok(shown).stdout
    assert sorted(r["id"] for r in json.loads(ok(listed).stdout)) == sorted(r["id"] for r in runs)
    assert json.loads(ok(cli("show", d["id"], "--json")).stdout)["invocation"] == invocation


def test_concurrency_1_runs_the_branches_one_after_the_other(project: ProjectDir, cli: Cli) -> None:
    branch = 'echo "start $RUNNER_TASK" >> log; sleep 0.2; echo "end $RUNNER_TASK" >> log'
    write(project, DIAMOND.replace("sleep 1; echo b", branch).replace("sleep 1; echo c", branch))
    serial, bad = cli.side_by_side(
        ("run", "d", "--concurrency", "1", "--json"), ("run", "d", "--concurrency", "0")
    )
    runs = by_task(json_lines(ok(serial).stdout))
    assert not overlap(runs["b"], runs["c"])
    log = (project.root / "log").read_text().split("\n")
    assert log in (
        ["start b", "end b", "start c", "end c", ""],
        ["start c", "end c", "start b", "end b", ""],
    )
    assert "Invalid value for '--concurrency'" in exits(bad, 2).stderr


def write_slow_and_fast(project: ProjectDir) -> None:
    """``top`` needs ``fast`` and ``slow``, which waits for the file ``go``."""
    write(
        project,
        f"""
        version: 1
        tasks:
          slow:
            command: '{wait_for_file("go", then="echo slow")}'
          fast:
            command: 'echo fast'
          top:
            command: 'echo top'
            needs: [slow, fast]
        """,
    )


def first_json_line(runner: subprocess.Popen[str]) -> dict[str, Any]:
    """The first JSON line ``runner`` prints, read within 5 s."""
    assert runner.stdout is not None
    assert select.select([runner.stdout], [], [], 5)[0], "nothing was printed"
    return json.loads(runner.stdout.readline())


def close_stdout(runner: subprocess.Popen[str]) -> None:
    """Stop reading ``runner``'s stdout, as ``| head -1`` does after its line."""
    assert runner.stdout is not None
    runner.stdout.close()
    runner.stdout = None


def test_json_lines_come_as_runs_finish_and_the_target_last(project: ProjectDir, cli: Cli) -> None:
    write_slow_and_fast(project)
    runner = cli.start("run", "top", "--json")
    first = first_json_line(runner)  # printed while slow still runs
    assert (first["task"], first["status"]) == ("fast", "succeeded")
    (project.root / "go").touch()
    rest = json_lines(ok(cli.finish(runner)).stdout)
    assert [r["task"] for r in rest] == ["slow", "top"]  # as they finished, not in `needs` order
    assert at(first, "finished_at") <= at(rest[0], "finished_at") <= at(rest[1], "finished_at")


def test_when_the_reader_of_the_json_lines_goes_away_the_runs_go_on_and_are_recorded(
    project: ProjectDir, cli: Cli
) -> None:
    write_slow_and_fast(project)
    runner = cli.start("run", "top", "--json")  # as `runner run top --json | head -1`
    assert first_json_line(runner)["task"] == "fast"
    close_stdout(runner)
    (project.root / "go").touch()
    result = cli.finish(runner)
    assert result.returncode == 0, result.stderr
    assert "runner: stdout was closed; the runs go on and are recorded" in result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr
    runs = json.loads(ok(cli("runs", "--json")).stdout)
    assert sorted((r["task"], r["status"]) for r in runs) == [
        ("fast", "succeeded"), ("slow", "succeeded"), ("top", "succeeded")
    ]


def test_when_stdout_and_stderr_share_a_pipe_whose_reader_goes_away_the_runs_still_end_well(
    project: ProjectDir, cli: Cli
) -> None:
    write_slow_and_fast(project)
    runner = cli.start("run", "top", "--json", stderr=subprocess.STDOUT)  # `... --json 2>&1 | head -1`
    assert first_json_line(runner)["task"] == "fast"
    close_stdout(runner)
    (project.root / "go").touch()
    assert cli.finish(runner).returncode == 0
    runs = json.loads(ok(cli("runs", "--json")).stdout)
    assert {r["status"] for r in runs} == {"succeeded"} and len(runs) == 3


# -- skipping -------------------------------------------------------------------------------------


def test_a_failed_need_skips_its_dependents_and_the_other_branch_still_runs(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          bad:
            command: 'touch bad-done; exit 5'
          good:
            command: '{wait_for_file("bad-done", then="echo good")}'
          blocked:
            command: 'echo never'
            needs: [bad]
          other:
            command: 'echo "other after good"'
            needs: [good]
          top:
            command: 'echo never'
            needs: [blocked, other]
        """,
    )
    text, as_json = cli.side_by_side(("run", "top"), ("run", "top", "--json"))
    stderr = exits(text, 1).stderr
    assert re.search(
        r"^runner: bad failed in [\d.]+s, exit code 5 \(run [0-9a-f]{32}\)$", stderr, re.M
    )
    assert re.search(
        r"^runner: blocked skipped: a need did not succeed: bad failed \(run [0-9a-f]{32}\)$",
        stderr,
        re.M,
    )
    assert re.search(
        r"^runner: other succeeded in ", stderr, re.M
    )  # the other branch ran to the end
    assert "runner: top skipped: a need did not succeed: blocked skipped" in stderr
    assert "\x1b" not in stderr  # not a terminal: plain lines, no live status line

    runs = by_task(json_lines(exits(as_json, 1).stdout))
    assert {name: r["status"] for name, r in runs.items()} == {
        "bad": "failed",
        "good": "succeeded",
        "blocked": "skipped",
        "other": "succeeded",
        "top": "skipped",
    }
    assert runs["other"]["stdout"] == "other after good\n"
    assert runs["blocked"]["error"]["message"] == "a need did not succeed: bad failed"
    assert runs["blocked"]["started_at"] is None and runs["blocked"]["finished_at"] is not None
    assert runs["top"]["error"]["message"] == "a need did not succeed: blocked skipped"


def test_a_disabled_or_orphaned_need_refuses_the_run_before_anything_runs(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          prep:
            command: 'touch prepared'
          paused:
            command: 'echo paused'
            enabled: false
          lost:
            type: python
            callable: plugins.flow:no_such_function
          top:
            command: 'echo top'
            needs: [prep, paused]
          top2:
            command: 'echo top2'
            needs: [prep, lost]
        """,
    )
    disabled, orphaned = cli.side_by_side(("run", "top"), ("run", "top2", "--json"))
    assert (
        "task 'top' needs 'paused', which is disabled in tasks.d/a.yaml:5 (enabled: false)"
        in exits(disabled, 3).stderr
    )
    message = exits(orphaned, 3).stderr
    assert "task 'top2' needs 'lost', which is orphaned (tasks.d/a.yaml:8)" in message
    assert "no_such_function" in message
    assert orphaned.stdout == ""
    assert not (project.root / "prepared").exists()  # prep did not run either
    assert cli.runs() == []  # and nothing was recorded


# -- retries --------------------------------------------------------------------------------------


def test_retries_are_new_attempts_and_dependents_wait_for_the_last(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          flaky:
            command: 'n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo "try $n"; [ $n -ge 3 ]'
            retries: {count: 3, backoff: 0.01s}
          after:
            command: 'echo "after try $(cat count)"'
            needs: [flaky]
          hopeless:
            command: 'echo "try $RUNNER_RUN_ID"; exit 2'
            retries: {count: 1, backoff: 0.01s}
        """,
    )
    recovered, failed = cli.side_by_side(("run", "after", "--json"), ("run", "hopeless", "--json"))
    *tries, after = json_lines(ok(recovered).stdout)
    assert [(r["task"], r["attempt"], r["trigger"], r["status"]) for r in tries] == [
        ("flaky", 1, "cli", "failed"),
        ("flaky", 2, "retry", "failed"),
        ("flaky", 3, "retry", "succeeded"),
    ]
    assert [r["parent_id"] for r in tries] == [None, tries[0]["id"], tries[1]["id"]]
    assert [r["stdout"] for r in tries] == ["try 1\n", "try 2\n", "try 3\n"]
    assert len({r["invocation"] for r in [*tries, after]}) == 1
    for earlier, later in itertools.pairwise(tries):
        assert at(later, "started_at") >= at(earlier, "finished_at")
    assert (after["status"], after["stdout"]) == ("succeeded", "after try 3\n")
    assert at(after, "started_at") >= at(tries[-1], "finished_at")

    first, second = json_lines(exits(failed, 1).stdout)  # out of retries: exit 1
    assert [(r["attempt"], r["status"], r["exit_code"]) for r in (first, second)] == [
        (1, "failed", 2),
        (2, "failed", 2),
    ]
    assert second["stdout"] == f"try {second['id']}\n"

    shown = ok(cli("show", tries[2]["id"])).stdout
    assert "attempt:     3\n" in shown
    assert "trigger:     retry\n" in shown
    assert f"parent_id:   {tries[1]['id']}\n" in shown


# -- results downstream ---------------------------------------------------------------------------


def test_results_flow_python_to_python_python_to_shell_and_shell_to_python(
    project: ProjectDir, cli: Cli
) -> None:
    project.write("bin/read_upstream.py", READ_UPSTREAM)
    write(
        project,
        f"""
        version: 1
        tasks:
          measure:
            type: python
            callable: plugins.flow:measure
          total:
            type: python
            callable: plugins.flow:total
          words:
            command: 'echo "hello there"; test -z "$RUNNER_UPSTREAM_FILE"'  # no needs, no file
          describe:
            type: python
            callable: plugins.flow:describe
            needs: [measure]
          shout:
            type: python
            callable: plugins.flow:shout
            needs: [words]
          report:
            command: {json.dumps([sys.executable, "bin/read_upstream.py"])}
            needs: [total, words]
          all:
            command: 'true'
            needs: [describe, shout, report]
        """,
    )
    runs = by_task(json_lines(ok(cli("run", "all", "--json")).stdout))

    # python -> python: the original object, and the need's run record.
    assert runs["measure"]["result"]["_type"] == "Measure"  # JSON can only show a stand-in...
    assert runs["describe"]["result"] == {  # ...but the task downstream got the object itself
        "type": "Measure",
        "value": 3,
        "unit": "m",
        "run": runs["measure"]["id"],
        "status": "succeeded",
        "names": ["measure"],
    }
    # shell -> python: the need's stdout.
    assert runs["shout"]["result"] == "HELLO THERE"
    # python and shell -> shell: a JSON file in $RUNNER_UPSTREAM_FILE, gone after the run.
    upstream = json.loads(runs["report"]["stdout"])
    assert upstream == {
        "total": {
            "id": runs["total"]["id"],
            "status": "succeeded",
            "result": {"sum": 42},
            "stdout": None,
            "exit_code": None,
        },
        "words": {
            "id": runs["words"]["id"],
            "status": "succeeded",
            "result": None,
            "stdout": "hello there\n",
            "exit_code": 0,
        },
    }
    path = Path(runs["report"]["stderr"].strip())
    assert path.name.startswith("runner-upstream-") and not path.exists()  # removed after the run
    assert runs["all"]["status"] == "succeeded"


def test_no_deps_uses_the_latest_succeeded_runs_of_the_needs(project: ProjectDir, cli: Cli) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          measure:
            type: python
            callable: plugins.flow:measure
          describe:
            type: python
            callable: plugins.flow:describe
            needs: [measure]
          words:
            command: 'echo "hello there"'
          shout:
            type: python
            callable: plugins.flow:shout
            needs: [words]
          listing:
            command: 'cat "$RUNNER_UPSTREAM_FILE"'
            needs: [words]
        """,
    )
    seven, never, empty = cli.side_by_side(
        ("run", "measure", "-p", "value=7", "--json"),
        ("run", "shout", "--no-deps", "--json"),
        ("run", "listing", "--no-deps"),
    )
    [kept] = json_lines(ok(seven).stdout)
    [alone] = json_lines(exits(never, 1).stdout)  # words never ran: nothing to stand in
    assert alone["error"]["type"] == "NoUpstreamResult"
    assert "no result of 'words' upstream (results: none)" in alone["error"]["message"]
    assert ok(empty).stdout == "{}"  # a shell task with needs always gets the file
    exits(cli("run", "measure", "-p", "value=-1"), 1)  # the latest run of measure failed

    [run] = json_lines(ok(cli("run", "describe", "--no-deps", "--json")).stdout)
    assert run["task"] == "describe"  # measure did not run again
    assert run["result"]["type"] == "Measure"  # unpickled from the store
    assert (run["result"]["value"], run["result"]["run"]) == (7, kept["id"])
    assert [r["status"] for r in cli.runs("--task", "measure")] == ["failed", "succeeded"]


def test_no_deps_with_a_stored_result_that_no_longer_loads_fails_only_the_run(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          measure:
            type: python
            callable: plugins.flow:measure
          describe:
            type: python
            callable: plugins.flow:describe
            needs: [measure]
        """,
    )
    [stored] = json_lines(ok(cli("run", "measure", "--json")).stdout)
    project.plugin("flow", PLUGIN.replace("Measure", "Gauge"))  # the pickled class is gone
    result = exits(cli("run", "describe", "--no-deps", "--json"), 1)
    [run] = json_lines(result.stdout)
    assert (run["task"], run["status"], run["error"]["type"]) == ("describe", "failed", "NoUpstreamResult")
    assert (
        f"the result of 'measure' cannot be loaded: run {stored['id']}: AttributeError: "
        in run["error"]["message"]
    )
    assert "run 'measure' again" in run["error"]["message"]
    assert 'upstream["measure"]' in run["error"]["traceback"]  # raised where the task asked for it
    assert [r["status"] for r in cli.runs("--task", "describe")] == ["failed"]


# -- stopping -------------------------------------------------------------------------------------


def test_sigint_cancels_the_running_task_and_records_the_rest_as_never_started(
    project: ProjectDir, cli: Cli
) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          first:
            command: 'echo first'
          long:
            command: '{LONG}'
            needs: [first]
            retries: {{count: 2, backoff: 0.01s}}
          last:
            command: 'echo never'
            needs: [long]
        """,
    )
    runner = cli.start("run", "last", "--json")
    marker = project.root / "started"
    pgid, run_id = poll(
        lambda: marker.exists() and marker.read_text().split(), what="long to start"
    )
    cli.groups.append(int(pgid))

    runner.send_signal(signal.SIGINT)
    result = exits(cli.finish(runner, within=5), 130)
    assert "stopped by signal 2; unfinished runs recorded cancelled" in result.stderr
    poll(lambda: not live_members(int(pgid)), within=2, what="the task's processes to end")

    printed = json_lines(result.stdout)
    assert printed[0]["task"] == "first" and printed[0]["status"] == "succeeded"
    assert printed[-1]["task"] == "last"  # the requested task's run last, as without a signal
    runs = by_task(printed)
    long, last = runs["long"], runs["last"]
    assert (long["id"], long["status"], long["attempt"]) == (run_id, "cancelled", 1)
    assert long["error"]["message"] == "stopped on request"
    assert long["started_at"] is not None
    assert last["status"] == "cancelled"
    assert last["error"]["message"] == "stopped on request before it started"
    assert (last["started_at"], last["duration_s"]) == (None, None)
    # The store says the same, nothing is left queued or running, and cancelled is not retried.
    stored = cli.runs()
    assert sorted((r["task"], r["status"]) for r in stored) == [
        ("first", "succeeded"),
        ("last", "cancelled"),
        ("long", "cancelled"),
    ]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_retry_pause_cancels_the_pending_attempt_and_reports_each_run_once(
    project: ProjectDir, cli: Cli, signum: int
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          flaky:
            command: 'echo "try $RUNNER_RUN_ID"; exit 1'
            retries: {count: 2, backoff: 1m}
          after:
            command: 'echo never'
            needs: [flaky]
        """,
    )
    runner = cli.start("run", "after", "--json")
    assert runner.stdout is not None
    ready, _, _ = select.select([runner.stdout], [], [], 5)
    assert ready, "the first attempt was not reported"
    failed = json.loads(runner.stdout.readline())  # reported as it ended: the pause has begun
    assert (failed["task"], failed["attempt"], failed["status"]) == ("flaky", 1, "failed")

    runner.send_signal(signum)
    result = exits(cli.finish(runner, within=5), 128 + signum)
    printed = [failed, *json_lines(result.stdout)]
    assert len({r["id"] for r in printed}) == len(printed) == 3  # every run reported once
    assert printed[-1]["task"] == "after"
    pending = next(r for r in printed if r["task"] == "flaky" and r["attempt"] == 2)
    assert (pending["status"], pending["trigger"], pending["parent_id"]) == (
        "cancelled",
        "retry",
        failed["id"],
    )
    assert pending["error"]["message"] == "stopped on request before it started"
    assert pending["started_at"] is None
    stored = sorted((r["task"], r["attempt"], r["status"]) for r in cli.runs())
    assert stored == [("after", 1, "cancelled"), ("flaky", 1, "failed"), ("flaky", 2, "cancelled")]


# -- live progress --------------------------------------------------------------------------------


class Terminal:
    """A pseudo-terminal to give a ``runner`` process as its stderr; ``text`` is what it drew."""

    def __init__(self) -> None:
        self.master, self.child_side = pty.openpty()
        self.text = ""

    def start(self, cli: Cli, *args: str) -> subprocess.Popen[str]:
        process = cli.start(*args, stderr=self.child_side)
        os.close(self.child_side)  # from here on, only the process holds the terminal open
        self.child_side = -1
        return process

    def read(self, until: re.Pattern[str] | None = None, *, within: float = 5) -> str:
        """Read until ``until`` matches what was drawn, or (None) until the terminal closes."""
        deadline = time.monotonic() + within
        while until is None or not until.search(self.text):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"gave up waiting for {until} on the terminal: {self.text!r}")
            if not select.select([self.master], [], [], remaining)[0]:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the process closed its end
                chunk = b""
            if not chunk:
                break
            self.text += chunk.decode(errors="replace")
        return self.text

    def close(self) -> None:
        for fd in (self.master, self.child_side):
            if fd != -1:
                os.close(fd)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    opened = Terminal()
    yield opened
    opened.close()


def status_lines(text: str) -> list[str]:
    """The status lines drawn, in order."""
    return re.findall(r"\[ +\d+\.\ds\] [^\r\n\x1b]*", text)


def test_on_a_terminal_a_live_status_line_shows_what_runs_and_what_is_done(
    project: ProjectDir, cli: Cli, terminal: Terminal
) -> None:
    write(
        project,
        f"""
        version: 1
        tasks:
          quick:
            command: 'echo quick'
          slow:
            command: '{wait_for_file("go", then="echo slow")}'
            needs: [quick]
          top:
            command: 'echo top'
            needs: [slow]
        """,
    )
    runner = terminal.start(cli, "run", "top")
    terminal.read(re.compile(r"\[ +\d+\.\ds\] 1/3 finished \(1 succeeded\) \| running: slow"))
    (project.root / "go").touch()
    seen = terminal.read()
    result = cli.finish(runner)
    assert result.returncode == 0, seen
    assert result.stdout == "top\n"
    # Each finished run gets a line of its own, drawn over the status line (cleared first).
    for task in ("quick", "slow", "top"):
        assert re.search(
            rf"\r\x1b\[K(?:\r\x1b\[K)*runner: {task} succeeded in [\d.]+s \(run ", seen
        )
    assert seen.rstrip("\r\n").endswith("\x1b[K")  # the status line is cleared at the end


def test_on_a_terminal_a_retried_task_counts_once_and_shows_while_it_waits(
    project: ProjectDir, cli: Cli, terminal: Terminal
) -> None:
    write(
        project,
        """
        version: 1
        tasks:
          flaky:
            command: 'if [ -e failed-once ]; then echo ok; else touch failed-once; exit 1; fi'
            retries: {count: 1, backoff: 1s}
          after:
            command: 'echo after'
            needs: [flaky]
        """,
    )
    runner = terminal.start(cli, "run", "after")
    seen = terminal.read()
    assert cli.finish(runner).returncode == 0, seen
    assert re.search(r"runner: flaky failed in [\d.]+s, exit code 1 \(run ", seen)
    assert re.search(r"runner: flaky succeeded in [\d.]+s \(run ", seen)
    drawn = status_lines(seen)
    assert any(line.endswith("0/2 finished | retrying: flaky") for line in drawn), drawn
    assert all(re.search(r"\] [012]/2 finished", line) for line in drawn), drawn  # tasks, not runs
