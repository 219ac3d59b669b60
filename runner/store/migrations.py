"""The store's schema version, and the ordered steps that bring an older store up to it.

A small ``schema_version`` table and a list of steps, rather than Alembic: importing Alembic
alone costs about 355 ms, and most of its SQLite changes need its "batch" mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Index, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.errors import StoreVersionError
from runner.store import _tables as t
from runner.store.connection import StoreBase

CURRENT_VERSION = 9


def _add_invocation(sync_conn: Any) -> None:
    sync_conn.execute(text("ALTER TABLE runs ADD COLUMN invocation VARCHAR(32)"))
    Index("runs_invocation", t.runs.c.invocation).create(sync_conn)


def _add_daemon_tables(sync_conn: Any) -> None:
    sync_conn.execute(text("ALTER TABLE run_logs ADD COLUMN stream VARCHAR(8) NOT NULL DEFAULT 'log'"))
    sync_conn.execute(text("ALTER TABLE runs ADD COLUMN scheduled_for FLOAT"))
    sync_conn.execute(text("ALTER TABLE runs ADD COLUMN pgid INTEGER"))
    sync_conn.execute(text("ALTER TABLE runs ADD COLUMN pgid_started FLOAT"))
    t.metadata.create_all(sync_conn, tables=[t.schedules, t.leases, t.triggers])


def _add_remote_columns(sync_conn: Any) -> None:
    for column in ("revision VARCHAR(32)", "git_commit VARCHAR(64)", "queue VARCHAR(64)", "job_id BIGINT"):
        sync_conn.execute(text(f"ALTER TABLE runs ADD COLUMN {column}"))
    Index("runs_job", t.runs.c.job_id).create(sync_conn)
    Index("runs_parent", t.runs.c.parent_id).create(sync_conn)


def _index_status_by_time(sync_conn: Any) -> None:
    # Plain SQL: an Index object on t.runs would join the table's own indexes for good, and
    # a store created later in this process would get it twice. The new index serves every
    # query the old one did (status is its first column).
    sync_conn.execute(text("CREATE INDEX runs_status_queued ON runs (status, queued_at)"))
    sync_conn.execute(text("DROP INDEX runs_status"))


def _add_cancel_requests(sync_conn: Any) -> None:
    sync_conn.execute(text("ALTER TABLE runs ADD COLUMN cancel_requested_at FLOAT"))


def _add_waiting_jobs(sync_conn: Any) -> None:
    t.metadata.create_all(sync_conn, tables=[t.waiting_jobs])


def _add_task_generation(sync_conn: Any) -> None:
    t.metadata.create_all(sync_conn, tables=[t.task_generation])
    # A sync plans over the tasks of changed files only when the stored digests say which tasks
    # the unchanged files hold. A store an older runner synced from an empty tasks.d/ kept the
    # digests of files whose tasks it removed; without digests, the next sync plans over all.
    sync_conn.execute(t.task_files.delete())


# MIGRATIONS[N - 1] takes a store from version N - 1 to N. A new store (version 0) is created at
# the current version in one step, so MIGRATIONS[0] creates everything.
MIGRATIONS: list[Callable[[Any], None]] = [
    t.metadata.create_all,
    lambda sync_conn: t.metadata.create_all(sync_conn, tables=[t.task_files]),
    _add_invocation,
    _add_daemon_tables,
    _add_remote_columns,
    _index_status_by_time,
    _add_cancel_requests,
    _add_waiting_jobs,
    _add_task_generation,
]


class Migrations(StoreBase):
    """Brings the store's schema to ``CURRENT_VERSION`` when it is opened."""

    async def migrate(self) -> None:
        """Create the schema on a new store, upgrade an older one, refuse a newer one."""
        version = await self._version()
        if version == CURRENT_VERSION:
            return
        self._refuse_newer(version)
        async with self._write() as conn:
            version = await self._version(conn)  # another process may have done it meanwhile
            self._refuse_newer(version)
            steps = [MIGRATIONS[0]] if version == 0 else MIGRATIONS[version:CURRENT_VERSION]
            for step in steps:
                await conn.run_sync(step)
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
            if not inspect(sync_conn).has_table("schema_version"):
                return 0
            value = sync_conn.execute(select(t.schema_version.c.version)).scalar()
            return int(value or 0)

        if conn is not None:
            return await conn.run_sync(read)
        async with self._read() as reader:
            return await reader.run_sync(read)
