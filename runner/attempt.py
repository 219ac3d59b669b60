"""One attempt at running a task: what is recorded about it before it ends, how it ended, and
its final record.

``Attempts`` runs one attempt within the engine's limits (the task's own, then the global
one), decides whether it gets another (``records.next_attempt``), and records its end; what the
task itself does is the executors' (``execution.py``). An attempt is ``queued``, then
``running``, then has exactly one final status, and is reported finished only once that record
is committed.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from runner.cancels import CancelWatch, Watched
from runner.context import Upstream
from runner.errors import RecordRefused
from runner.jsonsafe import json_safe
from runner.livelog import LiveLog
from runner.masking import Masker
from runner.models import LogLine, Run, RunStatus, TaskSpec, new_run_id
from runner.processes import HOST, this_process
from runner.recorder import Recorder
from runner.records import QueuedRun, RunEnd, RunError, RunResult, filled, next_attempt
from runner.revision import Revision
from runner.scopes import checkpoint_if_cancelled
from runner.slots import Slots
from runner.store import Store

_PACKAGE_DIR = str(Path(__file__).parent)


def error_of(exc: BaseException, masker: Masker, *, with_traceback: bool = True) -> RunError:
    """The error a run records for ``exc``, masked; the traceback without runner's own frames."""
    trace = None
    if with_traceback:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            tb = tb.tb_next  # runner's own frames tell the task's author nothing
        trace = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    return RunError(type(exc).__qualname__, masker.text(str(exc)), masker.text(trace) if trace else None)


def fault(exc: BaseException, masker: Masker) -> RunError:
    """The error of a run that runner itself could not prepare, start or record; plain when
    even masking it fails (then its message is not shown: it could hold a secret)."""
    try:
        return error_of(exc, masker)
    except Exception as masking_failed:
        message = f"(not shown: masking it failed with {type(masking_failed).__qualname__})"
        return RunError(type(exc).__qualname__, message)


def masking(masker: Masker, secrets: list[str]) -> Masker:
    """``masker``, or one that masks ``secrets`` too when it does not already (usually it does:
    a task's own secrets are the project's)."""
    if not secrets or masker.covers(secrets):
        return masker
    return Masker([*masker.secrets, *secrets])


@dataclass(frozen=True, slots=True)
class Ending:
    """How one attempt ended, before it is recorded (``Attempts.finish``)."""

    status: RunStatus
    error: RunError | None = None
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    result: Any = None
    has_result: bool = False  # a python run that returned (``result`` may be None)
    logs: tuple[LogLine, ...] = ()


def cancelled(started: float | None) -> Ending:
    """The end of a run stopped on request (a signal, a shutdown, a cancel)."""
    message = "stopped on request" if started is not None else "stopped on request before it started"
    return Ending(RunStatus.CANCELLED, RunError("Cancelled", message))


@dataclass(slots=True)
class Attempt:
    """One run of a task: what is recorded about it before it finishes."""

    spec: TaskSpec
    run_id: str
    number: int
    parameters: dict[str, Any]
    trigger: str
    parent_id: str | None
    invocation: str
    scheduled_for: float | None = None
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    # Its shell's process group (pgid, the start time of the group's first process), once
    # spawned: its end carries it (``records.RunEnd``).
    group: tuple[int, float | None] | None = None
    final: Run | None = None  # set once the final record is on its way
    value: Any = None  # what a python task returned, for the tasks that need it
    # Masks the task's secrets from the first record on: parameters are written when queued.
    masker: Masker = field(default_factory=Masker)
    live: LiveLog | None = None  # its output and log lines on their way to the store
    next: Attempt | None = None  # the retry this run's end queues
    queue: str | None = None  # the workers' queue it came by, for a worker's runs
    # A worker's run that others of its workflow wait for: their invocation, decided on when
    # its final end is written (``records.RunEnd.release``).
    releases: str | None = None
    # The parameters made JSON-safe, and masked as JSON text, each made once for the queued
    # row, RUNNER_PARAMS and the final record (a retry shares them).
    _safe: _SafeParameters | None = field(default=None, repr=False, compare=False)

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def safe_parameters(self) -> _SafeParameters:
        safe = self._safe
        if safe is None:
            # No parameters, what most tasks have: nothing to make safe (~3 k instructions).
            safe = self._safe = _SafeParameters(json_safe(self.parameters) if self.parameters else {})
        return safe

    def queued(self, revision: Revision | None) -> QueuedRun:
        return filled(QueuedRun, {
            "id": self.run_id,
            "task": self.spec.name,
            "type": self.spec.type,
            "attempt": self.number,
            "trigger": self.trigger,
            "parent_id": self.parent_id,
            "invocation": self.invocation,
            "parameters_json": self.safe_parameters().masked_text(self.masker),
            "queued_at": self.queued_at,
            "scheduled_for": self.scheduled_for,
            "owner": this_process(),
            "queue": self.queue,
            "revision": revision.digest if revision else None,
            "git_commit": revision.commit if revision else None,
        })

    def retry(self, number: int) -> Attempt:
        return Attempt(
            self.spec, new_run_id(), number, self.parameters, "retry", self.run_id,
            self.invocation, masker=self.masker, queue=self.queue, releases=self.releases, _safe=self._safe,
        )


class _SafeParameters:
    """An attempt's parameters made JSON-safe, as JSON text, and masked (the last masker's)."""

    __slots__ = ("_masked", "_text", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._text: str | None = None
        self._masked: tuple[Masker, Any, str | None] | None = None

    @property
    def text(self) -> str:
        """As JSON, unmasked: what a shell task finds in ``RUNNER_PARAMS``."""
        if self._text is None:
            # No parameters, what most tasks have: json.dumps of {} costs ~2.5 us.
            self._text = json.dumps(self.value) if self.value != {} else "{}"
        return self._text

    def masked(self, masker: Masker) -> Any:
        if not masker:
            return self.value
        masked = self._masked
        if masked is None or masked[0] is not masker:
            masked = self._masked = (masker, masker.data(self.value), None)
        return masked[1]

    def masked_text(self, masker: Masker) -> str:
        if not masker:
            return self.text
        value = self.masked(masker)
        assert self._masked is not None
        text = self._masked[2]
        if text is None:
            text = json.dumps(value)
            self._masked = (masker, value, text)
        return text


Execute = Callable[[Attempt, Upstream | None], Awaitable[Ending]]
"""Run the task of an attempt once and say how it ended (``execution.Execution``); the results of
its needs, None for a task without needs."""


class Attempts:
    """Runs and records the attempts of one engine: ``queued`` makes an attempt's first record,
    ``run`` runs it within the limits, ``finish`` records its end."""

    def __init__(
        self,
        store: Store,
        recorder: Recorder,
        limiter: Slots,
        execute: Execute,
        *,
        revision: Revision | None,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.limiter = limiter
        self.execute = execute
        self.revision = revision  # of the files the runs are queued or run with, recorded on each
        self.cancels = CancelWatch(store)  # the engine runs its loop
        self._task_limiters: dict[str, Slots] = {}

    def queued(self, attempt: Attempt) -> QueuedRun:
        return attempt.queued(self.revision)

    def watch(self, run: Watched) -> AbstractContextManager[anyio.CancelScope]:
        return self.cancels.watching(run)

    async def run(self, attempt: Attempt, upstream: Upstream | None) -> Run:
        """Run ``attempt`` once and record how it ended; its retry (``attempt.next``), if it
        gets one, is queued with that record."""
        try:
            # A free slot is taken without a turn of the loop (Slots), so a run stopped before
            # its turn is refused here, before it starts.
            await checkpoint_if_cancelled()
            task_limiter = self._task_limiter(attempt.spec)
            if task_limiter is None:
                async with self.limiter:
                    ending = await self._execute(attempt, upstream)
            else:
                # The task's own limit first, so a run waiting for it holds no global slot.
                async with task_limiter, self.limiter:
                    ending = await self._execute(attempt, upstream)
            started = attempt.started_at
            number = next_attempt(ending.status, attempt.number, attempt.spec.retries.count)
            if number is not None:
                # Queued with this run's end, before the pause: whoever sees this run final
                # sees its retry, and a stop during the pause records the retry cancelled.
                attempt.next = attempt.retry(number)
            # The slot is free again while the record is committed with other runs' records.
            return await self.finish(attempt, started, ending)
        except anyio.get_cancelled_exc_class():
            if attempt.final is None:
                with anyio.CancelScope(shield=True):
                    await self.finish(attempt, attempt.started_at, cancelled(attempt.started_at))
            raise

    async def _execute(self, attempt: Attempt, upstream: Upstream | None) -> Ending:
        """Start the run (within its slot) and say how it ended."""
        attempt.started_at = time.time()
        self.recorder.started(attempt.run_id, attempt.started_at)
        try:
            return await self.execute(attempt, upstream)
        except Exception as exc:  # preparing or starting it failed: this run fails, nothing else
            return Ending(RunStatus.FAILED, fault(exc, attempt.masker))

    def _task_limiter(self, spec: TaskSpec) -> Slots | None:
        if spec.concurrency is None:
            return None
        limiter = self._task_limiters.get(spec.name)
        if limiter is None:
            limiter = self._task_limiters[spec.name] = Slots(spec.concurrency)
        elif limiter.total != spec.concurrency:
            limiter.total = spec.concurrency  # changed by a sync since
        return limiter

    async def finish(self, attempt: Attempt, started: float | None, ending: Ending) -> Run:
        """Record the run's final status (committed before this returns) and return the run.

        What the run's output and log lines had not streamed yet is written in the same
        transaction, so whoever sees the run final sees all of its rows. A record that cannot be
        made (masking or serialising it failed) or that the store refuses (a value it cannot
        hold, while it takes the other runs' records) is replaced by the run ``failed`` with
        why, and no retry: the retry would meet the same.
        """
        masker = attempt.masker  # with the secrets its run resolved, once it got that far
        finished = time.time()
        try:
            run, end = self._final_record(attempt, started, finished, ending, masker)
            unstreamed = attempt.live.close() if attempt.live is not None else []
        except Exception as exc:
            if attempt.live is not None:
                with contextlib.suppress(Exception):  # what it still had is dropped with it
                    attempt.live.close()
            run, end = self._failed_record(attempt, started, finished, fault(exc, masker))
            unstreamed, attempt.next = [], None
        attempt.final = run  # from here on the record is on its way, whatever happens
        retry = self.queued(attempt.next) if attempt.next is not None else None
        try:
            written = await self.recorder.finished(_releasing(attempt, end), unstreamed, retry)
        except RecordRefused as exc:
            run, end = self._failed_record(attempt, started, finished, fault(exc, masker))
            attempt.final, attempt.next = run, None
            await self.recorder.finished(_releasing(attempt, end), [], None)
            return run
        if not written:
            # Marked interrupted meanwhile (this worker was taken for dead) and retried
            # elsewhere: the retry queued here was not written, and must not run.
            attempt.next = None
        return run

    def _final_record(
        self, attempt: Attempt, started: float | None, finished: float, ending: Ending, masker: Masker
    ) -> tuple[Run, RunEnd]:
        """The run as it ended, and its end to write."""
        duration = round(finished - started, 6) if started is not None else None
        safe = attempt.safe_parameters()
        parameters = safe.masked(masker)
        result = None
        if ending.has_result:
            if ending.result is None:  # what most tasks return: nothing to make safe, mask or pickle
                result = _NO_RESULT
            else:
                result = RunResult.of(masker.data(json_safe(ending.result)), _pickled(ending.result, masker))
        end = filled(RunEnd, {
            "run_id": attempt.run_id,
            "status": ending.status,
            "finished_at": finished,
            "duration_s": duration,
            "exit_code": ending.exit_code,
            "stdout": masker.text(ending.stdout) if ending.stdout is not None else None,
            "stderr": masker.text(ending.stderr) if ending.stderr is not None else None,
            "error": ending.error,
            "parameters_json": safe.masked_text(masker) if masker else None,
            "result": result,
            "release": None,  # set by _releasing, for the few ends that release others
            "started_at": started,
            "pgid": attempt.group[0] if attempt.group is not None else None,
            "pgid_started": attempt.group[1] if attempt.group is not None else None,
        })
        return self._run(attempt, started, end, parameters, ending.logs), end

    def _failed_record(
        self, attempt: Attempt, started: float | None, finished: float, error: RunError
    ) -> tuple[Run, RunEnd]:
        """The run ``failed`` with ``error`` and nothing else: what is written when its own
        record could not be; the parameters stay as they were queued."""
        duration = round(finished - started, 6) if started is not None else None
        try:
            parameters = attempt.safe_parameters().masked(attempt.masker)
        except Exception:
            parameters = {}  # not shown rather than shown unmasked
        pgid, pgid_started = attempt.group if attempt.group is not None else (None, None)
        end = RunEnd(
            attempt.run_id, RunStatus.FAILED, finished, duration, error=error, started_at=started, pgid=pgid,
            pgid_started=pgid_started,
        )
        return self._run(attempt, started, end, parameters), end

    def _run(
        self,
        attempt: Attempt,
        started: float | None,
        end: RunEnd,
        parameters: Mapping[str, Any],
        logs: tuple[LogLine, ...] = (),
    ) -> Run:
        return filled(Run, {
            "id": attempt.run_id,
            "task": attempt.spec.name,
            "type": attempt.spec.type,
            "status": end.status,
            "attempt": attempt.number,
            "parameters": parameters,
            "trigger": attempt.trigger,
            "parent_id": attempt.parent_id,
            "invocation": attempt.invocation,
            "scheduled_for": attempt.scheduled_for,
            "queued_at": attempt.queued_at,
            "started_at": started,
            "finished_at": end.finished_at,
            "duration_s": end.duration_s,
            "exit_code": end.exit_code,
            "stdout": end.stdout,
            "stderr": end.stderr,
            "result": end.result.value if end.result is not None else None,
            "error": end.error.to_json() if end.error is not None else None,
            "logs": logs,
            "host": HOST,
            "revision": self.revision.digest if self.revision else None,
            "git_commit": self.revision.commit if self.revision else None,
            "queue": None,
        })


_NO_RESULT = RunResult(None, "null", pickle.dumps(None))


def _releasing(attempt: Attempt, end: RunEnd) -> RunEnd:
    """``end``; for a worker's run that others wait for, ending for good, with their invocation,
    decided on in the transaction that writes it (``records.RunEnd.release``)."""
    if attempt.releases is None or attempt.next is not None:
        return end
    return replace(end, release=attempt.releases)


def _pickled(value: Any, masker: Masker) -> bytes | None:
    """The original result, pickled; None when it cannot be, or when it holds a secret."""
    try:
        blob = pickle.dumps(value)
    except Exception:
        return None
    return None if masker and masker.contains_secret(blob) else blob
