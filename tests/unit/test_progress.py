"""``runner run``'s lines per finished run: the runs that finish in one turn of the loop are
written together, in the order they finished, and none is left unwritten."""

from __future__ import annotations

import io
import json

import anyio
import anyio.lowlevel
import pytest

from runner.models import Run, RunStatus, TaskType
from runner.progress import Reporter


class Counted(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def finished(task: str) -> Run:
    return Run(
        id=f"run-{task}", task=task, type=TaskType.PYTHON, status=RunStatus.SUCCEEDED, attempt=1, parameters={},
        trigger="cli", parent_id=None, invocation="inv", scheduled_for=None, queued_at=1.0, started_at=1.0,
        finished_at=1.5, duration_s=0.5, exit_code=None, stdout=None, stderr=None, result=None, error=None,
    )


def test_the_runs_finished_in_one_turn_are_written_at_once_in_order() -> None:
    stream = Counted()
    reporter = Reporter(as_json=False, stream=stream)

    async def main() -> None:
        for task in ("a", "b", "c"):
            reporter.run_finished(finished(task))
        assert stream.writes == 0  # not before the turn ends
        await anyio.lowlevel.checkpoint()
        reporter.run_finished(finished("d"))
        await anyio.lowlevel.checkpoint()

    anyio.run(main)
    assert stream.writes == 2
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["a", "b", "c", "d"]
    assert stream.getvalue().splitlines()[0] == "runner: a succeeded in 0.500s (run run-a)"


def test_what_is_left_is_written_when_the_watch_ends() -> None:
    stream = Counted()
    reporter = Reporter(as_json=False, stream=stream)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(reporter.watch, None)  # not a terminal: it only waits
            await anyio.lowlevel.checkpoint()
            reporter.run_finished(finished("last"))
            group.cancel_scope.cancel()  # as run_once ends, in the same turn
        assert "runner: last succeeded" in stream.getvalue()

    anyio.run(main)


def test_without_a_loop_a_line_is_written_at_once() -> None:
    stream = Counted()
    Reporter(as_json=False, stream=stream).run_finished(finished("alone"))
    assert stream.getvalue().startswith("runner: alone succeeded")


def test_json_lines_go_to_stdout_one_per_run(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = Reporter(as_json=True)

    async def main() -> None:
        reporter.run_finished(finished("a"))
        reporter.run_finished(finished("b"))
        await anyio.lowlevel.checkpoint()

    anyio.run(main)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["task"] for line in lines] == ["a", "b"]


class Closed(Counted):
    """A pipe whose reader has gone."""

    def write(self, text: str) -> int:
        super().write(text)
        raise BrokenPipeError(32, "Broken pipe")


def test_once_the_reader_is_gone_no_more_lines_are_written_and_nothing_fails() -> None:
    stream = Closed()
    reporter = Reporter(as_json=False, stream=stream)

    async def main() -> None:
        reporter.run_finished(finished("a"))
        await anyio.lowlevel.checkpoint()  # the write fails here, in the loop's callback
        reporter.run_finished(finished("b"))
        await anyio.lowlevel.checkpoint()
        reporter.flush()

    anyio.run(main)
    assert stream.writes == 1
