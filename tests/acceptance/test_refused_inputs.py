"""Input that could not reach a task is refused where it enters, as a user meets it: `-p` on the
command line (exit 2, nothing recorded), a NUL in a task file (validate exit 2 at its place; a
running daemon keeps its last good tasks), and HTTP trigger bodies (422, nothing recorded, the
daemon up). `-p` values are read as a task file reads parameters (a date stays text)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Cli, ProjectDir, json_lines, ok

from tests.acceptance.test_daemon import Daemon
from tests.acceptance.test_http import Api

pytestmark = pytest.mark.timeout(60)

TASKS = """
    version: 1
    tasks:
      show:
        command: 'printf "%s|%s" "$PARAM_DAY" "$RUNNER_PARAMS"'
        parameters: {day: today}
      report:
        type: python
        callable: plugins.reports:daily
        parameters: {day: "2026-01-01"}
"""

REPORTS = """
    def daily(day: str) -> str:
        return f"report for {day}"
"""


@pytest.fixture
def tasks(project: ProjectDir) -> ProjectDir:
    project.tasks("a.yaml", TASKS)
    project.plugin("reports", REPORTS)
    return project


def refused(result: Any, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


P_REFUSED = [
    ("show", "a b=1", "'a b' is not a valid parameter name: use letters, digits and '_', not starting with a digit"),
    ("report", "=1", "'=1' is not KEY=VALUE"),
    ("show", 'day="x\\0y"', "day: contains a NUL byte (at character 2)"),
    ("report", 'day=["ok", {k: "\\0"}]', "day.1.k: contains a NUL byte"),
    ("show", "day=.nan", "day: nan is not a finite number"),
    ("report", "day=!thing x", "day: unsupported YAML tag !thing"),
]


def test_p_values_that_cannot_reach_a_task_exit_2_and_record_nothing(tasks: ProjectDir, cli: Cli) -> None:
    for i, (task, value, message) in enumerate(P_REFUSED):
        refused(cli("run" if i % 2 else "trigger", task, "-p", value), message)
    assert cli.runs() == []


def test_p_value_with_bytes_that_are_not_utf8_is_refused(tasks: ProjectDir, cli: Cli) -> None:
    process = cli.start("run", "show", "-p", b"day=\xff".decode("utf-8", "surrogateescape"))
    refused(cli.finish(process), "day: the value contains a lone surrogate (\\udcff at character 1), which is not valid UTF-8 text")
    assert cli.runs() == []


def test_a_date_given_with_p_stays_the_text_written(tasks: ProjectDir, cli: Cli) -> None:
    shown = ok(cli("run", "show", "-p", "day=2026-11-28", "--json"))
    run = json_lines(shown.stdout)[-1]
    assert run["parameters"] == {"day": "2026-11-28"}
    assert run["stdout"] == '2026-11-28|{"day": "2026-11-28"}'
    report = json_lines(ok(cli("run", "report", "-p", "day=2026-11-28", "--json")).stdout)[-1]
    assert report["result"] == "report for 2026-11-28"
    numbers = json_lines(ok(cli("run", "show", "-p", "day=0123", "--json")).stdout)[-1]
    assert numbers["parameters"] == {"day": 123}  # YAML 1.2: not octal 83


def test_trigger_with_a_date_runs_in_the_daemon(tasks: ProjectDir, cli: Cli) -> None:
    daemon = Daemon(cli).started()
    waited = ok(cli("trigger", "report", "-p", "day=2026-11-28", "--wait", "--json"))
    assert json.loads(waited.stdout.splitlines()[-1])["result"] == "report for 2026-11-28"  # after the run id
    assert daemon.stop() == 0


def test_a_plain_no_for_a_str_parameter_is_refused_with_a_hint(tasks: ProjectDir, cli: Cli) -> None:
    refused(cli("run", "report", "-p", "day=no"), "parameter 'day': expected str, got bool False (YAML 1.1 reads plain")
    assert cli.runs() == []
    assert json_lines(ok(cli("run", "report", "-p", 'day="no"', "--json")).stdout)[-1]["result"] == "report for no"


# -- a NUL in a task file ---------------------------------------------------------------------------

NUL_EDIT = """
    version: 1
    tasks:
      show:
        command: 'printf "%s|%s" "$PARAM_DAY" "$RUNNER_PARAMS"'
        parameters: {day: "x\\0y"}
"""


def test_a_nul_in_a_task_file_fails_validate_at_its_place(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", NUL_EDIT)
    result = cli("validate")
    refused(
        result,
        "tasks.d/a.yaml:5:23: task 'show': parameters.day: contains a NUL byte (at character 2), "
        "which no environment variable, argument or path can hold",
    )
    refused(cli("run", "show"), "tasks.d/a.yaml:5:23:")
    assert cli.runs() == []


def test_sync_and_the_daemon_refuse_a_nul_edit_and_keep_the_last_good_tasks(tasks: ProjectDir, cli: Cli) -> None:
    daemon = Daemon(cli).started()
    ok(cli("trigger", "show", "--wait"))  # the daemon is up, its watcher too
    tasks.tasks("a.yaml", NUL_EDIT)
    refused(cli("sync"), "tasks.d/a.yaml:5:23: task 'show': parameters.day: contains a NUL byte")
    (failed,) = daemon.wait_for("invalid_task_file")
    assert (failed["path"], failed["line"], failed["col"]) == ("tasks.d/a.yaml", 5, 23)
    listed = {t["name"]: t for t in json.loads(ok(cli("list", "--json")).stdout)}
    assert listed["show"]["parameters"] == {"day": "today"} and "report" in listed
    waited = ok(cli("trigger", "show", "--wait", "--json"))
    assert json.loads(waited.stdout.splitlines()[-1])["stdout"] == 'today|{"day": "today"}'
    assert daemon.stop() == 0


# -- HTTP trigger bodies ----------------------------------------------------------------------------


@pytest.fixture
def api(tasks: ProjectDir, cli: Cli) -> Iterator[Api]:
    served = Api(cli, "--http-allow-trigger", "--no-watch")
    yield served
    served.close()


REFUSED_BODIES = [
    ('{"parameters": {"a b": 1}}', "'a b' is not a valid parameter name"),
    ('{"parameters": {"a=b": "x"}}', "'a=b' is not a valid parameter name"),
    ('{"parameters": {"a\\u0000b": "x"}}', "'a\\x00b' is not a valid parameter name"),
    ('{"parameters": {"": "x"}}', "'' is not a valid parameter name"),
    ('{"parameters": {"day": "\\ud800"}}', "parameter 'day': contains a lone surrogate (\\ud800 at character 1)"),
    ('{"parameters": {"day": "x\\u0000"}}', "parameter 'day': contains a NUL byte (at character 2)"),
    # (for the shell task, whose declared `day` is text, a mapping is refused as the wrong type first)
    ('{"parameters": {"day": {"k": ["\\u0000"]}}}', "parameter 'day' at ['k'][0]: contains a NUL byte", ("report",)),
    ('{"parameters": {"day": 1e999}}', "parameter 'day': inf is not a finite number"),
]


def test_a_trigger_body_that_cannot_reach_a_task_is_422_and_nothing_is_recorded(api: Api) -> None:
    for raw, message, *only in REFUSED_BODIES:
        for task in only[0] if only else ("show", "report"):
            response = api.post(
                f"/api/v1/tasks/{task}/runs",
                content=raw.encode(),
                headers={**api.auth, "Content-Type": "application/json"},
            )
            assert response.status_code == 422, response.text
            body = response.json()
            # detail says every misfit (a bad name is also one the task does not take); errors lists each
            assert message in body["errors"][0] and body["detail"] == "; ".join(body["errors"]), raw
    unknown = api.post("/api/v1/tasks/nosuch/runs", json={"parameters": {"a b": 1}}, headers=api.auth)
    assert unknown.status_code == 404  # the task is looked up first
    assert api.get("/api/v1/runs").json()["runs"] == []
    assert api.get("/health").json()["status"] == "ok"


def test_a_date_in_a_trigger_body_stays_a_string(api: Api) -> None:
    response = api.trigger("report", parameters={"day": "2026-11-28"})
    assert response.status_code == 202, response.text
    run = api.wait_run(response.json()["id"])
    assert run["status"] == "succeeded" and run["result"] == "report for 2026-11-28"


def test_a_secret_file_no_environment_can_hold_fails_its_run_before_the_command(project: ProjectDir, cli: Cli) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          nul:
            command: 'echo started'
            env: {TOKEN: {from_file: nul.txt}}
          latin:
            command: 'echo started'
            env: {TOKEN: {from_file: latin.txt}}
        """,
    )
    (project.root / "nul.txt").write_bytes(b"se\x00cret\n")
    (project.root / "latin.txt").write_bytes(b"caf\xe9\n")
    for task, message in (("nul", "nul.txt contains a NUL byte (at character 3)"), ("latin", "latin.txt is not UTF-8 text")):
        result = cli("run", task, "--json")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        run = json_lines(result.stdout)[-1]
        assert run["status"] == "failed" and run["stdout"] is None  # the command never ran
        assert message in run["error"]["message"]
