"""``Store``: the one object callers hold, made of the store's parts (one module each).

Each part adds the intent-named methods of one concern, all on one connection (``StoreBase``):
``tasks.py`` (tasks and the files they came from), ``runs.py`` (batched run writes and run
history), ``cancels.py`` (requests to stop a run), ``logs.py``, ``schedules.py``, ``leases.py``,
``triggers.py``, ``queue.py`` (the workers' jobs), ``retention.py``, ``stats.py``, ``pages.py``
(reads for the web page and the event streams), and ``migrations.py`` (the schema's version).
Callers get frozen records, never rows; the store decides nothing about processes: where a
process that died left a task's process group, it says so, and its caller kills it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from runner.errors import StoreError
from runner.processes import HOST, kill_orphaned_groups, process_is_alive
from runner.store._sqlite import configure_sqlite, inspect_sqlite_file, reader_uri, sqlite_path
from runner.store.cancels import CancelStore
from runner.store.connection import connect_args, database_url, shown_url
from runner.store.leases import LeaseStore
from runner.store.logs import LogStore
from runner.store.migrations import Migrations
from runner.store.pages import PageStore
from runner.store.queue import QueueStore
from runner.store.retention import RetentionStore
from runner.store.runs import RunStore
from runner.store.schedules import ScheduleStore
from runner.store.stats import StatsStore
from runner.store.tasks import TaskStore
from runner.store.triggers import TriggerStore


class Store(
    TaskStore,
    RunStore,
    CancelStore,
    LogStore,
    ScheduleStore,
    LeaseStore,
    TriggerStore,
    QueueStore,
    RetentionStore,
    StatsStore,
    PageStore,
    Migrations,
):
    """Tasks and runs, kept in one database. Open with ``open_store``."""


@asynccontextmanager
async def open_store(db: str | Path, *, sweep: bool = True, connections: int | None = None) -> AsyncIterator[Store]:
    """Open (creating or upgrading as needed) the store at a path or SQLAlchemy async URL.

    Every process that opens a store first marks the unfinished runs of dead runner processes
    on its host ``interrupted``, so no run stays ``running`` forever after a crash; the daemon
    (``sweep=False``) does that itself once it leads, and logs each run it marks.

    ``connections``: how many connections to a PostgreSQL store the process keeps open once it
    has used them (a worker: its concurrency and a few); beyond them as many again are opened
    and closed as needed. By default SQLAlchemy's 5 (and 10).
    """
    url = database_url(db)
    path = sqlite_path(url)
    read_only: str | None = None
    options: dict[str, Any] = {}
    if url.startswith("postgresql"):
        options["connect_args"] = connect_args(url)
        if connections is not None:
            options.update(pool_size=connections, max_overflow=connections)
    if path is not None:
        if not path.parent.is_dir():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {path.parent} for the store: {exc.strerror}") from exc
        read_only = inspect_sqlite_file(path)
        if read_only is not None:
            reader = reader_uri(path)

            async def connect_reader() -> Any:
                return await aiosqlite.connect(reader, uri=True)

            options = {"async_creator": connect_reader, "poolclass": AsyncAdaptedQueuePool}
    try:
        engine = create_async_engine(url, **options)
    except Exception as exc:  # a malformed URL or a missing driver
        hint = "; pip install 'runner-tasks[postgres]'" if isinstance(exc, ImportError) and "psycopg" in url else ""
        raise StoreError(f"cannot open the store {shown_url(url)!r}: {exc}{hint}") from exc
    if url.startswith("sqlite"):
        configure_sqlite(engine, read_only=read_only is not None)
    store = Store(engine, url, read_only=read_only)
    try:
        await store.migrate()
        store.watch_file()
        if sweep:
            kill_orphaned_groups((await store.mark_interrupted(HOST, process_is_alive)).groups)
        yield store
    finally:
        await store.close()
