"""The executors' glue: what one attempt's shell command or python callable gets (environment,
parameters, its needs' results, injection), run through ``executors/``, and how it ended.

A shell task gets its parameters as ``PARAM_<NAME>`` and ``RUNNER_PARAMS``, its needs' runs in
the file ``RUNNER_UPSTREAM_FILE``, and none of the variables the project's secret references
read from unless it declares them. A python task gets its parameters checked against its
callable's hints, what it asks for by type injected, and what it prints and logs recorded with
its run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
import traceback
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import anyio

from runner import registry
from runner.attempt import Attempt, Ending, error_of, masking
from runner.capture import RunOutput, captured
from runner.context import RunContext, Upstream, current_run
from runner.errors import RunnerError, SecretUnavailable, ShellStartError
from runner.executors.python import PythonOutcome, call_python
from runner.executors.shell import (
    DEFAULT_KILL_GRACE,
    DEFAULT_OUTPUT_CAP,
    run_shell,
)
from runner.jsonsafe import json_safe
from runner.livelog import LiveLog
from runner.masking import Masker, resolve_env
from runner.models import LogLine, RunStatus, TaskType
from runner.project import signature_of
from runner.recorder import Recorder
from runner.records import filled
from runner.runnable import checked_parameters

Scope = Callable[[RunContext, Upstream], object]
"""What injection providers draw on for one run (the engine's ``InjectionScope``)."""


class _RunLog(logging.Handler):
    """Collects the lines a task writes to ``ctx.logger`` for its final run, and streams each
    to the store as it is written (``live``)."""

    def __init__(self, live: LiveLog | None, name: str) -> None:
        # Not Handler.__init__: it registers every handler in logging's global list, under
        # logging's lock, for logging.shutdown to flush (nothing to flush here), and makes a
        # lock (emit appends to a list and hands the line to ``live``, which locks for itself):
        # ~4 us of every python run.
        logging.Filterer.__init__(self)
        self._name = None
        self.level = logging.DEBUG
        self.formatter = None
        self._closed = False
        self.lock = None
        self.lines: list[tuple[float, str, str]] = []
        self.live = live
        # Of ``ctx.logger``; lines of other loggers (stdlib logging) say whose. Not ``name``:
        # setting a handler's name registers it in logging's registry, under logging's lock.
        self.logger_name = name

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
        except Exception as exc:  # a bad format string must not fail the task
            message = f"{record.msg!r} (log formatting failed: {exc})"
        if record.name != self.logger_name and record.name != "root":
            message = f"{record.name}: {message}"
        line = (record.created, record.levelname.lower(), message)
        self.lines.append(line)
        if self.live is not None:
            self.live.log(*line)


class Execution:
    """Runs the task of one attempt in ``project``: ``await execution(attempt, upstream)``."""

    def __init__(
        self,
        project: Path,
        recorder: Recorder,
        scope: Scope,
        *,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        kill_grace: float = DEFAULT_KILL_GRACE,
    ) -> None:
        self.project = project
        self.recorder = recorder
        self.scope = scope
        self.output_cap = output_cap
        self.kill_grace = kill_grace
        # Copied once: reading os.environ decodes every variable, on every access.
        self.environ = dict(os.environ)
        # And encoded once: ``subprocess`` encodes every str variable of a child's environment
        # (~44 here, the largest single part of a shell run's CPU in the engine), and passes
        # bytes on as they are.
        self._environb = {os.fsencode(key): os.fsencode(value) for key, value in self.environ.items()}
        self._child_environ = self._environb

    def hide(self, names: Collection[str]) -> None:
        """Leave the variables ``names`` out of every child's environment (the sources of the
        project's secrets: the engine's reload)."""
        hidden = {os.fsencode(name) for name in names}
        self._child_environ = {key: value for key, value in self._environb.items() if key not in hidden}

    async def __call__(self, attempt: Attempt, upstream: Upstream | None) -> Ending:
        """Run the task once; return how it ended (``upstream``: None for a task without needs)."""
        env: dict[str, str] = {}
        masker = attempt.masker
        if attempt.spec.env:
            try:
                env, secrets = resolve_env(attempt.spec.env, self.project)
            except SecretUnavailable as exc:
                return Ending(RunStatus.FAILED, error_of(exc, masker, with_traceback=False))
            # The project's secrets and those known when it was queued, as in the final record;
            # kept on the attempt, for an error that escapes from here on.
            masker = attempt.masker = masking(masker, secrets)
        if attempt.spec.type is TaskType.SHELL:
            return await self._shell(attempt, env, masker, upstream)
        attempt.live = self.recorder.live(attempt.run_id, masker, output_cap=self.output_cap)
        return await self._python(attempt, env, masker, upstream)

    async def _shell(
        self, attempt: Attempt, env: dict[str, str], masker: Masker, upstream: Upstream | None
    ) -> Ending:
        if upstream is None:
            return await self._run_command(attempt, env, None, masker)
        # Even when no need has a run to show (--no-deps). File work goes to a thread: on a
        # busy disk creating and removing files can stall the event loop for milliseconds.
        path = await anyio.to_thread.run_sync(_write_upstream_file, _upstream_json(upstream))
        try:
            return await self._run_command(attempt, env, path, masker)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, path)

    def _child_env(self, attempt: Attempt, env: dict[str, str], upstream_file: str | None) -> dict[bytes, bytes]:
        """The child's environment, as bytes: this process's (less the secrets' sources), the
        task's ``env``, its parameters and its run."""
        child_env = self._child_environ.copy()
        fsencode = os.fsencode
        try:
            for key, value in env.items():
                child_env[fsencode(key)] = fsencode(value)
            if upstream_file is not None:
                child_env[b"RUNNER_UPSTREAM_FILE"] = fsencode(upstream_file)
            elif "RUNNER_UPSTREAM_FILE" not in env:
                # Inherited when a task started this runner: that file is not this task's.
                child_env.pop(b"RUNNER_UPSTREAM_FILE", None)
            for key, value in attempt.parameters.items():
                text = value if isinstance(value, str) else json.dumps(json_safe(value))
                child_env[fsencode(f"PARAM_{key.upper()}")] = fsencode(text)
            child_env[b"RUNNER_PARAMS"] = fsencode(attempt.safe_parameters().text)
            child_env[b"RUNNER_RUN_ID"] = fsencode(attempt.run_id)
            child_env[b"RUNNER_TASK"] = fsencode(attempt.spec.name)
        except UnicodeEncodeError as exc:  # as subprocess would have failed on it
            raise ShellStartError(f"cannot start command: {exc}") from exc
        return child_env

    async def _run_command(
        self, attempt: Attempt, env: dict[str, str], upstream_file: str | None, masker: Masker
    ) -> Ending:
        spec = attempt.spec
        assert spec.command is not None
        try:
            outcome = await run_shell(
                spec.command,
                env=self._child_env(attempt, env, upstream_file),
                cwd=self.project / spec.cwd if spec.cwd else self.project,
                timeout=spec.timeout,
                output_cap=self.output_cap,
                kill_grace=self.kill_grace,
                on_output=functools.partial(self._output, attempt, masker),
                on_start=functools.partial(self._spawned, attempt),
            )
        except ShellStartError as exc:
            return Ending(RunStatus.FAILED, error_of(exc, masker, with_traceback=False))
        if outcome.timed_out:
            status = RunStatus.TIMED_OUT
        else:
            status = RunStatus.SUCCEEDED if outcome.exit_code == 0 else RunStatus.FAILED
        if status is RunStatus.SUCCEEDED and outcome.stdout == outcome.stderr == "" and not (
            outcome.stdout_truncated or outcome.stderr_truncated
        ):
            return _EXITED_SILENT
        return Ending(
            status,
            exit_code=outcome.exit_code,
            stdout=masker.cut_text(outcome.stdout) if outcome.stdout_truncated else outcome.stdout,
            stderr=masker.cut_text(outcome.stderr) if outcome.stderr_truncated else outcome.stderr,
        )

    def _spawned(self, attempt: Attempt, pgid: int, started: float | None) -> None:
        attempt.group = (pgid, started)
        self.recorder.spawned(attempt.run_id, pgid, started)

    def _output(self, attempt: Attempt, masker: Masker, fd: int, data: bytes) -> None:
        """A chunk of a shell run's output, on its way to the store. The run's ``LiveLog`` is
        made with its first chunk: most commands print nothing, and making and closing one
        costs ~4 us."""
        live = attempt.live
        if live is None:
            live = attempt.live = self.recorder.live(attempt.run_id, masker, output_cap=self.output_cap)
        live.output(fd, data)

    async def _python(
        self, attempt: Attempt, env: dict[str, str], masker: Masker, upstream: Upstream | None
    ) -> Ending:
        spec = attempt.spec
        name = f"runner.task.{spec.name}"
        handler = _RunLog(attempt.live, name)
        logger = logging.Logger(name, logging.DEBUG)
        logger.handlers.append(handler)  # a new logger no one else holds: no need of logging's lock
        context = filled(RunContext, {
            "run_id": attempt.run_id, "task": spec.name, "attempt": attempt.number, "parameters": attempt.parameters,
            "logger": logger, "env": env,
        })
        printed: dict[str, str | None] = {"stdout": None, "stderr": None}
        try:
            fn = registry.resolve(spec.callable or "")
            sig = signature_of(fn)
            kwargs = checked_parameters(spec, attempt.parameters, sig)
        except RunnerError as exc:
            outcome = PythonOutcome(error=exc)
        else:
            # What it prints and logs through the stdlib is its run's, not this process's.
            output = RunOutput(attempt.live.output if attempt.live is not None else None, handler.emit, self.output_cap)
            scope = None
            if sig.injected:  # an empty Upstream made only for a callable that may ask for it
                scope = self.scope(context, upstream if upstream is not None else Upstream({}, {}))
            token = current_run.set(context)
            try:
                with captured(output):
                    outcome = await call_python(
                        fn, sig, kwargs,
                        scope=scope,
                        time_limit=spec.timeout,
                        thread_name="" if sig.is_async else f"runner:{spec.name}:{attempt.run_id}",
                    )
            finally:
                current_run.reset(token)
                for key, (text, cut) in zip(("stdout", "stderr"), output.close(), strict=True):
                    printed[key] = masker.cut_text(text) if cut and text is not None else text
        # For the final run; the store has each line already (or gets it with the final record).
        logs = tuple(LogLine(at, level, masker.text(message)) for at, level, message in handler.lines) if handler.lines else ()
        if outcome.error is not None:
            status = RunStatus.TIMED_OUT if outcome.timed_out else RunStatus.FAILED
            error = error_of(outcome.error, masker, with_traceback=not outcome.timed_out)
            return Ending(status, error, logs=logs, stdout=printed["stdout"], stderr=printed["stderr"])
        attempt.value = outcome.value
        if outcome.value is None and not logs and printed["stdout"] is None and printed["stderr"] is None:
            return _RETURNED_NOTHING
        return Ending(
            RunStatus.SUCCEEDED, result=outcome.value, has_result=True, logs=logs,
            stdout=printed["stdout"], stderr=printed["stderr"],
        )


_RETURNED_NOTHING = Ending(RunStatus.SUCCEEDED, result=None, has_result=True)
_EXITED_SILENT = Ending(RunStatus.SUCCEEDED, exit_code=0, stdout="", stderr="")
"""The ends of a python run that returned None, printed nothing and logged nothing, and of a
shell run that exited 0 without output: most of them, and a frozen record made anew cost ~15 k
instructions (a fortieth of a no-op run)."""


def _write_upstream_file(data: dict[str, Any]) -> str:
    fd, path = tempfile.mkstemp(prefix="runner-upstream-", suffix=".json")  # mode 0600
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(data, file)
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _upstream_json(upstream: Upstream) -> dict[str, Any]:
    """What a shell task finds in ``$RUNNER_UPSTREAM_FILE``: its needs' runs, as stored."""
    return {
        name: {key: body[key] for key in ("id", "status", "result", "stdout", "exit_code")}
        for name, body in ((name, run.to_json()) for name, run in upstream.runs.items())
    }
