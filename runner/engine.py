"""The engine: runs tasks after their needs, bounded, timed, recorded from start to end.

``Engine`` is an async context manager over a store. Inside it, ``engine.workflow(name)``
checks that a task and its needs can run, and ``await workflow.execute()`` runs them: each task
as soon as all its needs succeeded (independent branches run concurrently), skipped when one
did not, retried when it failed or timed out and has retries left. Every run is in the store
as ``queued``, then ``running`` while it runs, then exactly one final status, and is reported
finished only once that record is committed. Writes of concurrent runs are committed together
(``recorder.py``). The same engine serves ``runner run``, the daemon and ``runner.testing``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import os
import pickle
import random
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from runner import inject, registry
from runner.capture import RunOutput, captured, installed
from runner.context import RunContext, Upstream, current_run
from runner.errors import ParameterError, RecordRefused, RunnerError, RunNotFound, TaskNotRunnable
from runner.executors.python import PythonOutcome, call_python
from runner.executors.shell import (
    DEFAULT_KILL_GRACE,
    DEFAULT_OUTPUT_CAP,
    ShellStartError,
    run_shell,
)
from runner.graph import upstream_order
from runner.inputs import parameter_problems
from runner.jsonsafe import json_safe
from runner.masking import Masker, SecretUnavailable, readable_secrets, resolve_env
from runner.models import (
    LogLine,
    Run,
    RunStatus,
    SecretRef,
    StoredTask,
    TaskSpec,
    TaskType,
    new_run_id,
)
from runner.processes import HOST
from runner.project import signature_of
from runner.recorder import LiveLog, Recorder
from runner.records import NO_PROCESS, JobArgs, QueuedRun, RunEnd, RunError, RunResult, next_attempt
from runner.revision import Revision
from runner.store import Store

DEFAULT_MAX_CONCURRENCY = 16
"""Runs executing at once in one engine, unless told otherwise (``max_concurrency``)."""

DEFAULT_QUEUE = "default"
"""The workers' queue of the tasks that name none."""

KEEP_FINISHED = 10_000
"""Finished submitted workflows whose final run ``Engine.wait`` still knows."""

MAX_BACKOFF = 3600.0
"""The longest pause between retries, unless a task's own ``backoff`` is longer."""

TOKEN_VARIABLE = "RUNNER_HTTP_TOKEN"
"""The HTTP API's bearer token: masked in every run, and never in a task's environment."""


@dataclass(frozen=True)
class InjectionScope:
    """What injection providers may draw on for one run."""

    context: RunContext
    store: Store
    engine: Engine
    upstream: Upstream


@asynccontextmanager
async def _task_session(scope: InjectionScope) -> Any:
    from sqlalchemy.ext.asyncio import AsyncSession

    # Not on the store's own engine: see runner/store/_sessions.py for what this one does.
    bind = scope.store.session_engine(scope.context.task)
    async with AsyncSession(bind, expire_on_commit=False) as session:
        try:
            yield session
        except BaseException:
            with anyio.CancelScope(shield=True):
                await session.rollback()
            raise
        await session.commit()


inject.set_provider(inject.RUN_CONTEXT, lambda scope: scope.context)
inject.set_provider(inject.UPSTREAM, lambda scope: scope.upstream)
inject.set_provider(inject.ASYNC_SESSION, _task_session)
inject.set_provider(inject.STORE, lambda scope: scope.store)
inject.set_provider(inject.ENGINE, lambda scope: scope.engine)


class _RunLog(logging.Handler):
    """Collects the lines a task writes to ``ctx.logger`` for its final run, and streams each
    to the store as it is written (``live``)."""

    def __init__(self, live: LiveLog | None, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[float, str, str]] = []
        self.live = live
        self.name = name  # of ``ctx.logger``; lines of other loggers (stdlib logging) say whose

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
        except Exception as exc:  # a bad format string must not fail the task
            message = f"{record.msg!r} (log formatting failed: {exc})"
        if record.name != self.name and record.name != "root":
            message = f"{record.name}: {message}"
        line = (record.created, record.levelname.lower(), message)
        self.lines.append(line)
        if self.live is not None:
            self.live.log(*line)


_PACKAGE_DIR = str(Path(__file__).parent)


def _error(exc: BaseException, masker: Masker, *, with_traceback: bool = True) -> RunError:
    trace = None
    if with_traceback:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            tb = tb.tb_next  # runner's own frames tell the task's author nothing
        trace = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    return RunError(type(exc).__qualname__, masker.text(str(exc)), masker.text(trace) if trace else None)


def _fault(exc: BaseException, masker: Masker) -> RunError:
    """The error of a run that runner itself could not prepare, start or record; plain when
    even masking it fails (then its message is not shown: it could hold a secret)."""
    try:
        return _error(exc, masker)
    except Exception as masking:
        message = f"(not shown: masking it failed with {type(masking).__qualname__})"
        return RunError(type(exc).__qualname__, message)


@dataclass(frozen=True, slots=True)
class _Ending:
    """How one attempt ended, before it is recorded (``Engine._finish``)."""

    status: RunStatus
    error: RunError | None = None
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    result: Any = None
    has_result: bool = False  # a python run that returned (``result`` may be None)
    logs: tuple[LogLine, ...] = ()
    masker: Masker | None = None  # with the secrets its run resolved; None: the attempt's own


@dataclass
class _Attempt:
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
    started: bool = False
    final: Run | None = None  # set once the final record is on its way
    value: Any = None  # what a python task returned, for the tasks that need it
    # Masks the task's secrets from the first record on: parameters are written when queued.
    masker: Masker = field(default_factory=Masker)
    live: LiveLog | None = None  # its output and log lines on their way to the store
    next: _Attempt | None = None  # the retry this run's end queues
    queue: str | None = None  # the workers' queue it came by, for a worker's runs

    def queued(self, revision: Revision | None) -> QueuedRun:
        return QueuedRun(
            id=self.run_id,
            task=self.spec.name,
            type=self.spec.type,
            attempt=self.number,
            trigger=self.trigger,
            parent_id=self.parent_id,
            invocation=self.invocation,
            parameters_json=json.dumps(self.masker.data(json_safe(self.parameters))),
            queued_at=self.queued_at,
            scheduled_for=self.scheduled_for,
            queue=self.queue,
            revision=revision.digest if revision else None,
            git_commit=revision.commit if revision else None,
        )

    def retry(self, number: int) -> _Attempt:
        return _Attempt(
            self.spec, new_run_id(), number, self.parameters, "retry", self.run_id,
            self.invocation, masker=self.masker, queue=self.queue,
        )


@dataclass
class _Node:
    task: StoredTask
    attempt: _Attempt
    done: anyio.Event = field(default_factory=anyio.Event)
    final: Run | None = None


class Workflow:
    """A task and its needs, checked and ready to run; ``runs`` fills as runs finish."""

    def __init__(
        self, engine: Engine, nodes: dict[str, _Node], target: str, invocation: str, request: JobArgs
    ) -> None:
        self.engine = engine
        self.nodes = nodes
        self.target = target
        self.invocation = invocation
        # How it was asked for, as the job that takes it to a worker carries it (``send`` adds
        # the runs' ids, the revision and the queue).
        self.request = request
        self.runs: list[Run] = []  # every run made, as each finished
        self.on_run: Callable[[Run], None] | None = None  # told of each run as it finishes

    def running(self) -> list[str]:
        """The tasks running now, for a progress display."""
        return [name for name, node in self.nodes.items() if node.attempt.started and node.final is None]

    def retrying(self) -> list[str]:
        """The tasks waiting out the pause before their next attempt, for a progress display."""
        return [
            name
            for name, node in self.nodes.items()
            if node.final is None and node.attempt.number > 1 and not node.attempt.started
        ]

    def finished(self) -> list[Run]:
        """The final run of each task that has one (earlier attempts that were retried are not)."""
        return [node.final for node in self.nodes.values() if node.final is not None]

    @property
    def target_run_id(self) -> str:
        return self.nodes[self.target].attempt.run_id

    async def queue(self, **with_runs: Any) -> list[str]:
        """Record every run of the workflow as ``queued`` (one transaction, which also commits
        ``with_runs``: a schedule's ``fires``, the triggers ``claimed``). Returns the tasks of
        ``fires`` whose fire was lost to another daemon: then nothing was recorded."""
        return await self.engine.recorder.queued(
            [self.engine._queued(node.attempt) for node in self.nodes.values()], **with_runs
        )

    async def send(self, **with_runs: Any) -> list[str]:
        """Record every run of the workflow as ``queued`` for a worker, with the job that takes
        the workflow to one on the target's queue, in one transaction (see ``queue``)."""
        queue = self.nodes[self.target].task.spec.queue or DEFAULT_QUEUE
        runs = [replace(self.engine._queued(node.attempt), owner=NO_PROCESS, queue=queue) for node in self.nodes.values()]
        revision = self.engine.revision
        job = replace(
            self.request,
            parameters=json_safe(dict(self.request.parameters)),
            runs={name: node.attempt.run_id for name, node in self.nodes.items()},
            revision=revision.digest if revision else None,
            queue=queue,
        )
        return await self.engine.recorder.queued(runs, jobs=[job], **with_runs)

    async def skip(self, reason: str, **with_runs: Any) -> Run | None:
        """Record the target ``skipped`` for ``reason`` without running anything (its needs are
        not recorded): a schedule's fire while the task's previous run goes on. None if the
        fire was lost to another daemon (nothing recorded)."""
        node = self.nodes[self.target]
        if await self.engine.recorder.queued([self.engine._queued(node.attempt)], **with_runs):
            return None
        node.final = await self.engine._finish(node.attempt, None, _Ending(RunStatus.SKIPPED, RunError("Skipped", reason)))
        self._tell(node.final)
        node.done.set()
        return node.final

    async def execute(self, *, queued: bool = False) -> Run:
        """Run everything, needs first; return the target's final run."""
        if not queued:
            await self.queue()
        try:
            if len(self.nodes) == 1:
                await self._run_node(self.nodes[self.target])
            else:
                error: BaseException | None = None
                try:
                    async with anyio.create_task_group() as group:
                        for node in self.nodes.values():
                            group.start_soon(self._run_node, node)
                except BaseExceptionGroup as failed:
                    # A run's record that could not be written (the store's trouble): raised as a
                    # one-task workflow raises it, so that the daemon and workers, which log a
                    # RunnerError and go on, need not look inside task groups.
                    if not all(isinstance(exc, RunnerError) for exc in failed.exceptions):
                        raise
                    error = failed.exceptions[0]
                if error is not None:
                    raise error  # outside the handler: not chained to the group that holds it
        finally:
            final = self.nodes[self.target].final
            if final is not None:
                self._tell(final)
        assert final is not None
        return final

    async def _run_node(self, node: _Node) -> None:
        try:
            needs = [self.nodes[n] for n in node.task.spec.needs if n in self.nodes]
            for need in needs:
                await need.done.wait()
            blocked = [n for n in needs if n.final is None or not n.final.succeeded]
            if blocked:
                node.final = await self.engine._skip(node.attempt, blocked)
            else:
                upstream = await self.engine._upstream(node.task.spec, self.nodes)
                node.final = await self.engine._attempts(node, self._record, upstream)
            self._record(node.final)
        except anyio.get_cancelled_exc_class():
            if node.attempt.final is None:
                with anyio.CancelScope(shield=True):
                    await self.engine._cancelled(node.attempt, None)
            if node.final is None and node.attempt.final is not None:
                node.final = node.attempt.final  # for Engine.wait, and progress
                self._record(node.final)
            raise
        except Exception as exc:
            if node.attempt.final is not None:
                raise  # its record could not be written: the store's trouble, the caller's to see
            # Whatever failed around this run (reading its needs' results) fails the run, not
            # the workflow, and not the process running it.
            ending = _Ending(RunStatus.FAILED, _fault(exc, node.attempt.masker))
            node.final = await self.engine._finish(node.attempt, None, ending)
            self._record(node.final)
        finally:
            node.done.set()

    def _record(self, run: Run) -> None:
        # The target's final run is told last, once every other run is recorded: when a
        # signal cancels them all, the target (waiting for its needs) may be recorded first.
        if run is not self.nodes[self.target].final:
            self._tell(run)

    def _tell(self, run: Run) -> None:
        self.runs.append(run)
        if self.on_run is not None:
            self.on_run(run)


class Engine:
    """Runs tasks of one project against one store. Use as ``async with Engine(...)``."""

    def __init__(
        self,
        store: Store,
        project: Path,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        kill_grace: float = DEFAULT_KILL_GRACE,
        revision: Revision | None = None,
    ) -> None:
        self.store = store
        self.project = project.resolve()
        self.revision = revision  # of the files the runs are queued or run with, recorded on each
        self.recorder = Recorder(store)
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self.output_cap = output_cap
        self.kill_grace = kill_grace
        self.tasks: dict[str, StoredTask] = {}
        # Copied once: reading os.environ decodes every variable, on every access.
        self._environ = dict(os.environ)
        self._child_environ = self._environ  # without the secrets' sources (``reload``)
        self._masker = Masker()  # every secret of the project, and the token (``reload``)
        self._task_limiters: dict[str, anyio.CapacityLimiter] = {}
        self._needs: dict[str, tuple[str, ...]] = {}
        self._stack = AsyncExitStack()
        self._background: TaskGroup | None = None
        self._submitted_scopes: set[anyio.CancelScope] = set()
        self._stopping = False
        self._submitted: dict[str, Workflow] = {}
        self._finished: dict[str, Run] = {}  # the final runs of finished submitted workflows

    async def __aenter__(self) -> Engine:
        self._stack.enter_context(installed())  # python tasks' print() and logging go to their runs
        writer = await self._stack.enter_async_context(anyio.create_task_group())
        await writer.start(self.recorder.run)
        self._stack.callback(self.recorder.close)
        self._background = await self._stack.enter_async_context(anyio.create_task_group())
        await self.reload()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        # The caller's exception is theirs to see as it is, not wrapped in our task groups'
        # exception groups; our groups just finish their work (runs, then pending records).
        await self._stack.__aexit__(None, None, None)

    async def reload(self) -> None:
        """Take the tasks as the store has them now (after a sync)."""
        self.tasks = await self.store.tasks()
        self._needs = {name: task.spec.needs for name, task in self.tasks.items()}
        self._secrets_changed()

    def _secrets_changed(self) -> None:
        """Every run is masked with every secret of the project (and the HTTP token), not only
        its own: a task can read another's file, or print what it was handed. Children get
        none of the variables secret references read from, unless they declare them."""
        refs = {
            f"{name}.{var}": ref
            for name, task in self.tasks.items()
            if not task.removed
            for var, ref in task.spec.env.items()
            if isinstance(ref, SecretRef)
        }
        token = self._environ.get(TOKEN_VARIABLE)
        self._masker = Masker([*readable_secrets(refs, self.project), *([token] if token else [])])
        hidden = {ref.from_env for ref in refs.values() if ref.from_env is not None} | {TOKEN_VARIABLE}
        self._child_environ = {k: v for k, v in self._environ.items() if k not in hidden}

    # -- what callers use -------------------------------------------------------------------

    def workflow(
        self,
        name: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        with_needs: bool = True,
        trigger: str = "cli",
        parent_id: str | None = None,
        run_id: str | None = None,
        attempt: int = 1,
        scheduled_for: float | None = None,
        run_ids: Mapping[str, str] | None = None,
        invocation: str | None = None,
        queue: str | None = None,
    ) -> Workflow:
        """Check that ``name`` (and its needs) can run with these parameters; nothing runs yet.

        ``parameters`` override the target's own (not its needs'); ``run_id`` is the id the
        target's run gets (one is made otherwise), ``attempt`` its number, ``scheduled_for`` the
        fire time it runs for. A worker makes a queued workflow again with the ids its runs
        have (``run_ids``, by task), its ``invocation`` and the ``queue`` it came by (its
        retries are queued as the runs of that queue). Raises TaskNotRunnable (unknown,
        disabled, orphaned, invalid, removed) or ParameterError.
        """
        target = self._runnable(name)
        order = upstream_order(name, self._needs) if with_needs else [name]
        if run_ids is not None and set(order) != set(run_ids):
            raise TaskNotRunnable(
                f"the needs of {name!r} changed since its runs were queued (then: {', '.join(sorted(run_ids))}; "
                f"now: {', '.join(order)}); run it again"
            )
        invocation = invocation or new_run_id()
        request = JobArgs(
            task=name, parameters=parameters or {}, with_needs=with_needs, trigger=trigger, parent_id=parent_id,
            attempt=attempt, scheduled_for=scheduled_for, invocation=invocation, runs={}, revision=None, queue="",
        )
        nodes: dict[str, _Node] = {}
        for task_name in order:
            stored = target if task_name == name else self._runnable(task_name, needed_by=name)
            params = dict(stored.spec.parameters)
            if task_name == name and parameters:
                params = self._checked(stored.spec, {**params, **parameters})
            masker = _masking(self._masker, readable_secrets(stored.spec.env, self.project))
            if run_ids is not None:
                own_id = run_ids[task_name]
            else:
                own_id = run_id if run_id is not None and task_name == name else new_run_id()
            first = _Attempt(stored.spec, own_id, 1, params, trigger, parent_id, invocation, masker=masker, queue=queue)
            if task_name == name:
                first.number, first.scheduled_for = attempt, scheduled_for
            nodes[task_name] = _Node(stored, first)
        return Workflow(self, nodes, name, invocation, request)

    async def run(self, name: str, **options: Any) -> Run:
        """Run ``name`` after its needs and return its final run."""
        return await self.workflow(name, **options).execute()

    async def submit(self, name: str, *, parameters: Mapping[str, Any] | None = None) -> str:
        """Start ``name`` (after its needs) in the background; return its run id once queued.

        A task may use this (with ``Engine`` injected) to start another; ``wait`` for it, or
        let it finish on its own.
        """
        parent = current_run.get(None)
        workflow = self.workflow(
            name,
            parameters=parameters,
            trigger="task" if parent else "api",
            parent_id=parent.run_id if parent else None,
        )
        await workflow.queue()
        assert self._background is not None
        self._submitted[workflow.target_run_id] = workflow
        self._background.start_soon(self._execute_submitted, workflow)
        return workflow.target_run_id

    async def _execute_submitted(self, workflow: Workflow) -> None:
        # A scope of its own: the background group's scope also encloses the code of whoever
        # entered the engine, so cancelling that would cancel the caller too.
        with anyio.CancelScope() as scope:
            if self._stopping:
                scope.cancel()
            self._submitted_scopes.add(scope)
            try:
                await workflow.execute(queued=True)
            finally:
                self._submitted_scopes.discard(scope)
                # A daemon must not keep every workflow it ever ran: only the latest finals.
                del self._submitted[workflow.target_run_id]
                final = workflow.nodes[workflow.target].final
                if final is not None:
                    self._finished[workflow.target_run_id] = final
                    if len(self._finished) > KEEP_FINISHED:
                        del self._finished[next(iter(self._finished))]

    def cancel_submitted(self) -> None:
        """Cancel every run started with ``submit`` that has not finished (recorded cancelled);
        for shutting down: nothing can be submitted afterwards."""
        self._stopping = True
        for scope in list(self._submitted_scopes):
            scope.cancel()

    async def wait(self, run_id: str) -> Run:
        """The final run of a submitted task, once it is finished.

        A task that waits gives its concurrency slot back meanwhile, so that a task waiting for
        the one it started cannot take the last slot that one needs.
        """
        workflow = self._submitted.get(run_id)
        if workflow is None:
            final = self._finished.get(run_id)
            if final is None:
                raise RunNotFound(f"no run {run_id!r} was submitted to this engine, or long ago")
            return final
        node = workflow.nodes[workflow.target]
        try:
            self.limiter.release()
        except RuntimeError:  # the caller is not a running task: it holds no slot
            await node.done.wait()
        else:
            try:
                await node.done.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.limiter.acquire()
        assert node.final is not None
        return node.final

    # -- checks -----------------------------------------------------------------------------

    def _runnable(self, name: str, needed_by: str | None = None) -> StoredTask:
        return runnable(self.tasks, name, needed_by)

    def _checked(self, spec: TaskSpec, params: dict[str, Any]) -> dict[str, Any]:
        return checked_parameters(spec, params)

    # -- running ----------------------------------------------------------------------------

    async def _attempts(self, node: _Node, retried: Callable[[Run], None], upstream: Upstream) -> Run:
        """Run ``node`` until it succeeds or has no retries left; return its last run.

        Each earlier run that gets retried is passed to ``retried`` as it ends.
        """
        while True:
            attempt = node.attempt
            run = await self._attempt(attempt, upstream)
            if attempt.next is None:
                return run
            retried(run)
            node.attempt = attempt.next
            await anyio.sleep(retry_delay(attempt.spec.retries.backoff, attempt.number))

    async def _skip(self, attempt: _Attempt, blocked: list[_Node]) -> Run:
        why = ", ".join(
            f"{n.task.name} {n.final.status.value if n.final else 'did not run'}" for n in blocked
        )
        error = RunError("Skipped", f"a need did not succeed: {why}")
        return await self._finish(attempt, None, _Ending(RunStatus.SKIPPED, error))

    async def _cancelled(self, attempt: _Attempt, started: float | None) -> Run:
        message = "stopped on request" if started is not None else "stopped on request before it started"
        return await self._finish(attempt, started, _Ending(RunStatus.CANCELLED, RunError("Cancelled", message)))

    async def _attempt(self, attempt: _Attempt, upstream: Upstream) -> Run:
        started: float | None = None
        try:
            # The task's own limit first, so a run waiting for it holds no global slot.
            async with self._task_limiter(attempt.spec), self.limiter:
                started = time.time()
                attempt.started = True
                self.recorder.started(attempt.run_id, started)
                try:
                    ending = await self._execute(attempt, upstream)
                except Exception as exc:  # preparing or starting it failed: this run fails, nothing else
                    ending = _Ending(RunStatus.FAILED, _fault(exc, attempt.masker))
            number = next_attempt(ending.status, attempt.number, attempt.spec.retries.count)
            if number is not None:
                # Queued with this run's end, before the pause: whoever sees this run final
                # sees its retry, and a stop during the pause records the retry cancelled.
                attempt.next = attempt.retry(number)
            # The slot is free again while the record is committed with other runs' records.
            return await self._finish(attempt, started, ending)
        except anyio.get_cancelled_exc_class():
            if attempt.final is None:
                with anyio.CancelScope(shield=True):
                    await self._cancelled(attempt, started)
            raise

    def _queued(self, attempt: _Attempt) -> QueuedRun:
        return attempt.queued(self.revision)

    def _task_limiter(self, spec: TaskSpec) -> AbstractAsyncContextManager[Any]:
        if spec.concurrency is None:
            return contextlib.nullcontext()
        limiter = self._task_limiters.get(spec.name)
        if limiter is None:
            limiter = self._task_limiters[spec.name] = anyio.CapacityLimiter(spec.concurrency)
        elif limiter.total_tokens != spec.concurrency:
            limiter.total_tokens = spec.concurrency  # changed by a sync since
        return limiter

    async def _upstream(self, spec: TaskSpec, nodes: Mapping[str, _Node]) -> Upstream:
        """The results of ``spec``'s needs: from this workflow, or (for needs it does not run,
        as with ``--no-deps``) their latest succeeded runs in the store."""
        results: dict[str, Any] = {}
        runs: dict[str, Run] = {}
        unloadable: dict[str, str] = {}
        for need in spec.needs:
            node = nodes.get(need)
            if node is not None and node.final is not None:
                runs[need] = node.final
                results[need] = node.attempt.value if node.final.type is TaskType.PYTHON else node.final.stdout
                continue
            found = await self.store.runs(task=need, status=RunStatus.SUCCEEDED.value, limit=1)
            if found:
                runs[need] = found[0]
                if found[0].type is TaskType.PYTHON:
                    try:
                        results[need] = await self.store.load_result(found[0].id)
                    except Exception as exc:  # e.g. its class was renamed since: fail on use only
                        unloadable[need] = (
                            f"run {found[0].id}: {type(exc).__name__}: {exc}; run {need!r} again"
                        )
                else:
                    results[need] = found[0].stdout
        return Upstream(results, runs, unloadable)

    async def _execute(self, attempt: _Attempt, upstream: Upstream) -> _Ending:
        """Run the task once; return how it ended."""
        try:
            env, secrets = resolve_env(attempt.spec.env, self.project)
        except SecretUnavailable as exc:
            return _Ending(RunStatus.FAILED, _error(exc, attempt.masker, with_traceback=False))
        # The project's secrets and those known when it was queued, as in the final record;
        # kept on the attempt, for an error that escapes from here on.
        masker = attempt.masker = _masking(attempt.masker, secrets)
        attempt.live = self.recorder.live(attempt.run_id, masker, output_cap=self.output_cap)
        if attempt.spec.type is TaskType.SHELL:
            ending = await self._shell(attempt, env, masker, upstream)
        else:
            ending = await self._python(attempt, env, masker, upstream)
        return replace(ending, masker=masker)

    async def _shell(self, attempt: _Attempt, env: dict[str, str], masker: Masker, upstream: Upstream) -> _Ending:
        child_env = {**self._child_environ, **env}
        if not attempt.spec.needs:
            if "RUNNER_UPSTREAM_FILE" not in env:
                # Inherited when a task started this runner: that file is not this task's.
                child_env.pop("RUNNER_UPSTREAM_FILE", None)
            return await self._run_command(attempt, child_env, masker)
        # Even when no need has a run to show (--no-deps). File work goes to a thread: on a
        # busy disk creating and removing files can stall the event loop for milliseconds.
        path = await anyio.to_thread.run_sync(_write_upstream_file, _upstream_json(upstream))
        child_env["RUNNER_UPSTREAM_FILE"] = path
        try:
            return await self._run_command(attempt, child_env, masker)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, path)

    async def _run_command(self, attempt: _Attempt, child_env: dict[str, str], masker: Masker) -> _Ending:
        spec = attempt.spec
        for key, value in attempt.parameters.items():
            child_env[f"PARAM_{key.upper()}"] = value if isinstance(value, str) else json.dumps(json_safe(value))
        child_env["RUNNER_PARAMS"] = json.dumps(json_safe(attempt.parameters))
        child_env["RUNNER_RUN_ID"] = attempt.run_id
        child_env["RUNNER_TASK"] = spec.name
        assert spec.command is not None
        try:
            outcome = await run_shell(
                spec.command,
                env=child_env,
                cwd=self.project / spec.cwd if spec.cwd else self.project,
                timeout=spec.timeout,
                output_cap=self.output_cap,
                kill_grace=self.kill_grace,
                on_output=attempt.live.output if attempt.live is not None else None,
                on_start=functools.partial(self.recorder.spawned, attempt.run_id),
            )
        except ShellStartError as exc:
            return _Ending(RunStatus.FAILED, _error(exc, masker, with_traceback=False))
        if outcome.timed_out:
            status = RunStatus.TIMED_OUT
        else:
            status = RunStatus.SUCCEEDED if outcome.exit_code == 0 else RunStatus.FAILED
        return _Ending(
            status,
            exit_code=outcome.exit_code,
            stdout=masker.cut_text(outcome.stdout) if outcome.stdout_truncated else outcome.stdout,
            stderr=masker.cut_text(outcome.stderr) if outcome.stderr_truncated else outcome.stderr,
        )

    async def _python(self, attempt: _Attempt, env: dict[str, str], masker: Masker, upstream: Upstream) -> _Ending:
        spec = attempt.spec
        name = f"runner.task.{spec.name}"
        handler = _RunLog(attempt.live, name)
        logger = logging.Logger(name, logging.DEBUG)
        logger.addHandler(handler)
        context = RunContext(attempt.run_id, spec.name, attempt.number, attempt.parameters, logger, env)
        printed: dict[str, str | None] = {"stdout": None, "stderr": None}
        try:
            fn = registry.resolve(spec.callable or "")
            sig = signature_of(fn)
            kwargs = self._checked(spec, attempt.parameters)
        except RunnerError as exc:
            outcome = PythonOutcome(error=exc)
        else:
            # What it prints and logs through the stdlib is its run's, not this process's.
            output = RunOutput(attempt.live.output if attempt.live is not None else None, handler.emit, self.output_cap)
            token = current_run.set(context)
            try:
                with captured(output):
                    outcome = await call_python(
                        fn, sig, kwargs,
                        scope=InjectionScope(context, self.store, self, upstream),
                        time_limit=spec.timeout,
                        thread_name=f"runner:{spec.name}:{attempt.run_id}",
                    )
            finally:
                current_run.reset(token)
                for key, (text, cut) in zip(("stdout", "stderr"), output.close(), strict=True):
                    printed[key] = masker.cut_text(text) if cut and text is not None else text
        # For the final run; the store has each line already (or gets it with the final record).
        logs = tuple(LogLine(at, level, masker.text(message)) for at, level, message in handler.lines)
        if outcome.error is not None:
            status = RunStatus.TIMED_OUT if outcome.timed_out else RunStatus.FAILED
            error = _error(outcome.error, masker, with_traceback=not outcome.timed_out)
            return _Ending(status, error, logs=logs, stdout=printed["stdout"], stderr=printed["stderr"])
        attempt.value = outcome.value
        return _Ending(
            RunStatus.SUCCEEDED, result=outcome.value, has_result=True, logs=logs,
            stdout=printed["stdout"], stderr=printed["stderr"],
        )

    async def _finish(self, attempt: _Attempt, started: float | None, ending: _Ending) -> Run:
        """Record the run's final status (committed before this returns) and return the run.

        What the run's output and log lines had not streamed yet is written in the same
        transaction, so whoever sees the run final sees all of its rows. A record that cannot be
        made (masking or serialising it failed) or that the store refuses (a value it cannot
        hold, while it takes the other runs' records) is replaced by the run ``failed`` with
        why, and no retry: the retry would meet the same.
        """
        # Skipped, cancelled and unstartable runs have no masker of their own.
        masker = ending.masker if ending.masker is not None else attempt.masker
        finished = time.time()
        try:
            run, end = self._final_record(attempt, started, finished, ending, masker)
            unstreamed = attempt.live.close() if attempt.live is not None else []
        except Exception as exc:
            if attempt.live is not None:
                with contextlib.suppress(Exception):  # what it still had is dropped with it
                    attempt.live.close()
            run, end = self._failed_record(attempt, started, finished, _fault(exc, masker))
            unstreamed, attempt.next = [], None
        attempt.final = run  # from here on the record is on its way, whatever happens
        retry = self._queued(attempt.next) if attempt.next is not None else None
        try:
            written = await self.recorder.finished(end, unstreamed, retry)
        except RecordRefused as exc:
            run, end = self._failed_record(attempt, started, finished, _fault(exc, masker))
            attempt.final, attempt.next = run, None
            await self.recorder.finished(end, [], None)
            return run
        if not written:
            # Marked interrupted meanwhile (this worker was taken for dead) and retried
            # elsewhere: the retry queued here was not written, and must not run.
            attempt.next = None
        return run

    def _final_record(
        self, attempt: _Attempt, started: float | None, finished: float, ending: _Ending, masker: Masker
    ) -> tuple[Run, RunEnd]:
        """The run as it ended, and its end to write."""
        duration = round(finished - started, 6) if started is not None else None
        parameters = masker.data(json_safe(attempt.parameters))
        result = None
        if ending.has_result:
            result = RunResult.of(masker.data(json_safe(ending.result)), _pickled(ending.result, masker))
        end = RunEnd(
            run_id=attempt.run_id,
            status=ending.status,
            finished_at=finished,
            duration_s=duration,
            exit_code=ending.exit_code,
            stdout=masker.text(ending.stdout) if ending.stdout is not None else None,
            stderr=masker.text(ending.stderr) if ending.stderr is not None else None,
            error=ending.error,
            parameters_json=json.dumps(parameters) if masker else None,
            result=result,
        )
        return self._run(attempt, started, end, parameters, ending.logs), end

    def _failed_record(
        self, attempt: _Attempt, started: float | None, finished: float, error: RunError
    ) -> tuple[Run, RunEnd]:
        """The run ``failed`` with ``error`` and nothing else: what is written when its own
        record could not be; the parameters stay as they were queued."""
        duration = round(finished - started, 6) if started is not None else None
        try:
            parameters = attempt.masker.data(json_safe(attempt.parameters))
        except Exception:
            parameters = {}  # not shown rather than shown unmasked
        end = RunEnd(attempt.run_id, RunStatus.FAILED, finished, duration, error=error)
        return self._run(attempt, started, end, parameters), end

    def _run(
        self,
        attempt: _Attempt,
        started: float | None,
        end: RunEnd,
        parameters: Mapping[str, Any],
        logs: tuple[LogLine, ...] = (),
    ) -> Run:
        return Run(
            id=attempt.run_id,
            task=attempt.spec.name,
            type=attempt.spec.type,
            status=end.status,
            attempt=attempt.number,
            parameters=parameters,
            trigger=attempt.trigger,
            parent_id=attempt.parent_id,
            invocation=attempt.invocation,
            scheduled_for=attempt.scheduled_for,
            queued_at=attempt.queued_at,
            started_at=started,
            finished_at=end.finished_at,
            duration_s=end.duration_s,
            exit_code=end.exit_code,
            stdout=end.stdout,
            stderr=end.stderr,
            result=end.result.value if end.result is not None else None,
            error=end.error.to_json() if end.error is not None else None,
            logs=logs,
            host=HOST,
            revision=self.revision.digest if self.revision else None,
            git_commit=self.revision.commit if self.revision else None,
        )


def runnable(tasks: Mapping[str, StoredTask], name: str, needed_by: str | None = None) -> StoredTask:
    """The stored task ``name`` if it can run; TaskNotRunnable saying why not (and where to look)."""
    stored = tasks.get(name)
    subject = f"task {needed_by!r} needs {name!r}, which" if needed_by else f"task {name!r}"
    if stored is None:
        live = [n for n, t in tasks.items() if not t.removed]
        close = difflib.get_close_matches(name, live, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else "; `runner list` shows the tasks"
        raise TaskNotRunnable(f"{subject} is not declared in tasks.d{hint}")
    if stored.removed:
        raise TaskNotRunnable(
            f"{subject} was removed from the task files; its history stays in `runner runs`"
        )
    if not stored.enabled:
        reason = stored.disabled_reason or "declared"
        where = stored.spec.source
        if reason == "declared":
            raise TaskNotRunnable(
                f"{subject} is disabled in {where} (enabled: false); enable it there"
            )
        kind, _, detail = reason.partition(": ")
        raise TaskNotRunnable(
            f"{subject} is {kind} ({where}): {detail}; fix it, then check with `runner validate`"
        )
    return stored


def checked_parameters(spec: TaskSpec, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` converted to what the callable's hints ask for; ParameterError if unfit, or
    if a name or value could not reach the task (see ``inputs.py``)."""
    problems = parameter_problems(params)
    if problems:
        raise ParameterError([f"task {spec.name!r}: {problem}" for problem in problems])
    if spec.type is not TaskType.PYTHON:
        return params
    from runner.signature import check_parameters

    sig = signature_of(registry.resolve(spec.callable or ""))
    converted, issues = check_parameters(sig, params)
    if issues:
        raise ParameterError([f"task {spec.name!r}: {issue.message}" for issue in issues])
    return converted


def retry_delay(backoff: float, attempt: int) -> float:
    """Seconds to wait before retrying after ``attempt`` failed: ``backoff`` doubled with each
    attempt, capped at one hour (or ``backoff``, if longer), then jittered down by up to half so
    that runs that failed together do not retry together."""
    # The exponent is bounded: 2.0 ** 1024 overflows, and long before that any backoff is capped.
    delay = min(backoff * 2.0 ** min(attempt - 1, 1000), max(backoff, MAX_BACKOFF))
    return delay * random.uniform(0.5, 1.0)


def _masking(masker: Masker, secrets: list[str]) -> Masker:
    """``masker``, or one that masks ``secrets`` too when it does not already (usually it does:
    a task's own secrets are the project's)."""
    if not secrets or masker.covers(secrets):
        return masker
    return Masker([*masker.secrets, *secrets])


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


def _pickled(value: Any, masker: Masker) -> bytes | None:
    """The original result, pickled; None when it cannot be, or when it holds a secret."""
    try:
        blob = pickle.dumps(value)
    except Exception:
        return None
    return None if masker and masker.contains_secret(blob) else blob
