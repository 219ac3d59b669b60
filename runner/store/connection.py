"""The store's connection to its database: reads, writes, the file under it, task sessions.

``StoreBase`` is what every part of the store (``tasks.py``, ``runs.py`` ...) builds on: a read
is a plain transaction, a write one that holds the store's write lock from its first statement
(SQLite: ``BEGIN IMMEDIATE``, see ``_sqlite.py``). Transactions are kept milliseconds long;
none is held open while a task runs.

PostgreSQL (``postgresql+psycopg://``) gets the same schema and the same behaviour. Each of the
store's write transactions there first takes one transaction-level advisory lock
(``pg_advisory_xact_lock``), the counterpart of SQLite's BEGIN IMMEDIATE: store writes happen
one at a time, so every read-modify-write (a sync's plan, a lease takeover, replacing schedule
states) sees the state it changes, with no retry loop around a planner and no row locks to
get right for rows that do not exist yet (a new task, a first lease), which SELECT ... FOR
UPDATE cannot lock. It also keeps ``run_logs.id`` in commit order (see ``logs.py``).

A few writes skip that lock (``_write(lock=False)``): those that change only existing rows of
runs by primary key, each guarded by a condition on the row's own state that a concurrent
writer of the same row would change (a claim: ``status = 'queued' AND host = ''``; a start or
an end: the status not final yet). PostgreSQL's row locks make a second writer of such a row
wait for the first to commit, then evaluate its condition again on the committed row (READ
COMMITTED), so the compare-and-set holds without the store-wide lock; and they write no
``run_logs`` row and no new row whose order anyone reads. Claims, and batches of nothing but
starts and ends (a worker's, or an engine's on PostgreSQL), go so (``RunBatch.needs_lock``):
from two workers on, the one lock was held 100% of the time, each of those transactions
holding it for a few round trips of a busy client (docs/performance.md). So does what a
worker's final end decides on the runs of its workflow that wait for it (queued or skipped),
under that workflow's own lock instead (``jobs.py``). A locked writer that decides on runs it
read locks them as it reads them (``recover_job``: ``FOR UPDATE``).

A writer that stops in the middle of a transaction (a paused process, a lost host) must not
hold the others up, behind the advisory lock or a row lock: the server ends the session of a
store connection idle in a transaction for ``WRITER_IDLE_LIMIT`` (set when the connection is
opened, ``connect_args``, so that it costs no round trip per transaction).

Task sessions (``session_engine``) are on an engine of their own (``_sessions.py``): they never
take the advisory lock (PostgreSQL locks their rows itself) and, on SQLite, take the write lock
only when they first write.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from runner.errors import StoreError, StoreFileChanged
from runner.store._sessions import TaskSessions
from runner.store._sqlite import configure_sqlite, remove_own_sidecars, sqlite_path

PG_WRITE_LOCK = 0x72756E6E6572  # "runner": the advisory lock key of the store's writers
WRITER_IDLE_LIMIT = "10s"  # PostgreSQL: how long a store transaction may wait on its client


def connect_args(url: str) -> dict[str, Any]:
    """What runner's own connections to a PostgreSQL store are opened with: the server ends a
    session idle in a transaction for ``WRITER_IDLE_LIMIT``. Not task sessions (their engine
    is made from the URL alone): a task may keep its transaction open while it works."""
    given = make_url(url).query.get("options", "")
    given = " ".join(given) if isinstance(given, tuple) else given
    return {"options": f"{given} -c idle_in_transaction_session_timeout={WRITER_IDLE_LIMIT}".strip()}

def database_url(db: str | Path) -> str:
    """A SQLAlchemy async URL for ``--db``: a bare path means a SQLite file; ``sqlite://`` and
    ``postgresql://`` (or ``postgres://``) without a driver get the async one."""
    text = str(db)
    if "://" not in text:
        return f"sqlite+aiosqlite:///{Path(text).expanduser().resolve()}"
    if text.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + text[len("sqlite://") :]
    for bare in ("postgresql://", "postgres://"):
        if text.startswith(bare):
            return "postgresql+psycopg://" + text[len(bare) :]
    return text


def shown_url(url: str) -> str:
    """The URL as messages show it: without its password."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


FILE_CHECK_EVERY = 0.5
"""Seconds between two looks, by a running daemon or ``runner run``, at whether the store's
file is still the one it opened (``Store.check_file``)."""

SQLITE_PATIENCE = 5.0
"""Seconds a write to a SQLite store that failed for a reason that can pass (the file busy
beyond the busy timeout, the disk full, an I/O error) is tried again before it is given up."""

OUTAGE_PATIENCE = 60.0
"""The same for a PostgreSQL store that cannot be reached (a server restarting)."""

# SQLite's result codes for failures that can pass by themselves; every other one (no such
# table, a read-only or corrupt file, a constraint) fails the same way however often it is tried.
_PASSING_SQLITE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_PROTOCOL")


def failure_cause(exc: BaseException) -> str:
    """What a store error says went wrong, for a message: the driver's words, and SQLite's
    result code when there is one ("database or disk is full (SQLITE_FULL)")."""
    cause = exc.__cause__
    orig = getattr(cause, "orig", None)
    if orig is None:
        return str(exc)
    name = getattr(orig, "sqlite_errorname", None)
    text = str(orig).strip() or type(orig).__name__
    return f"{text} ({name})" if name else text


class StoreBase:
    """The connection every part of the store reads and writes through."""

    def __init__(self, engine: AsyncEngine, url: str, *, read_only: str | None = None) -> None:
        self.url = shown_url(url)
        self.path = sqlite_path(url)  # a SQLite store's file; None for a server
        self.read_only = read_only  # why this process cannot write the store (None: it can)
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._file_changed = False
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._writer = engine.execution_options(runner_write=True)
        self._version_conn: Any = None  # a plain sqlite3 connection for data_version()
        self._sessions: TaskSessions | None = None  # created when a task first asks for a session
        self._queue_ready = False  # the job queue found installed (``QueueStore.ensure_queue``)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        # Every store operation is shielded (they last milliseconds): cancelled halfway, the
        # pool would throw the connection away and close it in a task of its own, which can
        # outlive the event loop and keep the process from exiting.
        with anyio.CancelScope(shield=True):
            self.check_file()
            try:
                async with self._engine.connect() as conn, conn.begin():
                    yield conn
            except (OperationalError, DBAPIError) as exc:
                raise StoreError(f"cannot read the store at {self.url}: {exc.orig}") from exc

    @asynccontextmanager
    async def _write(self, *, lock: bool = True) -> AsyncIterator[AsyncConnection]:
        """A write transaction; on PostgreSQL holding the store's write lock unless ``lock`` is
        False, which only the writes the module's docstring names may ask for."""
        with anyio.CancelScope(shield=True):  # as in _read
            self.check_file()
            if self.read_only is not None:
                raise StoreError(
                    f"cannot write the store {self.where}: it is read-only here ({self.read_only}); "
                    "`runner runs`, `show`, `list` and `logs` can read it, this command needs to write it"
                )
            try:
                async with self._writer.begin() as conn:
                    if self._postgres and lock:
                        await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")
                    yield conn
            except (OperationalError, DBAPIError) as exc:
                raise StoreError(f"cannot write the store at {self.url}: {exc.orig}") from exc

    @property
    def postgres(self) -> bool:
        """Whether the store is a PostgreSQL database (else a SQLite file)."""
        return self._postgres

    @property
    def where(self) -> str:
        """The store as messages name it: a SQLite store's file, or its URL (no password)."""
        return str(self.path) if self.path is not None else self.url

    def watch_file(self) -> None:
        """Remember which file this process opened at the store's path (SQLite), so that
        ``check_file`` can tell when it is deleted or replaced."""
        if self.path is not None:
            try:
                found = os.stat(self.path)
            except OSError:  # not a plain path (a URI filename): nothing to watch
                return
            self._identity = (found.st_dev, found.st_ino)

    def check_file(self) -> None:
        """StoreFileChanged if the SQLite file opened is no longer the one at the store's path.

        A file deleted or replaced (renamed over, restored from a backup) under a running
        process stays open in it: its writes would go on into a file nobody reads, while
        everyone else sees the new one. So every read and write first looks (one ``stat``, a
        microsecond or two), and the daemon looks twice a second even while idle."""
        if self._identity is None or self.path is None:
            return
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            what = "deleted"
        except OSError as exc:
            what = f"made unreachable ({exc.strerror})"
        else:
            if (found.st_dev, found.st_ino) == self._identity:
                return
            what = "replaced"
        if not self._file_changed:
            self._file_changed = True
            remove_own_sidecars(self.path)
        raise StoreFileChanged(str(self.path), what)

    def write_patience(self, exc: StoreError) -> float:
        """How long a store write that failed with ``exc`` is worth trying again, in seconds: 0
        for a failure that cannot pass by waiting (no such table, a read-only, corrupt or
        replaced file, a constraint)."""
        cause = exc.__cause__
        if isinstance(exc, StoreFileChanged) or self.read_only is not None or not isinstance(cause, OperationalError):
            return 0.0
        if self._postgres:
            return OUTAGE_PATIENCE
        name = getattr(cause.orig, "sqlite_errorname", None)
        if name is None:  # a failure without SQLite's result code: taken as one that can pass
            return SQLITE_PATIENCE
        return SQLITE_PATIENCE if name.startswith(_PASSING_SQLITE) else 0.0

    async def ping(self) -> None:
        """Read one row: StoreError if the store cannot be read (for health checks)."""
        async with self._read() as conn:
            await conn.execute(text("SELECT 1"))

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine whose writes begin with BEGIN IMMEDIATE (runner's own)."""
        return self._writer

    def session_engine(self, task: str) -> AsyncEngine:
        """The engine for the ``AsyncSession`` of a run of ``task``: a pool of its own, and on
        SQLite deferred transactions that take the write lock at their first write."""
        if not self._postgres and self._engine.url.database in (None, "", ":memory:"):
            return self._writer  # a database in memory is one connection's: there is no other
        if self._sessions is None:
            # Unbounded overflow: a session waits for no other; open sessions are bounded by
            # the runs executing at once.
            engine = create_async_engine(self._engine.url, max_overflow=-1)
            if not self._postgres:
                configure_sqlite(engine)
            self._sessions = TaskSessions(engine)
        return self._sessions.engine_for(task)

    def session_holders(self) -> list[str]:
        """The tasks of this process whose session has a transaction open on SQLite (one of
        them may hold the write lock until it ends); none on PostgreSQL, where a session never
        takes runner's write lock."""
        return self._sessions.holders() if self._sessions is not None else []

    def data_version(self) -> int | None:
        """A number that changes whenever another connection commits to the store: SQLite's
        ``PRAGMA data_version`` on a connection kept for it (microseconds, no thread hop), so a
        poller can skip reading while nothing changed. None when it cannot tell (the store is
        not SQLite, or the file is busy this instant): then read."""
        path = sqlite_path(self.url)
        if path is None:
            return None
        try:
            if self._version_conn is None:
                # timeout 0: this runs on the event loop, which must never wait for a lock
                self._version_conn = sqlite3.connect(path, timeout=0, check_same_thread=False)
            version: int = self._version_conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.OperationalError:
            return None
        return version

    async def close(self) -> None:
        if self._version_conn is not None:
            self._version_conn.close()
        if self._sessions is not None:
            await self._sessions.dispose()
        await self._engine.dispose()

    def conninfo(self) -> str:
        """The libpq connection string of a PostgreSQL store, password included: for a client
        of the same database (the workers' queue), never for a message."""
        return self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
