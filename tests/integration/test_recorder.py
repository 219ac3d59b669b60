"""The recorder on a real SQLite store: a run's start and its shell's process group, written on
their own while the run lives, or with its end when it ends first.

Rows are read with the plain ``sqlite3`` module, from outside the store, as the next runner
process that marks a dead one's runs interrupted would find them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import recording
from sqlalchemy import event

from runner.models import RunStatus, TaskType
from runner.processes import process_start_time
from runner.records import Owner, QueuedRun, RunEnd
from runner.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

COLUMNS = "status, started_at, pgid, pgid_started, finished_at, exit_code"


def queued(run_id: str) -> QueuedRun:
    return QueuedRun(
        id=run_id, task="t", type=TaskType.SHELL, attempt=1, trigger="cli", parent_id=None,
        invocation=run_id, parameters_json="{}", queued_at=time.time(), owner=Owner("h", 1, None),
    )


def row(db: Path, run_id: str) -> tuple[Any, ...]:
    with closing(sqlite3.connect(db)) as conn:
        found = conn.execute(f"SELECT {COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert found is not None
    return tuple(found)


def updates_counted(store: Store) -> list[str]:
    """The UPDATE statements the store sends from now on (each executemany counts once)."""
    seen: list[str] = []

    @event.listens_for(store._engine.sync_engine, "before_cursor_execute")
    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            seen.append(statement)

    return seen


async def test_a_run_that_ends_before_its_start_is_written_gets_the_same_row_in_one_update(
    store: Store, db: Path
) -> None:
    pgid = os.getpid()  # a live process whose start time /proc has
    async with recording(store) as recorder:
        await recorder.queued([queued("apart"), queued("folded")])
        updates = updates_counted(store)

        recorder.started("apart", 100.0)
        recorder.spawned("apart", pgid, process_start_time(pgid))
        await recorder.queued([])  # the start and the group leave now, before the end
        await recorder.finished(RunEnd("apart", RunStatus.SUCCEEDED, 101.0, 1.0, exit_code=0), [])
        apart = len(updates)

        recorder.started("folded", 100.0)
        recorder.spawned("folded", pgid, process_start_time(pgid))
        await recorder.finished(RunEnd("folded", RunStatus.SUCCEEDED, 101.0, 1.0, exit_code=0), [])
        folded = len(updates) - apart

    expected = ("succeeded", 100.0, pgid, process_start_time(pgid), 101.0, 0)
    assert row(db, "apart") == row(db, "folded") == expected
    assert (apart, folded) == (3, 1)


async def test_a_running_shells_group_is_in_the_store_before_the_run_ends(store: Store, db: Path) -> None:
    # What lets the next runner process kill what a runner killed with -9 left running.
    pgid = os.getpid()
    async with recording(store) as recorder:
        await recorder.queued([queued("long")])
        recorder.started("long", 100.0)
        recorder.spawned("long", pgid, process_start_time(pgid))
        await recorder.queued([queued("other")])  # any later write: the batch before it is committed
        assert row(db, "long") == ("running", 100.0, pgid, process_start_time(pgid), None, None)
        await recorder.finished(RunEnd("long", RunStatus.FAILED, 102.0, 2.0, exit_code=1), [])
    assert row(db, "long") == ("failed", 100.0, pgid, process_start_time(pgid), 102.0, 1)


async def test_a_caller_cancelled_while_its_end_is_committed_learns_it_was_then_stops(
    store: Store, db: Path
) -> None:
    # The wait for a commit is shielded only once cancelled: the caller still learns whether
    # its record arrived (it would report a run whose record never did), and the cancel is
    # delivered at its next checkpoint.
    async with recording(store) as recorder:
        await recorder.queued([queued("cut")])
        returned: list[object] = []
        with anyio.CancelScope() as scope:
            scope.cancel()  # lands in the wait below
            returned.append(await recorder.finished(RunEnd("cut", RunStatus.CANCELLED, 101.0), []))
            await anyio.lowlevel.checkpoint()
            returned.append("not reached")
        assert scope.cancelled_caught
        assert returned == [True]
        assert row(db, "cut")[0] == "cancelled"
