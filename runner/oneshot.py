"""One-shot runs, as ``runner run`` and ``runner.testing`` make them: sync, then run one task.

SIGINT and SIGTERM stop the run: running children are killed (TERM, grace, KILL), every
unfinished run is recorded ``cancelled``, and the result says which signal it was.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from runner.engine import Engine
from runner.models import Run
from runner.revision import project_revision
from runner.store import Store

if TYPE_CHECKING:
    from runner.progress import Reporter
from runner.sync import sync_project


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
    async with Engine(store, root, **engine_options) as engine:
        workflow = engine.workflow(name, parameters=parameters, with_needs=with_needs)
        stopped_by: int | None = None
        target: Run | None = None
        async with anyio.create_task_group() as group:
            runs_scope = anyio.CancelScope()

            async def stop_on_signal() -> None:
                nonlocal stopped_by
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        stopped_by = signum
                        runs_scope.cancel()
                        engine.cancel_submitted()
                        return

            if handle_signals:
                group.start_soon(stop_on_signal)
            if reporter is not None:
                workflow.on_run = reporter.run_finished
                group.start_soon(reporter.watch, workflow)
            with runs_scope:
                target = await workflow.execute()
            group.cancel_scope.cancel()
    return OneShot(workflow.runs, target if stopped_by is None else None, stopped_by)
