"""The workflows a daemon starts: run here in its task group, or sent to workers (``--remote``),
and, when it stops, let finish within the grace period or cancelled."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from runner import log
from runner.engine import Engine
from runner.errors import ParameterError, RunnerError, TaskNotRunnable
from runner.records import next_attempt
from runner.store import Lease, Store
from runner.workflow import Workflow, WorkflowOptions

Dispatch = Callable[..., Awaitable[list[str]]]
"""``Runs.dispatch``: queue a workflow (committing the keyword arguments with its runs) and
start it; the tasks whose fire was lost."""
Due = Callable[[], Awaitable[None]]
"""Returns when the runs of a workflow queued ahead of their time may start."""


class Runs:
    """Start workflows in ``group`` (or send them to workers, with ``remote``)."""

    def __init__(self, engine: Engine, group: TaskGroup, *, remote: bool) -> None:
        self.engine = engine
        self.remote = remote
        self._group = group
        self._scopes: set[anyio.CancelScope] = set()
        self._idle = anyio.Event()
        self._idle.set()

    async def dispatch(self, workflow: Workflow, *, when_due: Due | None = None, **with_runs: Any) -> list[str]:
        """Queue the workflow's runs (committing ``with_runs`` with them) and start it here once
        ``when_due`` returns, or send it to the workers (``--remote``) then (a worker starts
        what it takes at once). Returns the tasks whose fire in ``with_runs`` was lost (see
        ``Workflow.queue``): then nothing was queued or started."""
        if self.remote:
            if when_due is not None:
                await when_due()
            return await workflow.send(**with_runs)
        lost = await workflow.queue(**with_runs)
        if not lost:
            if when_due is not None:
                await when_due()
            self._start(workflow)
        return lost

    def begun(self, workflow: Workflow) -> bool:
        """Whether a workflow dispatched here has started a run (or ended one, or went to the
        workers): what a fire waits for before the HTTP API's live work goes on."""
        return self.remote or any(node.attempt.started or node.final is not None for node in workflow.nodes.values())

    def _start(self, workflow: Workflow) -> None:
        workflow.on_run = log.run_finished
        # Counted from now, not from when the task gets going: a stop that comes in between
        # must wait for it (and be able to cancel it) like any other.
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._group.start_soon(self._execute, workflow, scope)

    async def _execute(self, workflow: Workflow, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await workflow.execute(queued=True)
            except RunnerError as exc:
                log.logger.error(
                    f"{workflow.target}: {exc}", extra={"event": "run_error", "task": workflow.target}
                )
            finally:
                self._scopes.discard(scope)
                if not self._scopes:
                    self._idle.set()

    async def drain(self, grace: float, hurry: anyio.Event) -> None:
        """Let running runs finish within ``grace`` seconds (or until ``hurry`` is set), then
        cancel them: their process groups are killed and they are recorded cancelled."""
        async with anyio.create_task_group() as waiting:

            async def until(event: anyio.Event) -> None:
                await event.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(until, self._idle)
            waiting.start_soon(until, hurry)
            await anyio.sleep(grace)
            waiting.cancel_scope.cancel()
        if self._scopes:
            log.logger.info(
                f"cancelling {len(self._scopes)} running workflow(s)",
                extra={"event": "daemon_cancelling", "count": len(self._scopes)},
            )
        for scope in list(self._scopes):
            scope.cancel()
        self.engine.cancel_submitted()

    async def retry_interrupted(self, store: Store, previous: Lease) -> None:
        """Retry the runs a dead daemon had started, where their task has retries left."""
        for run in await store.started_runs_interrupted(previous.host, previous.pid):
            stored = self.engine.tasks.get(run.task)
            number = next_attempt(run.status, run.attempt, stored.spec.retries.count if stored else None)
            if number is None:
                continue
            try:
                workflow = self.engine.workflow(
                    run.task,
                    WorkflowOptions(
                        parameters=run.parameters, with_needs=False, trigger="retry", parent_id=run.id, attempt=number
                    ),
                )
            except (TaskNotRunnable, ParameterError) as exc:
                log.warn(
                    "retry_refused", f"{run.task}: interrupted run {run.id} not retried: {exc}",
                    task=run.task, run_id=run.id, error=str(exc),
                )
                continue
            await self.dispatch(workflow)
            log.logger.info(
                f"{run.task}: retrying interrupted run {run.id} as {workflow.target_run_id}",
                extra={"event": "retry_interrupted", "task": run.task, "run_id": workflow.target_run_id},
            )
