"""The records runner's parts hand the store, and the one rule for another attempt."""

from __future__ import annotations

import ast
import dataclasses
import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from runner.attempt import Attempt, Attempts, Ending
from runner.masking import Masker
from runner.models import RunStatus, Source, TaskSpec, TaskType
from runner.processes import this_process
from runner.records import JobArgs, QueuedRun, RunEnd, RunError, RunResult, next_attempt
from runner.revision import Revision
from runner.store._rows import end_row, end_values

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


def _attempt(parameters: dict[str, object]) -> Attempt:
    spec = TaskSpec("t", TaskType.PYTHON, Source(Path("tasks.d/t.yaml"), 3), callable="plugins.x:f")
    return Attempt(spec, "r1", 2, parameters, "cli", "p1", "inv", scheduled_for=5.0, masker=Masker(["s3cret"]))


def _every_field_set(record: object) -> None:
    """Made without its constructor (``records.filled``): every field in place, and equal to
    what the constructor makes of them."""
    assert dataclasses.is_dataclass(record) and not isinstance(record, type)
    assert set(vars(record)) == {field.name for field in dataclasses.fields(record)}
    assert type(record)(**vars(record)) == record
    assert replace(record) == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = RunStatus.FAILED  # type: ignore[attr-defined]


@pytest.mark.parametrize("parameters", [{}, {"key": "s3cret", "n": 1}])
def test_a_queued_record_made_for_every_run_is_whole(parameters: dict[str, object]) -> None:
    queued = _attempt(parameters).queued(Revision("digest", "commit"))
    _every_field_set(queued)
    assert isinstance(queued, QueuedRun)
    assert (queued.id, queued.attempt, queued.parent_id, queued.scheduled_for) == ("r1", 2, "p1", 5.0)
    assert (queued.owner, queued.revision, queued.git_commit) == (this_process(), "digest", "commit")
    assert json.loads(queued.parameters_json) == ({"key": "***", "n": 1} if parameters else {})


def test_an_end_made_for_every_run_is_whole_and_its_row_sets_what_it_holds() -> None:
    attempt = _attempt({"key": "s3cret"})
    attempt.group = (42, 9.5)
    ending = Ending(RunStatus.SUCCEEDED, result={"a": "s3cret"}, has_result=True)
    attempts = Attempts.__new__(Attempts)  # only its record-making: no store, no limits
    attempts.revision = None
    run, end = attempts._final_record(attempt, 10.0, 11.5, ending, attempt.masker)
    _every_field_set(end)
    assert (end.started_at, end.pgid, end.pgid_started, end.release) == (10.0, 42, 9.5, None)
    assert run.result == {"a": "***"} and run.duration_s == 1.5
    columns, values = end_values(end)
    assert columns == (
        "id", "status", "finished_at", "duration_s", "exit_code", "stdout", "stderr", "error", "parameters",
        "result_json", "result_pickle", "started_at", "pgid", "pgid_started",
    )
    assert values[:9] == ("r1", "succeeded", 11.5, 1.5, None, None, None, None, '{"key": "***"}')
    assert values[9:] == ('{"a": "***"}', None, 10.0, 42, 9.5)  # a result holding a secret is not pickled
    assert end_row(end) == dict(zip(columns, values, strict=True))
    # An end made elsewhere, without its start (``Recorder.finished`` adds it): only what it has.
    bare = RunEnd("r2", RunStatus.FAILED, 3.0, error=RunError("Oops", "no"))
    assert end_values(bare) == (
        ("id", "status", "finished_at", "duration_s", "exit_code", "stdout", "stderr", "error"),
        ("r2", "failed", 3.0, None, None, None, None, '{"type": "Oops", "message": "no", "traceback": null}'),
    )
    started = bare.with_start(2.0, (7, None))
    _every_field_set(started)
    assert end_row(started) == {**end_row(bare), "started_at": 2.0, "pgid": 7, "pgid_started": None}
    assert pickle.loads(pickle.dumps(started)) == started
