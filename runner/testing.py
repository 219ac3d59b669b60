"""Test your own task files and callables: run a task in-process and get the finished run back.

    from runner.testing import run_task_sync

    def test_add():
        outcome = run_task_sync("add", project="path/to/project", parameters={"a": 1})
        assert outcome.run.status == "succeeded"
        assert outcome.value == {"result": 33}

Each call syncs the project into a fresh temporary store (unless ``db`` names one), runs the
task after its needs exactly as ``runner run`` does, and throws the store away afterwards.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from runner.models import Run, RunStatus
from runner.oneshot import run_once
from runner.store import open_store

__all__ = ["TaskOutcome", "run_task", "run_task_sync"]


@dataclass(frozen=True)
class TaskOutcome:
    """A finished run of the task, the runs of its needs, and what a python task returned."""

    run: Run
    runs: list[Run]
    value: Any  # the original return value (unpickled), or None

    @property
    def succeeded(self) -> bool:
        return self.run.status is RunStatus.SUCCEEDED


async def run_task(
    name: str,
    *,
    project: str | Path = ".",
    parameters: Mapping[str, Any] | None = None,
    with_needs: bool = True,
    db: str | Path | None = None,
    **engine_options: Any,
) -> TaskOutcome:
    """Run ``name`` of ``project`` after its needs, against a temporary store (or ``db``)."""
    with tempfile.TemporaryDirectory(prefix="runner-test-") as scratch:
        async with open_store(db or Path(scratch) / "runner.db") as store:
            outcome = await run_once(
                Path(project),
                store,
                name,
                parameters=parameters,
                with_needs=with_needs,
                handle_signals=False,
                **engine_options,
            )
            assert outcome.target is not None
            value = None
            if outcome.target.succeeded and outcome.target.result is not None:
                value = await store.load_result(outcome.target.id)
    return TaskOutcome(outcome.target, outcome.runs, value)


def run_task_sync(name: str, **options: Any) -> TaskOutcome:
    """``run_task`` for synchronous tests."""

    async def go() -> TaskOutcome:
        return await run_task(name, **options)

    return anyio.run(go, backend="asyncio")
