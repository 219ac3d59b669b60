"""The records runner's parts hand the store, and the one rule for another attempt."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import pytest

from runner.models import RunStatus
from runner.records import JobArgs, RunError, RunResult, next_attempt

pytestmark = pytest.mark.timeout(5)

STORE = Path(__file__).parents[2] / "runner" / "store"


@pytest.mark.parametrize(
    ("status", "attempt", "retries", "expected"),
    [
        (RunStatus.FAILED, 1, 2, 2),
        (RunStatus.TIMED_OUT, 2, 2, 3),
        (RunStatus.INTERRUPTED, 1, 1, 2),
        (RunStatus.FAILED, 3, 2, None),  # the last allowed attempt
        (RunStatus.FAILED, 1, 0, None),  # no retries declared
        (RunStatus.INTERRUPTED, 1, None, None),  # the task is gone
        (RunStatus.SUCCEEDED, 1, 5, None),
        (RunStatus.CANCELLED, 1, 5, None),
        (RunStatus.SKIPPED, 1, 5, None),
    ],
)
def test_a_run_gets_another_attempt_only_after_a_failure_while_retries_last(
    status: RunStatus, attempt: int, retries: int | None, expected: int | None
) -> None:
    assert next_attempt(status, attempt, retries) == expected


def test_a_run_error_has_the_json_form_runs_have_always_shown() -> None:
    assert RunError("Skipped", "a need did not succeed").to_json() == {
        "type": "Skipped", "message": "a need did not succeed", "traceback": None,
    }
    assert RunError.of(LookupError("no task 'x'")).to_json() == {
        "type": "LookupError", "message": "no task 'x'", "traceback": None,
    }


def test_job_arguments_survive_the_queue_and_an_old_job_takes_its_queue() -> None:
    args = JobArgs(
        task="b", parameters={"n": 1}, with_needs=True, trigger="cli", parent_id=None, attempt=1,
        scheduled_for=None, invocation="inv", runs={"a": "r1", "b": "r2"}, revision="abc", queue="gpu",
    )
    assert JobArgs.from_json(json.loads(json.dumps(args.to_json()))) == args
    assert args.target_run_id == "r2"
    old = {k: v for k, v in args.to_json().items() if k not in ("queue", "revision", "needs", "upstream")}
    assert JobArgs.from_json(old, queue="default").queue == "default"
    assert JobArgs.from_json(old).revision is None
    # A job of one run of a spread workflow: what it waits for, then whose results it reads.
    node = replace(args, runs={"b": "r2"}, with_needs=False, needs=("a",), awaited=True)
    assert JobArgs.from_json(json.loads(json.dumps(node.to_json()))) == node
    released = replace(node, needs=(), upstream={"a": "r1"})
    assert JobArgs.from_json(json.loads(json.dumps(released.to_json()))) == released
    assert (JobArgs.from_json(old).needs, JobArgs.from_json(old).upstream, JobArgs.from_json(old).awaited) == ((), {}, False)


def test_a_result_json_cannot_write_fails_where_the_result_is_made() -> None:
    with pytest.raises(ValueError, match="integer string conversion"):
        RunResult.of(10**5000, None)


def test_the_store_kills_nothing_and_no_module_of_it_is_over_500_lines() -> None:
    """``Store`` says which process groups runs of dead processes left, its callers kill them;
    only ``open_store`` (store.py) does, for the process opening the store."""
    for path in sorted(STORE.glob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 500, path.name
        names = {
            alias.name
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        if path.name != "store.py":
            assert not names & {"kill_orphaned_group", "kill_orphaned_groups"}, path.name
        assert "os.kill" not in source, path.name
