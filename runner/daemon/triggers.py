"""The daemon's triggers: the runs ``runner trigger`` asked for, taken up from the store.

A trigger is taken up in the transaction that queues its runs, so a crash or a restart neither
repeats nor drops one. One that cannot run (its task went away, its parameters no longer fit)
is recorded as a failed run with the trigger's run id, saying why.
"""

from __future__ import annotations

import time

import anyio

from runner import log
from runner.daemon.housekeeping import store_trouble
from runner.daemon.runs import Dispatch
from runner.engine import Engine
from runner.errors import ParameterError, RunnerError, StoreError, TaskNotRunnable
from runner.models import RunStatus, TaskType
from runner.records import QueuedRun, RunEnd, RunError
from runner.store import Store, Trigger
from runner.workflow import WorkflowOptions

TRIGGER_POLL = 0.1
"""Seconds between looks for new triggers."""


class Triggers:
    """Take up the triggers in ``store``: run each through ``dispatch``."""

    def __init__(self, store: Store, engine: Engine, dispatch: Dispatch) -> None:
        self.store = store
        self.engine = engine
        self.dispatch = dispatch

    async def run(self) -> None:
        seen: int | None = None
        while True:
            try:
                # Read the triggers only when something was committed since the last look: an
                # idle daemon then costs next to no CPU.
                version = self.store.data_version()
                if version is None or version != seen:
                    for trigger in await self.store.triggers():
                        await self._take(trigger)
                    seen = version
            except StoreError as exc:
                await store_trouble(exc)
            await anyio.sleep(TRIGGER_POLL)

    async def _take(self, trigger: Trigger) -> None:
        try:
            workflow = self.engine.workflow(
                trigger.task,
                WorkflowOptions(
                    parameters=trigger.parameters,
                    with_needs=trigger.with_needs,
                    trigger="trigger",
                    run_id=trigger.run_id,
                ),
            )
        except (TaskNotRunnable, ParameterError) as exc:
            with anyio.CancelScope(shield=True):
                await self._refuse(trigger, exc)
            return
        with anyio.CancelScope(shield=True):  # taken up means started, even when a stop comes
            await self.dispatch(workflow, claimed=[trigger.run_id])
        log.logger.info(
            f"{trigger.task}: triggered run {trigger.run_id}",
            extra={"event": "triggered", "task": trigger.task, "run_id": trigger.run_id},
        )

    async def _refuse(self, trigger: Trigger, exc: RunnerError) -> None:
        """Record a trigger that cannot run as a failed run with its id, saying why."""
        stored = self.engine.tasks.get(trigger.task)
        now = time.time()
        run = QueuedRun(
            id=trigger.run_id, task=trigger.task, type=stored.spec.type if stored else TaskType.SHELL, attempt=1,
            trigger="trigger", parent_id=None, invocation=trigger.run_id, parameters_json="{}", queued_at=now,
        )
        await self.engine.recorder.queued([run], claimed=[trigger.run_id])
        await self.engine.recorder.finished(RunEnd(trigger.run_id, RunStatus.FAILED, now, error=RunError.of(exc)), [])
        log.logger.error(
            f"{trigger.task}: trigger {trigger.run_id} refused: {exc}",
            extra={"event": "trigger_refused", "task": trigger.task, "run_id": trigger.run_id},
        )
