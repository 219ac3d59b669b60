"""Declarative task definitions through the real ``runner`` command: validate, schema, sync, list.

Every test runs ``python -m runner --project <tmp>`` in a subprocess against a temporary project,
and checks what a user or a script would: exit codes, the lines on stdout and stderr, JSON, and
whether the store changed.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import forkserver
import pytest
from click.testing import CliRunner
from conftest import ProjectDir, RunnerCli, cli_env

import runner
from runner import spec as spec_module
from runner.cli import main

pytestmark = pytest.mark.timeout(60)

SCHEMA = Path(runner.__file__).resolve().parents[1] / "schemas" / "tasks.schema.json"

GOOD_PLUGIN = """
from runner import task


@task("calculate_sum")
def add(a: int, b: int) -> dict:
    return {"result": a + b}


def daily(day: str = "today") -> str:
    return day
"""

TASKS = """
version: 1
tasks:
  hello:
    command: echo "hello from runner"
  add:
    type: python
    callable: calculate_sum
    parameters: {a: 10, b: 32}
"""

MORE_TASKS = """
version: 1
tasks:
  report:
    type: python
    callable: plugins.reports:daily
    needs: [add]
    schedule: {cron: "30 2 * * *", timezone: Europe/Oslo}
    enabled: false
"""


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def failed(result: subprocess.CompletedProcess[str], code: int = 2) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def listed(runner_cli: RunnerCli, *flags: str) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = json.loads(ok(runner_cli("list", "--json", *flags)).stdout)
    return tasks


def stored(project: ProjectDir, *, removed: bool = False) -> dict[str, str | None]:
    """What the store holds, read straight from its file: name -> disabled reason (None: enabled).

    Faster than ``runner list --json`` (no interpreter start); the list command has its own tests.
    """
    with closing(sqlite3.connect(f"file:{project.db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT name, enabled, disabled_reason, removed FROM tasks ORDER BY name")
        return {
            name: None if enabled else reason
            for name, enabled, reason, was_removed in rows
            if removed or not was_removed
        }


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection commits to the database file."""
    value: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return value


@pytest.fixture
def example(project: ProjectDir) -> ProjectDir:
    """A valid project: a shell task, a python task by @task name, one declared disabled."""
    project.plugin("reports", GOOD_PLUGIN)
    project.tasks("main.yaml", TASKS)
    project.tasks("more/report.yml", MORE_TASKS)
    return project


# -- validate --------------------------------------------------------------------------------------


def test_validate_a_valid_project(example: ProjectDir, runner_cli: RunnerCli) -> None:
    result = ok(runner_cli("validate"))
    assert result.stdout == "ok: 3 tasks in 2 files\n"
    assert result.stderr == ""


def test_validate_prints_every_problem_as_path_line_col(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          build:
            comand: make
            description: no
        """,
    )
    project.tasks(
        "b/c.yml",
        """
        version: 1
        tasks:
          deploy:
            command: ./deploy
            needs: [biuld]
            timeout: 5x
        """,
    )
    result = failed(runner_cli("validate"))
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "tasks.d/a.yaml:3:3: task 'build': a shell task needs a 'command'",
        "tasks.d/a.yaml:4:5: task 'build': unknown key 'comand' (did you mean 'command'?)",
        "tasks.d/a.yaml:5:18: task 'build': description: plain 'no' is a boolean in YAML 1.1;"
        ' quote it ("no") if you mean the string',
        "tasks.d/b/c.yml:5:13: task 'deploy' needs 'biuld', which is not declared"
        " (did you mean 'build'?)",
        "tasks.d/b/c.yml:6:14: task 'deploy': timeout: '5x' is not a duration"
        " (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)",
    ]


def test_validate_json(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  a:\n    command: echo\n    needs: [a]\n")
    project.tasks("b.yaml", "version: 1\ntasks:\n  b:\n    command: echo\n")
    result = failed(runner_cli("validate", "--json"))
    assert json.loads(result.stdout) == {
        "valid": False,
        "tasks": 2,
        "files": 2,
        "problems": [
            {"path": "tasks.d/a.yaml", "line": 5, "col": 5, "severity": "error",
             "message": "cycle in needs: a -> a"},
        ],
        "warnings": [],
    }
    (project.root / "tasks.d" / "a.yaml").unlink()
    result = ok(runner_cli("validate", "--json"))
    assert json.loads(result.stdout) == {"valid": True, "tasks": 1, "files": 1, "problems": [], "warnings": []}


def test_validate_needs_no_store(example: ProjectDir, runner_cli: RunnerCli, tmp_path: Path) -> None:
    ok(runner_cli("--db", str(tmp_path / "elsewhere" / "x.db"), "validate"))
    assert not (example.root / ".runner").exists()
    assert not (tmp_path / "elsewhere").exists()


def test_validate_without_tasks_dir_says_where_it_looked(tmp_path: Path) -> None:
    result = forkserver.run(
        [sys.executable, "-m", "runner", "--project", str(tmp_path), "validate"], env=cli_env(), timeout=30
    )
    failed(result)
    # The project is not below the current directory: its absolute path opens from anywhere.
    assert result.stderr.startswith(f"{tmp_path}/tasks.d:1:1: no tasks.d/ directory in {tmp_path}")


# Runs the command in-process in a fresh interpreter, then prints which heavy packages it loaded
# (sys.modules sees every import, however it was made).
PROBE = """
import json, sys
from runner.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = {"sqlalchemy", "aiosqlite", "jsonschema", "plugins"}
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & heavy)))
"""


@pytest.mark.parametrize(
    ("args", "loaded"),
    [
        (("validate",), ["plugins"]),  # valid files need no jsonschema (runner.precheck)
        (("validate", "--json"), ["plugins"]),
        (("--help",), []),
        (("validate", "--help"), []),
        (("schema",), []),
    ],
)
def test_fast_commands_do_not_import_sqlalchemy(
    example: ProjectDir, args: tuple[str, ...], loaded: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "--project", str(example.root), *args],
        cwd=example.root, capture_output=True, text=True, env=cli_env(), timeout=30,
    )
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == loaded


# -- schema ----------------------------------------------------------------------------------------


def test_schema_prints_the_json_schema(project: ProjectDir, runner_cli: RunnerCli) -> None:
    text = ok(runner_cli("schema")).stdout
    assert text == SCHEMA.read_text(encoding="utf-8")  # byte for byte: `> schemas/...` makes no diff
    printed = json.loads(text)
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(printed)
    text = json.dumps(printed)
    for unsupported in ("$dynamicRef", "prefixItems", "unevaluatedProperties", "unevaluatedItems"):
        assert unsupported not in text


# -- sync ------------------------------------------------------------------------------------------


def test_sync_prints_added_updated_removed(example: ProjectDir, runner_cli: RunnerCli) -> None:
    first = ok(runner_cli("sync"))
    assert first.stdout.splitlines() == ["added: add, hello, report", "disabled: report"]
    assert first.stderr == ""
    assert stored(example) == {"add": None, "hello": None, "report": "declared"}

    example.tasks(
        "main.yaml",
        TASKS.replace('echo "hello from runner"', "echo changed").replace("  add:", "  plus:"),
    )
    example.tasks("more/report.yml", MORE_TASKS.replace("needs: [add]", "needs: [plus]"))
    second = ok(runner_cli("sync", "--json"))
    assert json.loads(second.stdout) == {
        "added": ["plus"],
        "updated": ["hello", "report"],
        "removed": ["add"],
        "disabled": [],
        "enabled": [],
    }
    assert stored(example) == {"hello": None, "plus": None, "report": "declared"}


def test_second_sync_with_no_change_says_so_and_writes_nothing(
    example: ProjectDir, runner_cli: RunnerCli
) -> None:
    ok(runner_cli("sync"))
    with closing(sqlite3.connect(example.db, isolation_level=None)) as watcher:
        before = data_version(watcher)
        assert ok(runner_cli("sync")).stdout == "nothing to change\n"
        assert json.loads(ok(runner_cli("sync", "--json")).stdout) == {
            "added": [], "updated": [], "removed": [], "disabled": [], "enabled": [],
        }
        assert data_version(watcher) == before


def test_files_put_back_after_a_sync_of_an_empty_tasks_d_are_added_again(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    task_file = project.tasks("a.yaml", "version: 1\ntasks:\n  a:\n    command: echo a\n")
    assert ok(runner_cli("sync")).stdout == "added: a\n"
    kept = task_file.read_text()
    task_file.unlink()
    assert ok(runner_cli("sync")).stdout == "removed: a\n"
    task_file.write_text(kept)  # put back as it was: not the state the store last synced
    assert ok(runner_cli("sync")).stdout == "added: a\n"
    assert [task["name"] for task in listed(runner_cli)] == ["a"]


def test_dry_run_shows_the_changes_and_makes_none(example: ProjectDir, runner_cli: RunnerCli) -> None:
    ok(runner_cli("sync"))
    before = listed(runner_cli, "--all")
    (example.root / "tasks.d" / "more" / "report.yml").unlink()
    example.tasks("new.yaml", "version: 1\ntasks:\n  fresh:\n    command: echo\n")

    with closing(sqlite3.connect(example.db, isolation_level=None)) as watcher:
        version = data_version(watcher)
        dry = ok(runner_cli("sync", "--dry-run", "--json"))
        assert json.loads(dry.stdout) == {
            "added": ["fresh"], "updated": [], "removed": ["report"], "disabled": [], "enabled": [],
        }
        text = ok(runner_cli("sync", "--dry-run"))
        assert text.stdout.splitlines() == ["would be added: fresh", "would be removed: report"]
        assert data_version(watcher) == version
    assert listed(runner_cli, "--all") == before


def test_invalid_files_leave_the_store_untouched(example: ProjectDir, runner_cli: RunnerCli) -> None:
    ok(runner_cli("sync"))
    before = stored(example, removed=True)
    # one good change and one bad file: neither is applied
    example.tasks("main.yaml", TASKS.replace("  hello:", "  renamed:"))
    example.tasks("broken.yaml", "version: 1\ntasks:\n  x:\n    command: [echo\n")
    with closing(sqlite3.connect(example.db, isolation_level=None)) as watcher:
        version = data_version(watcher)
        result = failed(runner_cli("sync"))
        dry = failed(runner_cli("sync", "--dry-run", "--json"))
        assert data_version(watcher) == version
    assert result.stdout == dry.stdout == ""
    assert result.stderr.splitlines() == [
        "tasks.d/broken.yaml:5:1: YAML syntax error: while parsing a flow sequence"
        " did not find expected ',' or ']'",
        "runner: 1 problem(s) in the task files; nothing was changed",
    ]
    assert stored(example, removed=True) == before


def test_invalid_files_on_a_new_project_store_no_tasks(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  a:\n    command: echo\n    needs: [nope]\n")
    result = failed(runner_cli("sync"))
    assert result.stderr.splitlines()[0] == "tasks.d/a.yaml:5:13: task 'a' needs 'nope', which is not declared"
    assert not project.db.exists() or stored(project, removed=True) == {}


# -- list ------------------------------------------------------------------------------------------


def test_list_before_any_sync(example: ProjectDir, runner_cli: RunnerCli) -> None:
    assert ok(runner_cli("list")).stdout == "no tasks; run `runner sync` first\n"


def test_list_shows_state_and_filters(example: ProjectDir, runner_cli: RunnerCli) -> None:
    ok(runner_cli("sync"))
    header, *text = ok(runner_cli("list")).stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "STATE", "SCHEDULE", "NEXT", "LAST", "RUN", "SOURCE"]
    assert [line.split()[:3] for line in text] == [
        ["add", "python", "enabled"],
        ["hello", "shell", "enabled"],
        ["report", "python", "disabled"],
    ]
    assert "disabled (declared)  At 02:30 every day (Europe/Oslo)  -     -" in text[2]
    assert text[2].endswith("tasks.d/more/report.yml:3")
    assert listed(runner_cli) == [
        {
            "name": "add", "type": "python", "enabled": True, "disabled_reason": None,
            "callable": "calculate_sum", "parameters": {"a": 10, "b": 32}, "needs": [],
            "schedule": None, "source": "tasks.d/main.yaml:5",
            "schedule_description": None, "next_fire_at": None, "last_run": None,
        },
        {
            "name": "hello", "type": "shell", "enabled": True, "disabled_reason": None,
            "command": 'echo "hello from runner"', "parameters": {}, "needs": [],
            "schedule": None, "source": "tasks.d/main.yaml:3",
            "schedule_description": None, "next_fire_at": None, "last_run": None,
        },
        {
            "name": "report", "type": "python", "enabled": False, "disabled_reason": "declared",
            "callable": "plugins.reports:daily", "parameters": {}, "needs": ["add"],
            "schedule": {"cron": "30 2 * * *", "timezone": "Europe/Oslo"},
            "source": "tasks.d/more/report.yml:3",
            "schedule_description": "At 02:30 every day (Europe/Oslo)", "next_fire_at": None, "last_run": None,
        },
    ]
    assert [t["name"] for t in listed(runner_cli, "--enabled")] == ["add", "hello"]
    [_, line] = ok(runner_cli("list", "--disabled")).stdout.splitlines()
    assert line.startswith("report ")


def test_list_shows_an_interval_as_a_duration(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.tasks(
        "a.yaml",
        "version: 1\ntasks:\n  tick:\n    command: 'true'\n"
        "    schedule: {every: 90m, overlap: allow}\n",
    )
    ok(runner_cli("sync"))
    [tick] = listed(runner_cli)
    assert tick["schedule"] == {"every": "1h30m", "every_seconds": 5400.0, "overlap": "allow"}
    assert tick["schedule_description"] == "every 1h30m"


def test_list_shows_when_a_task_fires_next_and_how_its_last_run_went(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          nightly:
            command: 'exit 3'
            schedule: {cron: "30 2 * * *", timezone: Asia/Tokyo}
          hello:
            command: echo hi
        """,
    )
    assert runner_cli("run", "nightly").returncode == 1
    ok(runner_cli("run", "hello"))
    before = datetime.now(UTC)
    hello, nightly = listed(runner_cli)
    tokyo = ZoneInfo("Asia/Tokyo")
    expected = datetime.combine(before.astimezone(tokyo).date(), dt_time(2, 30), tokyo)
    if expected <= before:
        expected += timedelta(days=1)
    assert datetime.fromisoformat(nightly["next_fire_at"]) == expected
    assert nightly["schedule_description"] == "At 02:30 every day (Asia/Tokyo)"
    assert (nightly["last_run"]["status"], hello["last_run"]["status"]) == ("failed", "succeeded")
    assert hello["last_run"]["id"] == json.loads(ok(runner_cli("runs", "--task", "hello", "--json")).stdout)[0]["id"]
    assert (hello["schedule_description"], hello["next_fire_at"]) == (None, None)
    _, hello_line, nightly_line = ok(runner_cli("list")).stdout.splitlines()
    assert "At 02:30 every day (Asia/Tokyo)  in " in nightly_line and "failed " in nightly_line
    assert re.search(r"  -  +-  +succeeded \d+s ago  +tasks.d/a.yaml:6$", hello_line), hello_line


def test_removed_task_is_kept_and_listed_with_all(example: ProjectDir, runner_cli: RunnerCli) -> None:
    ok(runner_cli("sync"))
    example.tasks("main.yaml", TASKS.replace("  hello:\n    command: echo \"hello from runner\"\n", ""))
    assert ok(runner_cli("sync")).stdout == "removed: hello\n"
    assert "hello" not in ok(runner_cli("list")).stdout
    everything = listed(runner_cli, "--all")
    [hello] = [t for t in everything if t["name"] == "hello"]
    assert (hello["enabled"], hello["disabled_reason"], hello["command"]) == (
        False, "removed", 'echo "hello from runner"',
    )
    assert [t["name"] for t in everything] == ["add", "hello", "report"]
    # and it comes back when declared again
    example.tasks("main.yaml", TASKS)
    assert ok(runner_cli("sync")).stdout == "added: hello\n"
    assert stored(example)["hello"] is None


# -- python tasks: orphaned, invalid, re-enabled ---------------------------------------------------

JOB = """
version: 1
tasks:
  job:
    type: python
    callable: plugins.jobs:run
    parameters: {a: 1}
  other:
    command: echo
"""


def test_callable_that_does_not_import(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.plugin("jobs", "import no_such_dependency_xyz\n\n\ndef run(a: int) -> int:\n    return a\n")
    project.tasks("jobs.yaml", JOB)
    error = "cannot import plugins.jobs: ModuleNotFoundError: No module named 'no_such_dependency_xyz'"

    # validate: an error, at the callable's value, because CI should catch it
    result = failed(runner_cli("validate"))
    assert result.stderr.splitlines() == [
        "plugins/jobs.py:1:1: warning: " + error,
        f"tasks.d/jobs.yaml:5:15: task 'job': callable 'plugins.jobs:run': {error}",
    ]

    # sync: stored disabled while the rest goes on, with a warning naming task, callable and error
    result = ok(runner_cli("sync"))
    assert result.stdout.splitlines() == ["added: job, other", "disabled: job"]
    assert result.stderr.splitlines() == [
        "warning: plugins/jobs.py:1:1: " + error,
        f"warning: task 'job' (tasks.d/jobs.yaml:3) is disabled: orphaned: {error}"
        " (callable 'plugins.jobs:run')",
    ]
    assert stored(project) == {"job": f"orphaned: {error}", "other": None}
    [_, line] = ok(runner_cli("list", "--disabled")).stdout.splitlines()
    assert line.split()[:3] == ["job", "python", "disabled"]
    assert f"(orphaned: {error})" in line

    # fixed: the next sync enables it, and it is listed as enabled
    project.plugin("jobs", "def run(a: int) -> int:\n    return a\n")
    fixed = ok(runner_cli("sync"))
    assert (fixed.stdout, fixed.stderr) == ("enabled: job\n", "")
    assert [t["name"] for t in listed(runner_cli, "--enabled")] == ["job", "other"]


def test_run_warns_of_an_unrelated_disabled_task_once_when_it_becomes_disabled(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    project.plugin("jobs", "import no_such_dependency_xyz\n")
    project.tasks("jobs.yaml", JOB)
    first, again = ok(runner_cli("run", "other")), ok(runner_cli("run", "other"))
    assert "warning: task 'job' (tasks.d/jobs.yaml:3) is disabled: orphaned" in first.stderr
    assert "warning: plugins/jobs.py:1:1: cannot import plugins.jobs" in first.stderr
    assert again.stderr.startswith("runner: other succeeded")
    assert "warning" not in again.stderr
    # sync still says everything that is wrong, each time it is asked
    assert "warning: task 'job'" in ok(runner_cli("sync")).stderr
    # a new reason is a change: said once more
    project.plugin("jobs", "import another_missing_xyz\n")
    assert "No module named 'another_missing_xyz'" in ok(runner_cli("run", "other")).stderr


def test_orphan_warning_as_json_log_line(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.plugin("jobs", "def something_else() -> None: ...\n")
    project.tasks("jobs.yaml", JOB)
    result = ok(runner_cli("--log-format", "json", "sync"))
    [event] = [json.loads(line) for line in result.stderr.splitlines()]
    assert event["level"] == "warning"
    assert event["event"] == "task_orphaned"
    assert event["task"] == "job"
    assert event["callable"] == "plugins.jobs:run"
    assert event["error"] == "module plugins.jobs has no attribute 'run'"
    assert {"at", "message"} <= set(event)
    assert stored(project)["job"] == "orphaned: module plugins.jobs has no attribute 'run'"


def test_disabled_in_the_file_stays_disabled_when_the_callable_resolves(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    project.tasks("jobs.yaml", JOB.replace("parameters: {a: 1}", "parameters: {a: 1}\n    enabled: false"))
    ok(runner_cli("sync"))
    assert stored(project)["job"] == (
        "orphaned: cannot import plugins.jobs: ModuleNotFoundError: No module named 'plugins.jobs'"
    )
    project.plugin("jobs", "def run(a: int) -> int:\n    return a\n")
    assert ok(runner_cli("sync")).stdout == "disabled: job\n"
    assert stored(project)["job"] == "declared"


def test_parameters_that_no_longer_fit_the_signature(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.plugin("jobs", "def run(a: int) -> int:\n    return a\n")
    project.tasks("jobs.yaml", JOB)
    assert ok(runner_cli("sync")).stdout == "added: job, other\n"

    # the callable changes under the unchanged task file
    project.plugin("jobs", "def run(a: int, b: str) -> str:\n    return b * a\n")
    result = ok(runner_cli("sync"))
    assert result.stdout == "disabled: job\n"
    assert result.stderr == (
        "warning: task 'job' (tasks.d/jobs.yaml:3) is disabled: invalid: missing parameter 'b' (str)"
        " (callable 'plugins.jobs:run')\n"
    )
    assert stored(project)["job"] == "invalid: missing parameter 'b' (str)"
    validate = failed(runner_cli("validate"))
    assert validate.stderr == "tasks.d/jobs.yaml:6:5: task 'job': missing parameter 'b' (str)\n"

    # a wrongly typed value in the file is invalid too
    project.tasks("jobs.yaml", JOB.replace("{a: 1}", "{a: one, b: x}"))
    result = ok(runner_cli("sync"))
    assert result.stdout.splitlines() == ["updated: job", "disabled: job"]
    reason = stored(project)["job"]
    assert reason is not None and reason.startswith("invalid: ") and "'a'" in reason

    # fixed in the file: updated and enabled again
    project.tasks("jobs.yaml", JOB.replace("{a: 1}", "{a: 2, b: x}"))
    assert ok(runner_cli("sync")).stdout.splitlines() == ["updated: job", "enabled: job"]
    assert stored(project)["job"] is None


def test_callable_by_registered_task_name(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.plugin("maths", GOOD_PLUGIN)
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          sum:
            type: python
            callable: calculate_sum
            parameters: {a: 1, b: 2}
          typo:
            type: python
            callable: calculate_summ
        """,
    )
    hint = (
        "no callable registered as 'calculate_summ' (did you mean 'calculate_sum'?);"
        " use 'module:qualname' or register it with @task in plugins/"
    )
    result = failed(runner_cli("validate"))
    assert result.stderr.splitlines() == [f"tasks.d/a.yaml:9:15: task 'typo': callable 'calculate_summ': {hint}"]
    ok(runner_cli("sync"))
    assert stored(project) == {"sum": None, "typo": f"orphaned: {hint}"}


def test_plugin_that_fails_to_import_is_reported_and_the_rest_load(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    project.plugin("aaa_broken", '"""Fails on import."""\n\nraise RuntimeError("boom")\n')
    project.plugin("good", GOOD_PLUGIN)
    project.plugin("zzz_syntax", "def oops(:\n")
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          sum:
            type: python
            callable: calculate_sum
            parameters: {a: 1, b: 2}
        """,
    )
    broken = "cannot import plugins.aaa_broken: RuntimeError: boom"
    syntax = "cannot import plugins.zzz_syntax: SyntaxError: invalid syntax (zzz_syntax.py, line 1)"
    result = ok(runner_cli("validate"))
    assert result.stderr.splitlines() == [
        f"plugins/aaa_broken.py:3:1: warning: {broken}",
        f"plugins/zzz_syntax.py:1:1: warning: {syntax}",
    ]
    assert result.stdout == "ok: 1 tasks in 1 files\n"

    synced = ok(runner_cli("--log-format", "json", "sync"))
    assert synced.stdout == "added: sum\n"
    events = [json.loads(line) for line in synced.stderr.splitlines()]
    assert [(e["event"], e["path"], e["error"]) for e in events] == [
        ("plugin_import_failed", "plugins/aaa_broken.py", broken),
        ("plugin_import_failed", "plugins/zzz_syntax.py", syntax),
    ]
    assert stored(project) == {"sum": None}


def test_task_registered_by_a_plugin_that_then_fails_is_not_resolved(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    project.plugin(
        "jobs",
        'from runner import task\n\n\n@task("job")\ndef job() -> None: ...\n\n\nraise ImportError("half done")\n',
    )
    project.tasks("a.yaml", "version: 1\ntasks:\n  j:\n    type: python\n    callable: job\n")
    result = failed(runner_cli("validate"))
    assert result.stderr.splitlines() == [
        "plugins/jobs.py:8:1: warning: cannot import plugins.jobs: ImportError: half done",
        "tasks.d/a.yaml:5:15: task 'j': callable 'job': no callable registered as 'job' (a plugin failed"
        " to import: cannot import plugins.jobs: ImportError: half done); use 'module:qualname' or"
        " register it with @task in plugins/",
    ]


def test_a_plugin_that_fails_halfway_registers_nothing_even_when_imported_again(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    # Resolving "plugins.jobs:first" imports the module a second time; that import, too, runs
    # the @task decorator before it fails, and must not leave "second" registered.
    project.plugin(
        "jobs",
        "from runner import task\n\n\ndef first() -> None: ...\n\n\n"
        '@task("second")\ndef second() -> None: ...\n\n\nraise RuntimeError("boom")\n',
    )
    project.tasks(
        "a.yaml",
        "version: 1\ntasks:\n  a:\n    type: python\n    callable: plugins.jobs:first\n"
        "  b:\n    type: python\n    callable: second\n",
    )
    ok(runner_cli("sync"))
    reasons = stored(project)
    assert reasons["a"] == "orphaned: cannot import plugins.jobs: RuntimeError: boom"
    assert (reasons["b"] or "").startswith("orphaned: no callable registered as 'second'")
    failed(runner_cli("run", "b"), code=3)


# -- bad input -------------------------------------------------------------------------------------


def test_problems_name_files_relative_to_the_current_directory(project: ProjectDir) -> None:
    # As pre-commit runs `runner --project ops validate` from the repository root: the paths
    # must open from there.
    project.tasks("x.yaml", "version: 1\ntasks:\n  a:\n    comand: echo\n")
    expected = {
        project.root.parent: "project/tasks.d/x.yaml:4:5: task 'a': unknown key 'comand' (did you mean 'command'?)",
        project.root: "tasks.d/x.yaml:4:5: task 'a': unknown key 'comand' (did you mean 'command'?)",
        project.root / "tasks.d": f"{project.root}/tasks.d/x.yaml:4:5: task 'a': unknown key 'comand' (did you mean 'command'?)",
    }
    for cwd, line in expected.items():
        for command in ("validate", "sync"):
            result = forkserver.run(
                [sys.executable, "-m", "runner", "--project", os.path.relpath(project.root, cwd), command],
                cwd=cwd, env=cli_env(), timeout=30,
            )
            assert result.returncode == 2
            assert line in result.stderr.splitlines(), (cwd, command, result.stderr)


def test_bad_files_are_each_reported_with_position_and_nothing_is_applied(
    project: ProjectDir, runner_cli: RunnerCli
) -> None:
    project.tasks("good.yaml", "version: 1\ntasks:\n  good:\n    command: echo\n")
    ok(runner_cli("sync"))
    before = listed(runner_cli, "--all")

    tasks = project.root / "tasks.d"
    project.tasks("good.yaml", "version: 1\ntasks:\n  good:\n    command: echo changed\n  new:\n    command: echo\n")
    (tasks / "empty.yaml").write_bytes(b"")
    (tasks / "list.yaml").write_text("- hello:\n    command: echo\n")
    (tasks / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tasks / "control.yaml").write_bytes(b"version: 1\n\x00\x01\x02\x03")
    os.symlink("loop.yaml", tasks / "loop.yaml")
    (tasks / "slash.yml").write_text('version: 1\ntasks:\n  "a/b":\n    command: echo\n')
    expected = [
        "tasks.d/binary.yaml:2:118: not UTF-8 text (byte 0x80); task files are UTF-8 YAML",
        "tasks.d/control.yaml:2:1: YAML error: unacceptable character #x0000:"
        " control characters are not allowed",
        "tasks.d/empty.yaml:1:1: empty file; a task file holds 'version: 1' and 'tasks:'",
        "tasks.d/list.yaml:1:1: expected a mapping with 'version: 1' and 'tasks:', found a list",
        "tasks.d/loop.yaml:1:1: cannot read: Too many levels of symbolic links",
        "tasks.d/slash.yml:3:3: invalid task name 'a/b': use 1-100 letters, digits, '_', '.' or '-',"
        " starting with a letter or digit",
    ]

    validate = failed(runner_cli("validate"))
    assert validate.stderr.splitlines() == expected
    sync = failed(runner_cli("sync"))
    assert sync.stderr.splitlines() == [*expected, "runner: 6 problem(s) in the task files; nothing was changed"]
    assert listed(runner_cli, "--all") == before


def test_directory_symlink_loop_is_walked_once(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.tasks("sub/a.yaml", "version: 1\ntasks:\n  a:\n    command: echo\n")
    os.symlink("..", project.root / "tasks.d" / "sub" / "loop")
    assert ok(runner_cli("sync")).stdout == "added: a\n"


def test_file_deleted_between_listing_and_reading(
    project: ProjectDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # in-process, so the deletion happens exactly between the two steps; real files throughout
    project.tasks("keep.yaml", "version: 1\ntasks:\n  keep:\n    command: echo\n")
    gone = project.tasks("gone.yaml", "version: 1\ntasks:\n  gone:\n    command: echo\n")
    real_list = spec_module.list_task_files

    def list_then_delete(root: Path) -> list[Path]:
        found = real_list(root)
        gone.unlink()
        return found

    monkeypatch.setattr(spec_module, "list_task_files", list_then_delete)
    # the command configures runner's logger; give it back as it was afterwards
    logger = logging.getLogger("runner")
    for attr in ("handlers", "propagate", "level"):
        monkeypatch.setattr(logger, attr, copy.copy(getattr(logger, attr)))
    result = CliRunner().invoke(main, ["--project", str(project.root), "validate"])
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 1 tasks in 1 files\n"


def test_ten_megabyte_task_file(project: ProjectDir, runner_cli: RunnerCli) -> None:
    count = 5000
    body = "".join(
        f"  task-{i:05d}:\n    command: echo {i}\n    description: {'x' * 2000}\n" for i in range(count)
    )
    path = project.tasks("big.yaml", "version: 1\ntasks:\n" + body)
    assert path.stat().st_size > 10_000_000

    started = time.monotonic()
    assert ok(runner_cli("validate")).stdout == f"ok: {count} tasks in 1 files\n"
    assert time.monotonic() - started < 15  # seconds, not minutes (about one on a laptop)

    result = ok(runner_cli("sync", "--json"))
    assert len(json.loads(result.stdout)["added"]) == count
    assert len(stored(project)) == count
