"""``Store``: intent-named async methods over SQLAlchemy Core.

SQLite is used as FIELD-NOTES measured it works with several processes: WAL, ``synchronous=NORMAL``,
a long busy timeout, and ``BEGIN IMMEDIATE`` for every transaction that writes (a deferred BEGIN
fails with "database is locked" when two writers meet). Readers use a plain BEGIN. Transactions
are kept short; none is held open while a task runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from runner.errors import StoreError, StoreVersionError
from runner.models import Source, StoredTask, TaskSpec
from runner.store import _tables as t
from runner.sync import SyncPlan

CURRENT_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

# Ordered migrations: version N is reached by running MIGRATIONS[N - 1] on a store at N - 1.
MIGRATIONS: list[Callable[[Any], None]] = [
    lambda sync_conn: t.metadata.create_all(sync_conn, tables=list(t.VERSION_1)),
]


def database_url(db: str | Path) -> str:
    """A SQLAlchemy async URL for ``--db``: a bare path means a SQLite file."""
    text = str(db)
    if "://" not in text:
        return f"sqlite+aiosqlite:///{Path(text).expanduser().resolve()}"
    if text.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + text[len("sqlite://") :]
    return text


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and url[len(prefix) :] not in ("", ":memory:"):
        return Path(url[len(prefix) :].split("?", 1)[0])
    return None


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that BEGIN IMMEDIATE below is what runs.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        writes = conn.get_execution_options().get("runner_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


class Store:
    """Tasks and runs, kept in one database. Open with ``open_store``."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.url = url
        self._engine = engine
        self._writer = engine.execution_options(runner_write=True)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.connect() as conn, conn.begin():
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"cannot read the store at {self.url}: {exc.orig}") from exc

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._writer.begin() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"cannot write the store at {self.url}: {exc.orig}") from exc

    async def _prepare(self) -> None:
        """Create the schema on a new store, upgrade an older one, refuse a newer one."""
        version = await self._version()
        if version == CURRENT_VERSION:
            return
        self._refuse_newer(version)
        async with self._write() as conn:
            version = await self._version(conn)  # another process may have done it meanwhile
            self._refuse_newer(version)
            for number in range(version + 1, CURRENT_VERSION + 1):
                await conn.run_sync(MIGRATIONS[number - 1])
            await conn.execute(t.schema_version.delete())
            await conn.execute(t.schema_version.insert().values(version=CURRENT_VERSION))

    def _refuse_newer(self, version: int) -> None:
        if version > CURRENT_VERSION:
            raise StoreVersionError(
                f"the store at {self.url} has schema version {version}, but this runner "
                f"understands up to {CURRENT_VERSION}; upgrade runner, or point --db at another store"
            )

    async def _version(self, conn: AsyncConnection | None = None) -> int:
        def read(sync_conn: Any) -> int:
            from sqlalchemy import inspect

            if not inspect(sync_conn).has_table("schema_version"):
                return 0
            value = sync_conn.execute(select(t.schema_version.c.version)).scalar()
            return int(value or 0)

        if conn is not None:
            return await conn.run_sync(read)
        async with self._read() as reader:
            return await reader.run_sync(read)

    # -- tasks --------------------------------------------------------------------------------

    async def tasks(self, *, include_removed: bool = True) -> dict[str, StoredTask]:
        """Every task the store knows, by name (removed ones too unless told otherwise)."""
        async with self._read() as conn:
            return await self._tasks(conn, include_removed=include_removed)

    async def _tasks(self, conn: AsyncConnection, *, include_removed: bool) -> dict[str, StoredTask]:
        query = select(
            t.tasks.c.name,
            t.tasks.c.definition,
            t.tasks.c.source,
            t.tasks.c.enabled,
            t.tasks.c.disabled_reason,
            t.tasks.c.removed,
        ).order_by(t.tasks.c.name)
        if not include_removed:
            query = query.where(t.tasks.c.removed.is_(False))
        result = await conn.execute(query)
        found = {}
        for name, definition, source, enabled, reason, removed in result:
            path, _, line = source.rpartition(":")
            spec = TaskSpec.from_definition(name, Source(path, int(line)), json.loads(definition))
            found[name] = StoredTask(name, spec, bool(enabled), reason, bool(removed))
        return found

    async def sync_tasks(self, planner: Callable[[dict[str, StoredTask]], SyncPlan]) -> SyncPlan:
        """Reconcile the stored tasks with ``planner(stored)`` in one transaction.

        The plan is made from a plain read first; only when it changes something is it made
        again under the write lock and applied, so a sync with nothing to change writes nothing.
        """
        plan = planner(await self.tasks())
        if plan.is_empty:
            return plan
        async with self._write() as conn:
            plan = planner(await self._tasks(conn, include_removed=True))
            await self._apply(conn, plan)
        return plan

    async def _apply(self, conn: AsyncConnection, plan: SyncPlan) -> None:
        now = time.time()
        if plan.inserts:
            await conn.execute(
                t.tasks.insert(),
                [
                    {
                        "name": w.spec.name,
                        "type": w.spec.type.value,
                        "definition": w.spec.definition_json(),
                        "source": str(w.spec.source),
                        "enabled": w.enabled,
                        "disabled_reason": w.reason,
                        "removed": False,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for w in plan.inserts
                ],
            )
        if plan.updates:
            from sqlalchemy import bindparam

            await conn.execute(
                update(t.tasks)
                .where(t.tasks.c.name == bindparam("b_name"))
                .values(
                    type=bindparam("b_type"),
                    definition=bindparam("b_definition"),
                    source=bindparam("b_source"),
                    enabled=bindparam("b_enabled"),
                    disabled_reason=bindparam("b_reason"),
                    removed=False,
                    updated_at=now,
                ),
                [
                    {
                        "b_name": w.spec.name,
                        "b_type": w.spec.type.value,
                        "b_definition": w.spec.definition_json(),
                        "b_source": str(w.spec.source),
                        "b_enabled": w.enabled,
                        "b_reason": w.reason,
                    }
                    for w in plan.updates
                ],
            )
        if plan.removed:
            await conn.execute(
                update(t.tasks)
                .where(t.tasks.c.name.in_(plan.removed))
                .values(removed=True, enabled=False, disabled_reason="removed", updated_at=now)
            )

    async def close(self) -> None:
        await self._engine.dispose()


@asynccontextmanager
async def open_store(db: str | Path) -> AsyncIterator[Store]:
    """Open (creating or upgrading as needed) the store at a path or SQLAlchemy async URL."""
    url = database_url(db)
    path = _sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent} for the store: {exc.strerror}") from exc
    try:
        engine = create_async_engine(url)
    except Exception as exc:  # a malformed URL or a missing driver
        raise StoreError(f"cannot open the store {url!r}: {exc}") from exc
    if url.startswith("sqlite"):
        _configure_sqlite(engine)
    store = Store(engine, url)
    try:
        await store._prepare()
        yield store
    finally:
        await store.close()
