"""One-shot runs, as ``runner run`` and ``runner.testing`` make them: sync, then run one task.

SIGINT and SIGTERM stop the run: running children are killed (TERM, grace, KILL), every
unfinished run is recorded ``cancelled``, and the result says which signal it was.

A write the store does not take (a full disk, a dropped table, a replaced file) stops the run
the same way, and ``run_once`` raises StoreError naming the store, the cause and the runs not
recorded: a one-shot run never reports a run whose record was not committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from runner.engine import Engine
from runner.errors import StoreError, StoreFileChanged
from runner.models import Run
from runner.revision import project_revision
from runner.shutdown import first_stop_signal
from runner.store import FILE_CHECK_EVERY, Store, failure_cause

if TYPE_CHECKING:
    from runner.progress import Reporter
    from runner.recorder import WriteFailure
from runner.sync import sync_project
from runner.workflow import WorkflowOptions


@dataclass(frozen=True)
class OneShot:
    """What a one-shot run did: every run it made (the target's last, if it finished)."""

    runs: list[Run]
    target: Run | None
    stopped_by: int | None = None  # the signal that stopped it


async def run_once(
    root: Path,
    store: Store,
    name: str,
    *,
    parameters: Mapping[str, Any] | None = None,
    with_needs: bool = True,
    handle_signals: bool = True,
    reporter: Reporter | None = None,
    **engine_options: Any,
) -> OneShot:
    """Sync ``root`` into ``store``, then run ``name`` after its needs (unless ``with_needs`` is
    false). Raises ProjectError, TaskNotRunnable or ParameterError before anything runs."""
    await sync_project(root, store, warn_unchanged=False)
    engine_options.setdefault("revision", project_revision(root))
    engine = Engine(store, root, **engine_options)
    tasks: dict[str, str] = {}  # run id -> task, for a message about runs not recorded
    try:
        async with engine:
            workflow = engine.workflow(name, WorkflowOptions(parameters=parameters, with_needs=with_needs))
            tasks = {node.attempt.run_id: task for task, node in workflow.nodes.items()}
            stopped_by: int | None = None
            target: Run | None = None
            async with anyio.create_task_group() as group:
                runs_scope = anyio.CancelScope()

                def stop() -> None:
                    engine.recorder.give_up()
                    runs_scope.cancel()
                    engine.cancel_submitted()

                async def stop_on_signal(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
                    nonlocal stopped_by
                    stopped_by = await first_stop_signal(task_status=task_status)
                    stop()

                async def watch_store_file() -> None:
                    while True:
                        await anyio.sleep(FILE_CHECK_EVERY)
                        try:
                            store.check_file()
                        except StoreFileChanged:
                            stop()  # the runs' records fail to be written now: they say which
                            return

                engine.recorder.on_failure = stop
                group.start_soon(watch_store_file)
                if handle_signals:
                    await group.start(stop_on_signal)
                if reporter is not None:
                    workflow.on_run = reporter.run_finished
                    group.start_soon(reporter.watch, workflow)
                with runs_scope:
                    target = await workflow.execute()
                group.cancel_scope.cancel()
    except (StoreError, BaseExceptionGroup) as exc:
        if engine.recorder.failure is None:
            raise
        raise _not_recorded(store, engine.recorder.failure, tasks) from exc
    if engine.recorder.failure is not None:
        raise _not_recorded(store, engine.recorder.failure, tasks) from engine.recorder.failure.error
    try:
        store.check_file()
    except StoreFileChanged as exc:  # after the last write: every record went to the old file
        raise StoreError(
            f"the store file {store.where} was {exc.what} while runner was running: what this run "
            "recorded is in the file that was there before, not in the one there now"
        ) from exc
    return OneShot(workflow.runs, target if stopped_by is None else None, stopped_by)


def _not_recorded(store: Store, failure: WriteFailure, tasks: dict[str, str]) -> StoreError:
    """The error a one-shot run ends with when the store did not take some of its records."""
    named = ", ".join(f"run {run_id} ({tasks[run_id]})" if run_id in tasks else f"run {run_id}" for run_id in failure.runs)
    if failure.more:
        named += f" and {failure.more} more"
    error = failure.error
    if isinstance(error, StoreFileChanged):
        cause = f"the file was {error.what} while runner was running"
    else:
        cause = failure_cause(error)
    return StoreError(
        f"cannot record to the store {store.where}: {cause}; not stored: the records of {named or 'the runs'} "
        "(`runner runs` shows what was)"
    )
