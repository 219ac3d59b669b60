"""What ``runner run`` shows while a workflow runs: a line per finished run, and on a terminal a
live status line (what runs, what is done, failed or skipped, elapsed time).

The lines of the runs that finish in one turn of the event loop are written together, at the
end of that turn: a fan of 2,000 no-op runs finishes hundreds in a turn, and a write (a system
call, and a wake-up of whatever reads the pipe) for each was 2,000 of them.

When whatever reads the lines goes away (``runner run --json | head -1``), the runs go on and
are recorded as ever; the lines are no longer written, and a line on stderr says so once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import TextIO

import anyio

from runner.models import Run, RunStatus
from runner.workflow import Workflow

_CLEAR = "\r\x1b[K"


def status_line(run: Run) -> str:
    took = f" in {run.duration_s:.3f}s" if run.duration_s is not None else ""
    extra = f", exit code {run.exit_code}" if run.exit_code not in (None, 0) else ""
    why = f": {run.error['message']}" if run.status is RunStatus.SKIPPED and run.error else ""
    return f"runner: {run.task} {run.status.value}{took}{extra}{why} (run {run.id})"


class Reporter:
    """Prints each run as it finishes: a JSON line on stdout, or a status line on stderr."""

    def __init__(self, *, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stderr
        self.live = not as_json and self.stream.isatty()
        self.started = time.monotonic()
        self._status = ""
        self._lines: list[str] = []  # of the runs finished in this turn of the loop
        self._reader_gone = False

    def run_finished(self, run: Run) -> None:
        if self._reader_gone:
            return
        self._lines.append(self._line(run))
        if len(self._lines) == 1:  # the first of this turn: written at its end
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running: written now
                self.flush()

    def _line(self, run: Run) -> str:
        return json.dumps(run.to_json()) if self.as_json else status_line(run)

    def flush(self) -> None:
        """Write the lines of the runs finished since the last flush."""
        if not self._lines:
            return
        text, self._lines = "\n".join(self._lines) + "\n", []
        stream = sys.stdout if self.as_json else self.stream
        try:
            stream.write(f"{_CLEAR}{text}{self._status}" if self.live else text)
            stream.flush()
        except BrokenPipeError:
            self._lost_reader(stream)

    def _lost_reader(self, stream: TextIO) -> None:
        self._reader_gone = True
        self.live = False  # no status line to redraw either
        # /dev/null in its place, so that the interpreter's own flush at exit does not fail on it
        # again (not for a stream without a file: a test's capture).
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        if stream is sys.stdout:
            with contextlib.suppress(OSError):  # stderr gone too (`2>&1 | head -1`)
                print("runner: stdout was closed; the runs go on and are recorded (`runner runs` shows them)", file=sys.stderr)

    async def watch(self, workflow: Workflow) -> None:
        """Redraw the status line until cancelled (on a terminal only); write what is left."""
        try:
            while self.live:
                self._status = self._summary(workflow)
                self.stream.write(_CLEAR + self._status)
                self.stream.flush()
                await anyio.sleep(0.1)
            await anyio.sleep_forever()
        finally:
            self._status = ""
            self.flush()
            if self.live:
                self.stream.write(_CLEAR)
                self.stream.flush()

    def _summary(self, workflow: Workflow) -> str:
        # Tasks, not runs: a task that is retried counts once, when its last attempt ends.
        finished = workflow.finished()
        counts: dict[str, int] = {}
        for run in finished:
            counts[run.status.value] = counts.get(run.status.value, 0) + 1
        done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        elapsed = time.monotonic() - self.started
        line = f"[{elapsed:6.1f}s] {len(finished)}/{len(workflow.nodes)} finished"
        if done:
            line += f" ({done})"
        for what, names in (("running", workflow.running()), ("retrying", workflow.retrying())):
            if names:
                line += f" | {what}: " + ", ".join(names[:5])
                line += f" +{len(names) - 5}" if len(names) > 5 else ""
        return line
