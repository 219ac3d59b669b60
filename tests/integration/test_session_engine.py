"""The engine behind a task's ``AsyncSession`` (``Store.session_engine``), in process, on SQLite and
PostgreSQL: a session that has read holds nothing runner's writers need; its first write gets
the lock even when runner committed since its read; runner's records wait for a task's
write transaction for as long as it lasts, past the busy timeout and the recorder's patience;
and runner's idle limit for its own PostgreSQL writers is not a task's.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ProjectDir
from pg import pg_server, pg_url, store_url  # noqa: F401
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from runner.engine import Engine
from runner.errors import StoreError
from runner.models import RunStatus, new_run_id
from runner.store import Store, Trigger, _sqlite, connection, open_store
from runner.sync import sync_project

pytestmark = [pytest.mark.timeout(20), pytest.mark.usefixtures("fresh_plugins")]

PROMPT = 1.0
"""Seconds within which a store write counts as not held back (a held SQLite lock holds it for
the whole 30 s busy timeout)."""


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    async with open_store(url) as opened:
        yield opened


async def execute(url: str, sql: str) -> list[Any]:
    """Run one statement on the database from outside the store; its rows, if any."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql))
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def runner_writes(store: Store) -> float:
    """One write of runner's own (a trigger); the seconds it took."""
    started = time.monotonic()
    await store.add_trigger(Trigger(new_run_id(), "t", {}, True, time.time()))
    return time.monotonic() - started


@pytest.mark.anyio
async def test_a_session_that_has_read_holds_nothing_runners_writes_need(store: Store) -> None:
    async with AsyncSession(store.session_engine("reader")) as session:
        assert (await session.execute(text("SELECT count(*) FROM runs"))).scalar_one() == 0
        # Named to the recorder when SQLite's lock cannot be had (see the last SQLite test);
        # PostgreSQL's sessions never hold runner's lock.
        assert store.session_holders() == ([] if store.engine.dialect.name == "postgresql" else ["reader"])
        assert await runner_writes(store) < PROMPT
        # What the session reads next: SQLite keeps the snapshot of its first read until the
        # session writes; PostgreSQL (READ COMMITTED) shows each statement what is committed.
        seen = (await session.execute(text("SELECT count(*) FROM triggers"))).scalar_one()
        assert seen == (1 if store.engine.dialect.name == "postgresql" else 0)
    assert store.session_holders() == []


@pytest.mark.anyio
async def test_a_session_writes_after_runner_committed_since_its_read_and_commits_as_one(
    store: Store, url: str
) -> None:
    await execute(url, "CREATE TABLE notes (tag VARCHAR(10))")
    async with AsyncSession(store.session_engine("writer")) as session:
        assert (await session.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 0
        await runner_writes(store)  # on SQLite, the session's read snapshot is stale from here
        await session.execute(text("INSERT INTO notes (tag) VALUES ('a')"))
        await session.execute(text("INSERT INTO notes (tag) VALUES ('b')"))
        if url.startswith("postgresql"):
            assert await runner_writes(store) < PROMPT  # no advisory lock, no row runner writes
        assert await execute(url, "SELECT tag FROM notes") == []
        await session.commit()
    assert await execute(url, "SELECT tag FROM notes ORDER BY tag") == [("a",), ("b",)]
    assert len(await execute(url, "SELECT run_id FROM triggers")) == (2 if url.startswith("postgresql") else 1)


@pytest.mark.anyio
async def test_a_write_that_finds_the_lock_taken_waits_its_turn(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    async with open_store(db) as store:
        with closing(sqlite3.connect(db, isolation_level=None, check_same_thread=False)) as other:
            other.execute("CREATE TABLE notes (tag TEXT)")
            async with AsyncSession(store.session_engine("writer")) as session:
                await session.execute(text("SELECT count(*) FROM notes"))
                other.execute("BEGIN IMMEDIATE")
                other.execute("INSERT INTO notes VALUES ('other')")
                releaser = threading.Timer(0.3, other.execute, ["COMMIT"])
                releaser.start()
                try:
                    started = time.monotonic()
                    await session.execute(text("INSERT INTO notes (tag) VALUES ('mine')"))
                    assert time.monotonic() - started >= 0.25  # waited for the other writer
                    await session.commit()
                finally:
                    releaser.join()
            assert other.execute("SELECT tag FROM notes ORDER BY tag").fetchall() == [("mine",), ("other",)]


HOLD = """
import threading

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

WROTE = threading.Event()


async def hold(session: AsyncSession) -> None:
    await session.execute(text("CREATE TABLE held (n INTEGER)"))
    WROTE.set()
    await anyio.sleep(1.5)
"""


@pytest.mark.anyio
async def test_records_wait_for_a_tasks_write_transaction_past_the_busy_timeout_and_the_patience(
    project: ProjectDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_sqlite, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(connection, "SQLITE_PATIENCE", 0.2)
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          hold: {type: python, callable: plugins.jobs:hold}
          tick: {command: echo tick}
        """,
    )
    project.plugin("jobs", HOLD)
    db = tmp_path / "runner.db"
    async with open_store(db) as store:
        await sync_project(project.root, store)
        async with Engine(store, project.root) as engine:
            held = await engine.submit("hold")
            with anyio.fail_after(5):
                while not ((jobs := sys.modules.get("plugins.jobs")) and jobs.WROTE.is_set()):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            with caplog.at_level(logging.ERROR, logger="runner"):
                tick = await engine.submit("tick")  # its queued record waits for the lock
            ticked = await engine.wait(tick)
            assert (await engine.wait(held)).status is RunStatus.SUCCEEDED
    assert ticked.status is RunStatus.SUCCEEDED and ticked.stdout == "tick\n"
    assert "tasks with a store session open: hold" in caplog.text
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT task, status FROM runs ORDER BY task").fetchall() == [
            ("hold", "succeeded"),
            ("tick", "succeeded"),
        ]


@pytest.mark.anyio
async def test_runners_idle_limit_for_its_own_writers_does_not_end_a_tasks_session(
    pg_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "WRITER_IDLE_LIMIT", "300ms")
    await execute(pg_url, "CREATE TABLE notes (tag VARCHAR(10))")
    async with open_store(pg_url) as store:
        await runner_writes(store)
        async with AsyncSession(store.session_engine("slow")) as session:
            await session.execute(text("INSERT INTO notes (tag) VALUES ('kept')"))
            await anyio.sleep(0.6)  # idle in its transaction, twice runner's limit
            await runner_writes(store)
            await session.commit()
    assert await execute(pg_url, "SELECT tag FROM notes") == [("kept",)]


@pytest.mark.anyio
async def test_a_store_writer_that_stalls_in_its_transaction_is_ended_by_the_server(
    pg_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Also one that holds no advisory lock (a worker's claim, start or end): its row locks
    # would hold up whoever writes those runs next.
    monkeypatch.setattr(connection, "WRITER_IDLE_LIMIT", "300ms")
    async with open_store(pg_url) as store:
        with pytest.raises(StoreError, match="cannot write the store"):
            async with store._write(lock=False) as conn:
                await conn.execute(text("UPDATE tasks SET name = name"))
                await anyio.sleep(0.6)  # a paused process: idle in its transaction
        assert await runner_writes(store) < 5.0  # the store goes on


@pytest.mark.anyio
async def test_a_store_sized_for_a_workers_concurrency_keeps_its_connections(pg_url: str) -> None:  # noqa: F811
    async with open_store(pg_url, connections=6) as store:
        seen: set[int] = set()
        for _ in range(4):
            async with anyio.create_task_group() as group:
                for _ in range(6):  # as many at once as the pool keeps: none opened and closed

                    async def use() -> None:
                        async with store.engine.connect() as conn:
                            seen.add((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
                            await anyio.sleep(0.05)

                    group.start_soon(use)
        assert len(seen) == 6
