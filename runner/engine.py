"""The engine: runs tasks after their needs, bounded, timed, recorded from start to end.

``Engine`` is an async context manager over a store. Inside it, ``engine.workflow(name)``
checks that a task and its needs can run, and ``await workflow.execute()`` runs them: each task
as soon as all its needs succeeded (independent branches run concurrently), skipped when one
did not, retried when it failed or timed out and has retries left. Every run is in the store
as ``queued``, then ``running`` while it runs, then exactly one final status, and is reported
finished only once that record is committed. Writes of concurrent runs are committed together
(``recorder.py``). The same engine serves ``runner run``, the daemon and ``runner.testing``.

The parts, each in a module of its own: a workflow and its retries (``workflow.py``), one
attempt and its records (``attempt.py``), what a shell command or python callable gets
(``execution.py``), the checks before anything runs (``runnable.py``). The engine holds what
they share: the store, the recorder, the limits, the tasks and the project's secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from runner import inject
from runner.attempt import Attempt, Attempts, masking
from runner.capture import installed
from runner.context import RunContext, Upstream, current_run
from runner.errors import RunNotFound, TaskNotRunnable
from runner.execution import Execution
from runner.executors.shell import DEFAULT_KILL_GRACE, DEFAULT_OUTPUT_CAP
from runner.graph import upstream_order
from runner.history import History
from runner.masking import Masker, readable_secrets
from runner.models import Run, SecretRef, StoredTask, new_run_id
from runner.recorder import Recorder
from runner.revision import Revision
from runner.runnable import checked_parameters, runnable
from runner.slots import Slots
from runner.store import Store
from runner.workflow import DEFAULT_QUEUE, MAX_BACKOFF, Node, Workflow, WorkflowOptions, retry_delay

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_QUEUE",
    "MAX_BACKOFF",
    "Engine",
    "InjectionScope",
    "Workflow",
    "WorkflowOptions",
    "checked_parameters",
    "retry_delay",
    "runnable",
]

DEFAULT_MAX_CONCURRENCY = 16
"""Runs executing at once in one engine, unless told otherwise (``max_concurrency``)."""

_ASKED_FOR_NOTHING = WorkflowOptions()

KEEP_FINISHED = 10_000
"""Finished submitted workflows whose final run ``Engine.wait`` still knows."""

TOKEN_VARIABLE = "RUNNER_HTTP_TOKEN"
"""The HTTP API's bearer token: masked in every run, and never in a task's environment."""


@dataclass(frozen=True)
class InjectionScope:
    """What injection providers may draw on for one run."""

    context: RunContext
    store: Store  # for the task's session; a task reads the store through ``history``
    engine: Engine
    upstream: Upstream

    @property
    def history(self) -> History:
        return History(self.store)


@asynccontextmanager
async def _task_session(scope: InjectionScope) -> Any:
    # SQLAlchemy is imported only when a task asks for a session: `runner run` of a shell task
    # and `--help` need not pay for it.
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
inject.set_provider(inject.HISTORY, lambda scope: scope.history)
inject.set_provider(inject.ENGINE, lambda scope: scope.engine)


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
        self.recorder = Recorder(store)
        self.limiter = Slots(max_concurrency)
        self.tasks: dict[str, StoredTask] = {}
        self._execution = Execution(
            self.project, self.recorder, self._scope, output_cap=output_cap, kill_grace=kill_grace
        )
        self._attempts = Attempts(store, self.recorder, self.limiter, self._execution, revision=revision)
        self._masker = Masker()  # every secret of the project, and the token (``reload``)
        self._needs: dict[str, tuple[str, ...]] = {}
        self._secret_refs: dict[str, dict[str, SecretRef]] = {}  # by task, of the tasks not removed
        self._stack = AsyncExitStack()
        self._background: TaskGroup | None = None
        self._submitted_scopes: set[anyio.CancelScope] = set()
        self._stopping = False
        self._submitted: dict[str, Workflow] = {}
        self._finished: dict[str, Run] = {}  # the final runs of finished submitted workflows

    @property
    def revision(self) -> Revision | None:
        """Of the files the runs are queued or run with, recorded on each."""
        return self._attempts.revision

    @revision.setter
    def revision(self, revision: Revision | None) -> None:
        self._attempts.revision = revision

    async def __aenter__(self) -> Engine:
        self._stack.enter_context(installed())  # python tasks' print() and logging go to their runs
        writer = await self._stack.enter_async_context(anyio.create_task_group())
        await writer.start(self.recorder.run)
        self._stack.callback(self.recorder.close)
        # Entered before the runs' group, so it looks for cancel requests until they are done.
        watcher = await self._stack.enter_async_context(anyio.create_task_group())
        await watcher.start(self._attempts.cancels.run)
        self._stack.callback(watcher.cancel_scope.cancel)
        self._background = await self._stack.enter_async_context(anyio.create_task_group())
        await self.reload()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        # The caller's exception is theirs to see as it is, not wrapped in our task groups'
        # exception groups; our groups just finish their work (runs, then pending records).
        await self._stack.__aexit__(None, None, None)

    async def reload(self, tasks: Mapping[str, StoredTask] | None = None) -> None:
        """Take the tasks as the store has them now (after a sync), or as a sync left them."""
        before = self.tasks
        self.tasks = dict(tasks) if tasks is not None else await self.store.tasks()
        # By name, for the tasks that are not the very records taken last time: a daemon's
        # one-file reload of 10,000 tasks spent 25 ms walking every task's needs and env.
        for name in before.keys() - self.tasks.keys():
            del self._needs[name]
            self._secret_refs.pop(name, None)
        for name, task in [(name, task) for name, task in self.tasks.items() if before.get(name) is not task]:
            self._needs[name] = task.spec.needs
            refs = {var: ref for var, ref in task.spec.env.items() if isinstance(ref, SecretRef)}
            if refs and not task.removed:
                self._secret_refs[name] = refs
            else:
                self._secret_refs.pop(name, None)
        self._secrets_changed()

    def _secrets_changed(self) -> None:
        """Every run is masked with every secret of the project (and the HTTP token), not only
        its own: a task can read another's file, or print what it was handed. Children get
        none of the variables secret references read from, unless they declare them."""
        # Each reference read once, however many tasks share it (the masker keeps a set anyway);
        # told apart by its fields, which hash faster than the frozen dataclass.
        refs: dict[tuple[str | None, str | None], tuple[str, SecretRef]] = {}
        for name, own in self._secret_refs.items():
            for var, ref in own.items():
                key = (ref.from_env, ref.from_file)
                if key not in refs:
                    refs[key] = (f"{name}.{var}", ref)
        environ = self._execution.environ
        token = environ.get(TOKEN_VARIABLE)
        readable = readable_secrets(dict(refs.values()), self.project)
        self._masker = Masker([*readable, *([token] if token else [])])
        hidden = {from_env for from_env, _ in refs if from_env is not None} | {TOKEN_VARIABLE}
        self._execution.hide(hidden)

    def _scope(self, context: RunContext, upstream: Upstream) -> InjectionScope:
        return InjectionScope(context, self.store, self, upstream)

    # -- what callers use -------------------------------------------------------------------

    def workflow(self, name: str, options: WorkflowOptions | None = None) -> Workflow:
        """Check that ``name`` (and its needs) can run as ``options`` ask; nothing runs yet.

        Raises TaskNotRunnable (unknown, disabled, orphaned, invalid, removed) or ParameterError.
        """
        options = options or _ASKED_FOR_NOTHING
        parameters, run_ids = options.parameters, options.run_ids
        target = runnable(self.tasks, name)
        order = upstream_order(name, self._needs) if options.with_needs and self._needs.get(name) else [name]
        if run_ids is not None and set(order) != set(run_ids):
            raise TaskNotRunnable(
                f"the needs of {name!r} changed since its runs were queued (then: {', '.join(sorted(run_ids))}; "
                f"now: {', '.join(order)}); run it again"
            )
        invocation = options.invocation or new_run_id()
        nodes: dict[str, Node] = {}
        for task_name in order:
            stored = target if task_name == name else runnable(self.tasks, task_name, needed_by=name)
            params = dict(stored.spec.parameters)
            if task_name == name and parameters:
                params = checked_parameters(stored.spec, {**params, **parameters})
            env = stored.spec.env
            masker = masking(self._masker, readable_secrets(env, self.project)) if env else self._masker
            if run_ids is not None:
                own_id = run_ids[task_name]
            else:
                own_id = options.run_id if options.run_id is not None and task_name == name else new_run_id()
            first = Attempt(
                stored.spec, own_id, 1, params, options.trigger, options.parent_id, invocation,
                masker=masker, queue=options.queue,
            )
            if task_name == name:
                first.number, first.scheduled_for = options.attempt, options.scheduled_for
            nodes[task_name] = Node(stored, first)
        return Workflow(self._attempts, nodes, name, invocation, options)

    async def run(self, name: str, *, parameters: Mapping[str, Any] | None = None, with_needs: bool = True) -> Run:
        """Run ``name`` after its needs and return its final run."""
        options = WorkflowOptions(parameters=parameters, with_needs=with_needs) if parameters or not with_needs else None
        return await self.workflow(name, options).execute()

    async def submit(self, name: str, *, parameters: Mapping[str, Any] | None = None) -> str:
        """Start ``name`` (after its needs) in the background; return its run id once queued.

        A task may use this (with ``Engine`` injected) to start another; ``wait`` for it, or
        let it finish on its own.
        """
        parent = current_run.get(None)
        workflow = self.workflow(
            name,
            WorkflowOptions(
                parameters=parameters,
                trigger="task" if parent else "api",
                parent_id=parent.run_id if parent else None,
            ),
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
