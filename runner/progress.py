"""What ``runner run`` shows while a workflow runs: a line per finished run, and on a terminal a
live status line (what runs, what is done, failed or skipped, elapsed time)."""

from __future__ import annotations

import json
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

    def run_finished(self, run: Run) -> None:
        if self.as_json:
            print(json.dumps(run.to_json()), flush=True)
            return
        self.stream.write(f"{_CLEAR if self.live else ''}{status_line(run)}\n{self._status}")
        self.stream.flush()

    async def watch(self, workflow: Workflow) -> None:
        """Redraw the status line until cancelled (on a terminal only)."""
        if not self.live:
            return
        try:
            while True:
                self._status = self._summary(workflow)
                self.stream.write(_CLEAR + self._status)
                self.stream.flush()
                await anyio.sleep(0.1)
        finally:
            self._status = ""
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
