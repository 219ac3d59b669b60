"""The store under real SQLite faults, in process: which write failures are worth waiting for,
how long the recorder waits, and how ``give_up`` cuts that short.

A full disk is SQLite's own SQLITE_FULL, caused by ``PRAGMA max_page_count`` on the store's
connections; a dropped table and a replaced file are done for real from outside.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import event

from runner.errors import StoreError, StoreFileChanged
from runner.models import RunStatus, TaskType
from runner.recorder import Recorder
from runner.records import LogChunk, Owner, QueuedRun, RunBatch, RunEnd
from runner.store import SQLITE_PATIENCE, Store, open_store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def _row(run_id: str) -> QueuedRun:
    return QueuedRun(
        id=run_id, task="t", type=TaskType.SHELL, attempt=1, trigger="cli", parent_id=None,
        invocation=run_id, parameters_json="{}", queued_at=time.time(), owner=Owner("h", 1, None),
    )


async def _cap_pages(store: Store) -> None:
    """Let the store's file grow by no more than two pages from now on."""

    @event.listens_for(store._engine.sync_engine, "connect")
    def cap(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages + 2}")
        cursor.close()

    await store._engine.dispose()  # the connections opened so far have no cap


def _big_batch(run_id: str) -> RunBatch:
    batch = RunBatch(inserts=[_row(run_id)])
    batch.logs = [LogChunk(run_id, time.time(), "stdout", "", "x" * 100_000)]
    return batch


async def _failure(store: Store, batch: RunBatch) -> StoreError:
    with pytest.raises(StoreError) as caught:
        await store.write_runs(batch)
    return caught.value


async def test_a_full_disk_can_pass_and_a_dropped_table_cannot(db: Path) -> None:
    async with open_store(db) as store:
        await _cap_pages(store)
        full = await _failure(store, _big_batch("a"))
        assert "database or disk is full" in str(full)
        assert store.write_patience(full) == SQLITE_PATIENCE

    with closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TABLE run_logs")
    async with open_store(db) as store:
        dropped = await _failure(store, _big_batch("b"))
        assert "no such table: run_logs" in str(dropped)
        assert store.write_patience(dropped) == 0


async def test_a_replaced_file_fails_every_read_and_write_at_once(db: Path, tmp_path: Path) -> None:
    async with open_store(db) as store:
        await store.write_runs(RunBatch(inserts=[_row("a")]))
        other = tmp_path / "other.db"
        with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(other)) as target:
            source.backup(target)
        other.replace(db)
        for attempt in (store.write_runs(RunBatch(inserts=[_row("b")])), store.runs()):
            with pytest.raises(StoreFileChanged, match="was replaced while runner was running"):
                await attempt
        with pytest.raises(StoreFileChanged) as caught:
            store.check_file()
        assert store.write_patience(caught.value) == 0
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT id FROM runs").fetchall() == [("a",)]


async def test_the_recorder_waits_out_a_full_disk_no_longer_than_its_patience(db: Path) -> None:
    async with open_store(db) as store:
        await store.write_runs(RunBatch(inserts=[_row("x")]))
        await _cap_pages(store)
        recorder = Recorder(store)
        failed: list[bool] = []
        recorder.on_failure = lambda: failed.append(True)
        async with anyio.create_task_group() as group:
            await group.start(recorder.run)
            started = time.monotonic()
            try:  # the writer ends only when closed: a failed check must not leave it waiting
                with pytest.raises(StoreError, match="database or disk is full"):
                    await recorder.finished(RunEnd("x", RunStatus.SUCCEEDED, time.time()), _big_batch("x").logs)
            finally:
                recorder.close()
            took = time.monotonic() - started
        assert SQLITE_PATIENCE - 0.5 < took < SQLITE_PATIENCE + 2
        assert failed == [True]
        assert recorder.failure is not None and list(recorder.failure.runs) == ["x"]


async def test_give_up_ends_the_wait_at_once(db: Path) -> None:
    async with open_store(db) as store:
        await store.write_runs(RunBatch(inserts=[_row("x")]))
        await _cap_pages(store)
        recorder = Recorder(store)
        async with anyio.create_task_group() as group:
            await group.start(recorder.run)

            async def give_up_soon() -> None:
                await anyio.sleep(0.3)
                recorder.give_up()

            group.start_soon(give_up_soon)
            started = time.monotonic()
            try:
                with pytest.raises(StoreError, match="database or disk is full"):
                    await recorder.finished(RunEnd("x", RunStatus.SUCCEEDED, time.time()), _big_batch("x").logs)
            finally:
                recorder.close()
            assert time.monotonic() - started < 1.5
