"""``Store``: intent-named async methods over SQLAlchemy Core.

SQLite is used the way it works with several processes: WAL, ``synchronous=NORMAL``, a long busy
timeout, and ``BEGIN IMMEDIATE`` for every transaction that writes. Measured with 4 processes
doing read-modify-write on one WAL file: pysqlite's default transaction handling lost about 70%
of the updates without an error, a deferred BEGIN failed about 45% of the transactions at once
with "database is locked" (whatever the busy timeout), and BEGIN IMMEDIATE had neither. Readers
use a plain BEGIN. Transactions are kept short; none is held open while a task runs.

PostgreSQL (``postgresql+psycopg://``) gets the same schema and the same behaviour. Each of the
store's write transactions there first takes one transaction-level advisory lock
(``pg_advisory_xact_lock``), the counterpart of SQLite's BEGIN IMMEDIATE: store writes happen
one at a time, so every read-modify-write (a sync's plan, a lease takeover, replacing schedule
states) sees the state it changes, with no retry loop around a planner and no row locks to
get right for rows that do not exist yet (a new task, a first lease), which SELECT ... FOR
UPDATE cannot lock. It also keeps ``run_logs.id`` in commit order (see ``log_lines``).

Task sessions (``Store.session_engine``) are on an engine of their own (``_sessions.py``): they
never take the advisory lock (PostgreSQL locks their rows itself) and, on SQLite, take the
write lock only when they first write.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import bindparam, event, or_, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from runner.errors import RunNotFound, StoreError, StoreFileChanged, StoreVersionError
from runner.models import (
    LastRun,
    LogLine,
    Run,
    RunStatus,
    Source,
    StoredTask,
    TaskSpec,
    TaskType,
    new_run_id,
)
from runner.processes import HOST, PID, PID_STARTED, kill_orphaned_group, process_is_alive
from runner.records import (
    NO_PROCESS,
    Fire,
    JobArgs,
    LogChunk,
    QueuedRun,
    RunBatch,
    RunEnd,
    RunError,
    Written,
    next_attempt,
)
from runner.store import _tables as t
from runner.store._sessions import TaskSessions
from runner.sync import SyncPlan

CURRENT_VERSION = 5

_RUN_COLUMNS = (
    t.runs.c.id,
    t.runs.c.task,
    t.runs.c.type,
    t.runs.c.status,
    t.runs.c.attempt,
    t.runs.c.parameters,
    t.runs.c.trigger,
    t.runs.c.parent_id,
    t.runs.c.invocation,
    t.runs.c.scheduled_for,
    t.runs.c.queued_at,
    t.runs.c.started_at,
    t.runs.c.finished_at,
    t.runs.c.duration_s,
    t.runs.c.exit_code,
    t.runs.c.stdout,
    t.runs.c.stderr,
    t.runs.c.result_json,
    t.runs.c.error,
    t.runs.c.host,
    t.runs.c.revision,
    t.runs.c.git_commit,
    t.runs.c.queue,
)


def _run_from_row(row: Any, logs: tuple[LogLine, ...] = ()) -> Run:
    return Run(
        id=row.id,
        task=row.task,
        type=TaskType(row.type),
        status=RunStatus(row.status),
        attempt=row.attempt,
        parameters=json.loads(row.parameters),
        trigger=row.trigger,
        parent_id=row.parent_id,
        invocation=row.invocation,
        scheduled_for=row.scheduled_for,
        queued_at=row.queued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_s=row.duration_s,
        exit_code=row.exit_code,
        stdout=row.stdout,
        stderr=row.stderr,
        result=json.loads(row.result_json) if row.result_json is not None else None,
        error=json.loads(row.error) if row.error is not None else None,
        logs=logs,
        host=row.host or None,
        revision=row.revision,
        git_commit=row.git_commit,
        queue=row.queue,
    )


def _grouped_by_keys(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows split by their set of keys, so each group is one executemany."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


def _queued_row(run: QueuedRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "task": run.task,
        "type": run.type.value,
        "status": RunStatus.QUEUED.value,
        "attempt": run.attempt,
        "trigger": run.trigger,
        "parent_id": run.parent_id,
        "invocation": run.invocation,
        "scheduled_for": run.scheduled_for,
        "parameters": run.parameters_json,
        "queued_at": run.queued_at,
        "host": run.owner.host,
        "pid": run.owner.pid,
        "pid_started": run.owner.pid_started,
        "queue": run.queue,
        "revision": run.revision,
        "git_commit": run.git_commit,
    }


def _end_row(end: RunEnd) -> dict[str, Any]:
    """The fields of a run's row its end sets; those it leaves as queued are not among them."""
    row: dict[str, Any] = {
        "id": end.run_id,
        "status": end.status.value,
        "finished_at": end.finished_at,
        "duration_s": end.duration_s,
        "exit_code": end.exit_code,
        "stdout": end.stdout,
        "stderr": end.stderr,
        "error": _error_json(end.error),
    }
    if end.parameters_json is not None:
        row["parameters"] = end.parameters_json
    if end.result is not None:
        row["result_json"] = end.result.json
        row["result_pickle"] = end.result.pickled
    return row


def _log_row(chunk: LogChunk) -> dict[str, Any]:
    return {"run_id": chunk.run_id, "at": chunk.at, "stream": chunk.stream, "level": chunk.level, "message": chunk.message}


def _error_json(error: RunError | None) -> str | None:
    return json.dumps(error.to_json()) if error is not None else None


@dataclass(frozen=True)
class ScheduleState:
    """Where a task's schedule stands: kept in the store so restarts neither repeat nor drop."""

    task: str
    schedule: str  # the JSON of the schedule these times were computed for
    anchor: float
    next_fire_at: float
    last_fire_at: float | None = None


@dataclass(frozen=True)
class Lease:
    """Who holds a named lease (the daemon's), since when, and when it last said it was alive."""

    name: str
    host: str
    pid: int
    pid_started: float | None
    acquired_at: float
    heartbeat_at: float


class _Taken(Exception):
    """Rolls back a claim on runs that are not all free to take."""


class LeaseHeld(StoreError):
    """Another live process holds the lease."""

    def __init__(self, holder: Lease) -> None:
        super().__init__(f"lease {holder.name!r} is held by pid {holder.pid} on {holder.host}")
        self.holder = holder


@dataclass(frozen=True)
class Trigger:
    """A request to the daemon to run a task (``runner trigger``), not yet taken up."""

    run_id: str
    task: str
    parameters: dict[str, Any]
    with_needs: bool
    requested_at: float


@dataclass(frozen=True)
class Recovery:
    """How a stalled job was settled (``Store.recover_job``)."""

    job_id: int
    requeued: bool = False  # no worker had taken its runs up: queued again as they were
    interrupted: list[str] = field(default_factory=list)
    retried: list[tuple[str, str]] = field(default_factory=list)  # (interrupted run, its retry)
    # The process groups of its interrupted shell runs on this host (pgid, its start time):
    # what its tasks left running, for the caller to kill.
    kill: list[tuple[int, float | None]] = field(default_factory=list)


@dataclass(frozen=True)
class LogEntry:
    """One row of a run's log: a line of its ``ctx.logger`` (``stream`` "log"), or a chunk of
    its stdout or stderr as it was streamed (``level`` None; "warning" for runner's note that
    the stream stopped at the output cap). ``id`` grows with every row written."""

    id: int
    run_id: str
    task: str
    at: float
    stream: str
    level: str | None
    message: str


_UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
# The same, for statements run many times over (an expanding IN cannot be), as literal SQL: bound
# values would be processed again for every row.
_unfinished = text(f"runs.status IN ('{RunStatus.QUEUED.value}', '{RunStatus.RUNNING.value}')")

BUSY_TIMEOUT_MS = 30_000
PG_WRITE_LOCK = 0x72756E6E6572  # "runner": the advisory lock key of the store's writers
WRITER_IDLE_LIMIT = "10s"  # PostgreSQL: how long a write transaction may wait on its client
JOB_TASK = "runner.run"
_FETCH_PLAN = "plan_cache_mode=force_custom_plan"  # the queue's name for the one kind of job runner defers: run a workflow

def _add_invocation(sync_conn: Any) -> None:
    from sqlalchemy import Index

    sync_conn.execute(text("ALTER TABLE runs ADD COLUMN invocation VARCHAR(32)"))
    Index("runs_invocation", t.runs.c.invocation).create(sync_conn)


def _add_daemon_tables(sync_conn: Any) -> None:
    sync_conn.execute(text("ALTER TABLE run_logs ADD COLUMN stream VARCHAR(8) NOT NULL DEFAULT 'log'"))
    sync_conn.execute(text("ALTER TABLE runs ADD COLUMN scheduled_for FLOAT"))
    sync_conn.execute(text("ALTER TABLE runs ADD COLUMN pgid INTEGER"))
    sync_conn.execute(text("ALTER TABLE runs ADD COLUMN pgid_started FLOAT"))
    t.metadata.create_all(sync_conn, tables=[t.schedules, t.leases, t.triggers])


def _add_remote_columns(sync_conn: Any) -> None:
    from sqlalchemy import Index

    for column in ("revision VARCHAR(32)", "git_commit VARCHAR(64)", "queue VARCHAR(64)", "job_id BIGINT"):
        sync_conn.execute(text(f"ALTER TABLE runs ADD COLUMN {column}"))
    Index("runs_job", t.runs.c.job_id).create(sync_conn)
    Index("runs_parent", t.runs.c.parent_id).create(sync_conn)


# MIGRATIONS[N - 1] takes a store from version N - 1 to N. A new store (version 0) is created at
# the current version in one step, so MIGRATIONS[0] creates everything.
MIGRATIONS: list[Callable[[Any], None]] = [
    t.metadata.create_all,
    lambda sync_conn: t.metadata.create_all(sync_conn, tables=[t.task_files]),
    _add_invocation,
    _add_daemon_tables,
    _add_remote_columns,
]


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


def _shown(url: str) -> str:
    """The URL as messages show it: without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

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


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and url[len(prefix) :] not in ("", ":memory:"):
        return Path(url[len(prefix) :].split("?", 1)[0])
    return None


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode (it stays so; later connections find it done).

    Switching a new database to WAL needs it to itself for a moment; when several processes
    open a new store at once, one of them can be told "database is locked" (seen when two
    `runner run`s start together on a loaded machine): so try again, up to the busy timeout.
    """
    import sqlite3

    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            if cursor.fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite(engine: AsyncEngine, *, read_only: bool = False) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that BEGIN IMMEDIATE below is what runs.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not read_only:  # a reader takes the journal mode the file has
            _use_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        writes = conn.get_execution_options().get("runner_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _unwritable(path: Path) -> str | None:
    """Why this process cannot write the SQLite file at ``path`` (an existing one), or None.

    SQLite writes the file and, next to it, its ``-wal`` and ``-shm`` files (created and removed
    as connections come and go): it needs write access to both the file and its directory.
    ``os.access`` answers for this process as the kernel would, so root is told no only where
    even root may not write (a read-only mount, ``chattr +i``)."""
    for where, what in ((path, "the file"), (path.parent, f"its directory {path.parent}")):
        if not os.access(where, os.W_OK):
            try:
                on_read_only_mount = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
            except OSError:
                on_read_only_mount = False
            return f"{what} is on a read-only file system" if on_read_only_mount else f"no write permission on {what}"
    return None


def _remove_own_sidecars(path: Path) -> None:
    """Remove the ``-wal`` and ``-shm`` files at ``path`` that this process has open: once the
    database file at ``path`` was deleted or replaced, they belong to the file this process
    opened, not to the one there now, and SQLite would take them for that one's. Measured with
    SQLite 3.40: a backup moved over a store whose process had written after the backup was
    read with those writes in it, from the old ``-wal``; a new file at the path of a deleted one
    gave "disk I/O error". SQLite itself leaves them there when the file was moved (and does
    not remove a new file's ``-wal`` and ``-shm`` when it closes its connections to the old
    one). Only files this process has open are removed (the same inode as one of its file
    descriptors, from ``/proc/self/fd``: Linux), never a new file's own."""
    wanted = {f"{path}-wal", f"{path}-shm"}
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target not in wanted:
                continue
            opened, there = os.stat(f"/proc/self/fd/{fd}"), os.stat(target)
            if (opened.st_dev, opened.st_ino) == (there.st_dev, there.st_ino):
                os.unlink(target)
        except OSError:  # closed meanwhile, or gone already
            continue
        wanted.discard(target)


def _reader_uri(path: Path) -> str:
    """The SQLite URI that reads the store at ``path`` without writing it.

    ``mode=ro`` reads a WAL database only if its ``-shm`` file exists or can be created
    (SQLite 3.22 and later); when neither holds (a store no process has open, in a directory
    this process cannot write), ``immutable=1`` reads it with no locks and no ``-shm``, trusting
    that nobody writes it meanwhile: a reader may then see a write half done by another
    process, which ``runner runs`` and the like can live with."""
    shm = path.with_name(path.name + "-shm")
    can_create = os.access(path.parent, os.W_OK | os.X_OK)
    mode = "mode=ro" if shm.exists() or can_create else "immutable=1"
    return f"{path.as_uri()}?{mode}"


def _inspect_sqlite_file(path: Path) -> str | None:
    """Check the SQLite file at ``path`` before runner opens it: refuse (StoreError) a SQLite
    database that is not a runner store, so that none of runner's tables are added to some
    other program's database; return why this process cannot write it (None if it can). A new
    path or an empty file is a new store; a file that is not a database at all is left to the
    connection to report, as before."""
    import sqlite3

    try:
        if path.stat().st_size == 0:
            return None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot open the store {path}: {exc.strerror}") from exc
    read_only = _unwritable(path)
    try:
        # Read-only, so that nothing of the file changes, not even its journal mode.
        with contextlib.closing(sqlite3.connect(_reader_uri(path), uri=True)) as conn:
            tables = sorted(
                name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if not name.startswith("sqlite_")
            )
    except sqlite3.Error:
        return read_only
    if tables and "schema_version" not in tables:
        shown = ", ".join(tables[:10]) + (f" and {len(tables) - 10} more" if len(tables) > 10 else "")
        raise StoreError(
            f"{path} is a SQLite database but not a runner store (it has tables {shown} and no "
            "schema_version); point --db at a new file or a runner store"
        )
    return read_only


class Store:
    """Tasks and runs, kept in one database. Open with ``open_store``."""

    def __init__(self, engine: AsyncEngine, url: str, *, read_only: str | None = None) -> None:
        self.url = _shown(url)
        self.path = _sqlite_path(url)  # a SQLite store's file; None for a server
        self.read_only = read_only  # why this process cannot write the store (None: it can)
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._file_changed = False
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._writer = engine.execution_options(runner_write=True)
        # The specs built by the last full read of the tasks, by name: a daemon reads them all
        # after every reload, and rebuilding 10,000 costs a fifth of a second.
        self._specs: dict[str, TaskSpec] = {}
        self._version_conn: Any = None  # a plain sqlite3 connection for data_version()
        self._sessions: TaskSessions | None = None  # created when a task first asks for a session

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
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        with anyio.CancelScope(shield=True):  # as in _read
            self.check_file()
            if self.read_only is not None:
                raise StoreError(
                    f"cannot write the store {self.where}: it is read-only here ({self.read_only}); "
                    "`runner runs`, `show`, `list` and `logs` can read it, this command needs to write it"
                )
            try:
                async with self._writer.begin() as conn:
                    if self._postgres:
                        # A writer that stops in the middle (a paused process, a lost host)
                        # must not hold every other writer up: the server ends its session.
                        await conn.exec_driver_sql(
                            f"SELECT set_config('idle_in_transaction_session_timeout', '{WRITER_IDLE_LIMIT}', true),"
                            f" pg_advisory_xact_lock({PG_WRITE_LOCK})"
                        )
                    yield conn
            except (OperationalError, DBAPIError) as exc:
                raise StoreError(f"cannot write the store at {self.url}: {exc.orig}") from exc

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
            _remove_own_sidecars(self.path)
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

    async def _prepare(self) -> None:
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

    async def tasks(
        self, *, include_removed: bool = True, task_type: TaskType | None = None
    ) -> dict[str, StoredTask]:
        """Every task the store knows, by name (removed ones too unless told otherwise), or
        those of one type."""
        async with self._read() as conn:
            return await self._tasks(conn, include_removed=include_removed, task_type=task_type)

    async def _tasks(
        self, conn: AsyncConnection, *, include_removed: bool, task_type: TaskType | None = None
    ) -> dict[str, StoredTask]:
        # Plain SQL and plain tuples: for 10,000 tasks, SQLAlchemy's row objects cost three
        # times the query (a daemon reads them all after every reload).
        # Sorted here, not by ORDER BY: PostgreSQL would sort by its collation, not by code point.
        conditions, params = [], {}
        if not include_removed:
            conditions.append("NOT removed")
        if task_type is not None:
            conditions.append("type = %(type)s" if conn.dialect.paramstyle == "pyformat" else "type = :type")
            params["type"] = task_type.value
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        result = await conn.exec_driver_sql(
            f"SELECT name, definition, source, enabled, disabled_reason, removed FROM tasks{where}",
            params,
        )
        found = {}
        known = self._specs
        specs: dict[str, TaskSpec] = {}
        rows: list[Any] = sorted(result.all(), key=lambda row: row[0])
        for name, definition, source, enabled, reason, removed in rows:
            spec = known.get(name)
            if spec is None or spec.definition_json != definition or str(spec.source) != source:
                path, _, line = source.rpartition(":")
                spec = TaskSpec.from_definition(name, Source(path, int(line)), json.loads(definition))
                spec.__dict__["definition_json"] = definition  # the cached_property, known already
            specs[name] = spec
            found[name] = StoredTask(name, spec, bool(enabled), reason, bool(removed))
        if include_removed and task_type is None:
            self._specs = specs  # what the next full read will most likely find again
        return found

    def remember_specs(self, specs: Iterable[TaskSpec]) -> None:
        """Let the next full read of the tasks reuse these specs where the stored definition is
        the same, so that a daemon's parsed files and its engine share one copy of each."""
        for spec in specs:
            self._specs[spec.name] = spec

    async def task_files(self) -> dict[str, str]:
        """The digest of each task file the stored tasks were last synced from, by path."""
        async with self._read() as conn:
            return await self._task_files(conn)

    async def _task_files(self, conn: AsyncConnection) -> dict[str, str]:
        rows = await conn.execute(select(t.task_files.c.path, t.task_files.c.digest))
        return {path: digest for path, digest in rows}

    async def sync_tasks(self, planner: Callable[[dict[str, StoredTask], dict[str, str]], SyncPlan]) -> SyncPlan:
        """Under the write lock, plan with ``planner(stored_tasks, stored_digests)`` and apply the
        plan, all in one transaction."""
        async with self._write() as conn:
            plan = planner(await self._tasks(conn, include_removed=True), await self._task_files(conn))
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
                        "definition": w.spec.definition_json,
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
                        "b_definition": w.spec.definition_json,
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
        if plan.digests is not None:
            await conn.execute(t.task_files.delete())
            if plan.digests:
                await conn.execute(
                    t.task_files.insert(), [{"path": p, "digest": d} for p, d in plan.digests.items()]
                )

    # -- runs -----------------------------------------------------------------------------------

    async def write_runs(self, batch: RunBatch) -> Written:
        """Apply a batch of run writes in one transaction: inserts, then starts, then finishes.

        A fire is a compare-and-set: it moves its schedule on only if the schedule still
        stands at the fire's time (its ``last_fire_at``). Otherwise another daemon fired it
        first, and the runs queued with it are not written; the rest of the batch is. A run's
        final status is written once: a finish of a run that already has one (a worker taken
        for dead, whose run was marked interrupted and retried elsewhere) is not written, and
        neither is the retry it queues. Returns what was not written."""
        try:
            return await self._write_runs(batch, fire_by_fire=False)
        except _WhichFire:
            return await self._write_runs(batch, fire_by_fire=True)

    async def _write_runs(self, batch: RunBatch, *, fire_by_fire: bool) -> Written:
        if batch.empty:
            return Written()
        inserts, jobs = batch.inserts, batch.jobs
        async with self._write() as conn:
            lost = await self._move_schedules(conn, batch.fires, fire_by_fire) if batch.fires else []
            if lost:
                dropped = {run_id for fire in batch.fires if fire.task in lost for run_id in fire.runs}
                inserts = [run for run in inserts if run.id not in dropped]
                jobs = [job for job in jobs if not dropped.intersection(job.runs.values())]
            if inserts:
                await conn.execute(t.runs.insert(), self._clean([_queued_row(run) for run in inserts]))
            if batch.starts:
                await conn.execute(
                    update(t.runs)
                    .where(t.runs.c.id == bindparam("b_id"), _unfinished)
                    .values(status=RunStatus.RUNNING.value, started_at=bindparam("b_started_at")),
                    [{"b_id": run_id, "b_started_at": at} for run_id, at in batch.starts],
                )
            if batch.groups:
                await conn.execute(
                    update(t.runs)
                    .where(t.runs.c.id == bindparam("b_id"))
                    .values(pgid=bindparam("b_pgid"), pgid_started=bindparam("b_pgid_started")),
                    [{"b_id": i, "b_pgid": g, "b_pgid_started": s} for i, g, s in batch.groups],
                )
            if jobs:
                await self._defer(conn, jobs)
            for fields in _grouped_by_keys(self._clean([_end_row(end) for end in batch.finishes])):
                await conn.execute(
                    update(t.runs)
                    .where(t.runs.c.id == bindparam("b_id"), _unfinished)
                    .values({k: bindparam(f"b_{k}") for k in fields[0] if k != "id"}),
                    [{f"b_{k}": v for k, v in row.items()} for row in fields],
                )
            unwritten = await self._queue_retries(conn, batch) if batch.retries else []
            if batch.logs:
                await conn.execute(t.run_logs.insert(), self._clean([_log_row(chunk) for chunk in batch.logs]))
            if batch.claimed:
                await conn.execute(t.triggers.delete().where(t.triggers.c.run_id.in_(batch.claimed)))
        return Written(lost, unwritten)

    def _clean(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows``, on PostgreSQL with NUL characters in their text replaced by U+FFFD: its
        text cannot hold them, and one stray NUL in a run's output must not lose its record."""
        if not self._postgres:
            return rows
        return [
            {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in row.items()}
            if any(isinstance(v, str) and "\x00" in v for v in row.values())
            else row
            for row in rows
        ]

    async def _queue_retries(self, conn: AsyncConnection, batch: RunBatch) -> list[str]:
        """Insert the retries whose parent's end was written (it has the status and end time
        this batch gave it); the ids of the others."""
        ended = {end.run_id: (end.status.value, end.finished_at) for end in batch.finishes}
        parents = [run.parent_id for run in batch.retries]
        found = await conn.execute(
            select(t.runs.c.id, t.runs.c.status, t.runs.c.finished_at).where(t.runs.c.id.in_(parents))
        )
        written = {run_id for run_id, status, at in found if ended.get(run_id) == (status, at)}
        keep = [run for run in batch.retries if run.parent_id in written]
        if keep:
            await conn.execute(t.runs.insert(), self._clean([_queued_row(run) for run in keep]))
        return [run.id for run in batch.retries if run.parent_id not in written]

    async def _move_schedules(self, conn: AsyncConnection, fires: list[Fire], fire_by_fire: bool) -> list[str]:
        """Move each fire's schedule on, if it still stands at the fire's time; return the
        tasks of the fires whose schedule did not. Several fires go in one statement, as
        before the compare-and-set; if one of them was lost (rare), ``_WhichFire`` rolls the
        batch back, to be written again ``fire_by_fire``."""
        move = (
            update(t.schedules)
            .where(t.schedules.c.task == bindparam("b_task"), t.schedules.c.next_fire_at == bindparam("b_last"))
            .values(next_fire_at=bindparam("b_next"), last_fire_at=bindparam("b_last"))
        )
        params = [{"b_task": f.task, "b_next": f.next_fire_at, "b_last": f.last_fire_at} for f in fires]
        if fire_by_fire or len(fires) == 1:
            lost = []
            for fire, one in zip(fires, params, strict=True):
                if (await conn.execute(move, one)).rowcount != 1:
                    lost.append(fire.task)
            return lost
        if (await conn.execute(move, params)).rowcount != len(fires):
            raise _WhichFire
        return []

    async def run(self, run_id: str) -> Run:
        """One run with its log lines (not its streamed output: the record has that); RunNotFound
        if there is none with that id."""
        async with self._read() as conn:
            row = (await conn.execute(select(*_RUN_COLUMNS).where(t.runs.c.id == run_id))).first()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}; `runner runs` lists recent ones")
            logs = await conn.execute(
                select(t.run_logs.c.at, t.run_logs.c.level, t.run_logs.c.message)
                .where(t.run_logs.c.run_id == run_id, t.run_logs.c.stream == "log")
                .order_by(t.run_logs.c.id)
            )
            return _run_from_row(row, tuple(LogLine(*line) for line in logs))

    async def run_status(self, run_id: str) -> tuple[str, RunStatus]:
        """A run's task and status, read cheaply (for following it); RunNotFound if none."""
        async with self._read() as conn:
            row = (await conn.execute(select(t.runs.c.task, t.runs.c.status).where(t.runs.c.id == run_id))).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}; `runner runs` lists recent ones")
        return row.task, RunStatus(row.status)

    async def log_lines(
        self, run_id: str | None = None, *, task: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        """The log rows (logger lines and streamed output) with an id above ``after``, oldest
        first: of the run ``run_id``, or of every run of ``task``. Rows are committed in id
        order, so the last id seen is where the next call picks up: on SQLite because writes
        are serialised; on PostgreSQL, where a sequence hands out ids before commit, because
        run_logs are only written under the store's write lock, which is released after the
        commit is visible."""
        query = (
            select(
                t.run_logs.c.id,
                t.run_logs.c.run_id,
                t.runs.c.task,
                t.run_logs.c.at,
                t.run_logs.c.stream,
                t.run_logs.c.level,
                t.run_logs.c.message,
            )
            .join(t.runs, t.runs.c.id == t.run_logs.c.run_id)
            .where(t.run_logs.c.id > after)
            .order_by(t.run_logs.c.id)
        )
        if run_id is not None:
            query = query.where(t.run_logs.c.run_id == run_id)
        if task is not None:
            query = query.where(t.runs.c.task == task)
        if limit is not None:
            query = query.limit(limit)
        async with self._read() as conn:
            return [
                LogEntry(row.id, row.run_id, row.task, row.at, row.stream, row.level or None, row.message)
                for row in await conn.execute(query)
            ]

    async def last_log_id(self) -> int:
        """The id of the newest log row of any run (0 when there is none): where following
        from now on starts."""
        from sqlalchemy import func

        async with self._read() as conn:
            return int((await conn.execute(select(func.max(t.run_logs.c.id)))).scalar() or 0)

    async def runs(
        self,
        *,
        task: str | None = None,
        status: str | None = None,
        invocation: str | None = None,
        limit: int | None = 20,
    ) -> list[Run]:
        """Run history, newest first."""
        query = select(*_RUN_COLUMNS).order_by(t.runs.c.queued_at.desc(), t.runs.c.id.desc())
        if task is not None:
            query = query.where(t.runs.c.task == task)
        if invocation is not None:
            query = query.where(t.runs.c.invocation == invocation)
        if status is not None:
            query = query.where(t.runs.c.status == status)
        if limit is not None:
            query = query.limit(limit)
        async with self._read() as conn:
            return [_run_from_row(row) for row in await conn.execute(query)]

    async def load_result(self, run_id: str) -> Any:
        """The original object a python run returned, unpickled (its JSON-safe copy if none)."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(t.runs.c.result_pickle, t.runs.c.result_json).where(t.runs.c.id == run_id)
                )
            ).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        if row.result_pickle is not None:
            return pickle.loads(row.result_pickle)
        return json.loads(row.result_json) if row.result_json is not None else None

    async def mark_interrupted(self, host: str, is_alive: Callable[[int, float | None], bool]) -> list[str]:
        """Mark the unfinished runs of dead processes on ``host`` interrupted, kill what is left
        of their shell tasks' process groups, and return their ids.

        Not the runs of workers (sent to a queue): ``recover_job`` settles those, marking them
        interrupted in the transaction that queues their retries, so that whoever waits for a
        run never sees it interrupted before its retry exists."""
        query = select(t.runs.c.id, t.runs.c.pid, t.runs.c.pid_started, t.runs.c.pgid, t.runs.c.pgid_started).where(
            t.runs.c.status.in_(_UNFINISHED), t.runs.c.host == host, t.runs.c.queue.is_(None)
        )
        async with self._read() as conn:
            dead = [row for row in await conn.execute(query) if not is_alive(row.pid, row.pid_started)]
        if not dead or self.read_only is not None:  # a reader that cannot write leaves them
            return []
        now = time.time()
        async with self._write() as conn:
            await conn.execute(
                update(t.runs)
                .where(t.runs.c.id.in_([row.id for row in dead]), t.runs.c.status.in_(_UNFINISHED))
                .values(
                    status=RunStatus.INTERRUPTED.value,
                    finished_at=now,
                    error=_error_json(RunError("Interrupted", "the process running it died")),
                )
            )
        for row in dead:
            if row.pgid is not None and host == HOST:
                kill_orphaned_group(row.pgid, row.pgid_started)
        return [row.id for row in dead]

    async def unfinished(self, tasks: list[str]) -> dict[str, list[tuple[str, int, float | None]]]:
        """The runs of these tasks that are queued or running, by task: (host, pid, pid_started)
        of the process running each."""
        query = select(t.runs.c.task, t.runs.c.host, t.runs.c.pid, t.runs.c.pid_started).where(
            t.runs.c.status.in_((RunStatus.QUEUED.value, RunStatus.RUNNING.value)), t.runs.c.task.in_(tasks)
        )
        found: dict[str, list[tuple[str, int, float | None]]] = {}
        async with self._read() as conn:
            for task, host, pid, started in await conn.execute(query):
                found.setdefault(task, []).append((host, pid, started))
        return found

    async def started_runs_interrupted(self, host: str, pid: int) -> list[Run]:
        """The runs of process ``pid`` on ``host`` that started and were then interrupted."""
        query = select(*_RUN_COLUMNS).where(
            t.runs.c.status == RunStatus.INTERRUPTED.value,
            t.runs.c.host == host,
            t.runs.c.pid == pid,
            t.runs.c.started_at.is_not(None),
        )
        async with self._read() as conn:
            return [_run_from_row(row) for row in await conn.execute(query)]

    # -- schedules ------------------------------------------------------------------------------

    async def schedule_states(self) -> dict[str, ScheduleState]:
        async with self._read() as conn:
            rows = await conn.execute(select(t.schedules))
            return {row.task: ScheduleState(**row._mapping) for row in rows}

    async def save_schedule_states(self, states: list[ScheduleState], drop: list[str]) -> None:
        """Insert or replace ``states`` and forget the schedules of the tasks in ``drop``."""
        if not states and not drop:
            return
        names = [s.task for s in states] + drop
        async with self._write() as conn:
            await conn.execute(t.schedules.delete().where(t.schedules.c.task.in_(names)))
            if states:
                await conn.execute(t.schedules.insert(), [vars(s) for s in states])

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(
        self, name: str, *, host: str, pid: int, pid_started: float | None, is_stale: Callable[[Lease], bool]
    ) -> Lease | None:
        """Take the lease ``name``; LeaseHeld if a holder that is not ``is_stale`` has it.

        Returns the stale lease that was taken over, if there was one.
        """
        now = time.time()
        async with self._write() as conn:
            row = (await conn.execute(select(t.leases).where(t.leases.c.name == name))).first()
            previous = Lease(**row._mapping) if row is not None else None
            if previous is not None:
                if not is_stale(previous) and (previous.host, previous.pid) != (host, pid):
                    raise LeaseHeld(previous)
                await conn.execute(t.leases.delete().where(t.leases.c.name == name))
            await conn.execute(
                t.leases.insert().values(
                    name=name, host=host, pid=pid, pid_started=pid_started, acquired_at=now, heartbeat_at=now
                )
            )
        return previous

    async def renew_lease(self, name: str, *, host: str, pid: int) -> bool:
        """Say the holder is alive; False if the lease is no longer this holder's."""
        async with self._write() as conn:
            result = await conn.execute(
                update(t.leases)
                .where(t.leases.c.name == name, t.leases.c.host == host, t.leases.c.pid == pid)
                .values(heartbeat_at=time.time())
            )
            return bool(result.rowcount)

    async def release_lease(self, name: str, *, host: str, pid: int) -> None:
        async with self._write() as conn:
            await conn.execute(
                t.leases.delete().where(t.leases.c.name == name, t.leases.c.host == host, t.leases.c.pid == pid)
            )

    async def lease(self, name: str) -> Lease | None:
        async with self._read() as conn:
            row = (await conn.execute(select(t.leases).where(t.leases.c.name == name))).first()
            return Lease(**row._mapping) if row is not None else None

    # -- triggers -------------------------------------------------------------------------------

    async def add_trigger(self, trigger: Trigger) -> None:
        async with self._write() as conn:
            await conn.execute(
                t.triggers.insert().values(
                    run_id=trigger.run_id,
                    task=trigger.task,
                    parameters=json.dumps(trigger.parameters),
                    with_needs=trigger.with_needs,
                    requested_at=trigger.requested_at,
                )
            )

    async def triggers(self) -> list[Trigger]:
        """Triggers not yet taken up, oldest first."""
        async with self._read() as conn:
            rows = await conn.execute(select(t.triggers).order_by(t.triggers.c.requested_at))
            return [
                Trigger(r.run_id, r.task, json.loads(r.parameters), bool(r.with_needs), r.requested_at)
                for r in rows
            ]

    # -- runs for workers (PostgreSQL; remote.py) -----------------------------------------------

    async def ensure_queue(self) -> None:
        """Install the job queue's tables (procrastinate's schema) in this store, once."""
        if not self._postgres:
            raise StoreError(
                f"runs for workers need a PostgreSQL store (--db postgresql://...); {self.url} is SQLite"
            )
        # Not to_regclass(): it reads the catalog cache, which a wait for the write lock does not
        # refresh, so behind another process installing the schema it still said "none".
        installed = (
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class"
            " WHERE relname = 'procrastinate_jobs' AND pg_catalog.pg_table_is_visible(oid))"
            " AND EXISTS (SELECT FROM pg_catalog.pg_proc WHERE proname = 'procrastinate_fetch_job_v2'"
            f" AND '{_FETCH_PLAN}' = ANY(proconfig))"
        )
        async with self._read() as conn:
            if (await conn.exec_driver_sql(installed)).scalar():
                return
        import psycopg
        from procrastinate.schema import SchemaManager

        async with self._write() as conn:
            if not (await conn.exec_driver_sql(installed)).scalar():
                # Straight to psycopg: the script is many statements, with no parameters.
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                try:
                    tables = "SELECT to_regclass('procrastinate_jobs') IS NOT NULL"
                    if not (await (await raw.execute(tables)).fetchone() or (False,))[0]:
                        await raw.execute(SchemaManager.get_schema())
                    # The fetch's plan, cached per connection while the queue was near empty,
                    # scans the whole table once a burst comes (measured: 19-34 runs/s for a
                    # minute, until autovacuum analyzes it): plan each fetch afresh.
                    await raw.execute(
                        "ALTER FUNCTION procrastinate_fetch_job_v2(character varying[], bigint)"
                        f" SET {_FETCH_PLAN.replace('=', ' = ')}"
                    )
                except psycopg.Error as exc:
                    raise StoreError(f"cannot install the job queue in the store at {self.url}: {exc}") from exc

    async def _defer(self, conn: AsyncConnection, jobs: list[JobArgs]) -> None:
        """Put ``jobs`` on the queue, in the transaction that queues their runs, and note each
        job's id on its runs (a job carries one workflow: the runs of one invocation)."""
        ids = (
            await conn.execute(
                text(
                    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY("
                    "SELECT CAST(ROW(q, :task, 0, NULL, NULL, a, NULL) AS procrastinate_job_to_defer_v1)"
                    " FROM unnest(CAST(:queues AS varchar[]), CAST(:args AS jsonb[])) AS u(q, a))))"
                ),
                {
                    "task": JOB_TASK,
                    "queues": [job.queue for job in jobs],
                    "args": [json.dumps(job.to_json()) for job in jobs],
                },
            )
        ).scalars().all()
        await conn.execute(
            text(
                "UPDATE runs SET job_id = j.id FROM procrastinate_jobs j"
                " WHERE j.id = ANY(:ids) AND runs.invocation = j.args->>'invocation'"
            ),
            {"ids": list(ids)},
        )

    async def claim_runs(
        self,
        run_ids: list[str],
        *,
        revision: str | None,
        git_commit: str | None,
        notes: Sequence[LogChunk] = (),
    ) -> bool:
        """Take up a job's queued runs for this process, with ``notes`` for their logs; False if
        they are not all waiting for a worker any more (taken up already, or cancelled): then
        nothing changes."""
        try:
            async with self._write() as conn:
                result = await conn.execute(
                    update(t.runs)
                    .where(t.runs.c.id.in_(run_ids), t.runs.c.status == RunStatus.QUEUED.value, t.runs.c.host == "")
                    .values(host=HOST, pid=PID, pid_started=PID_STARTED, revision=revision, git_commit=git_commit)
                )
                if result.rowcount != len(run_ids):
                    raise _Taken
                if notes:
                    await conn.execute(t.run_logs.insert(), [_log_row(note) for note in notes])
        except _Taken:
            return False
        return True

    async def finish_queued(self, run_ids: list[str], status: RunStatus, error: RunError) -> list[str]:
        """End the runs among ``run_ids`` that are still queued, with ``status`` and ``error``;
        their ids."""
        async with self._write() as conn:
            rows = await conn.execute(
                update(t.runs)
                .where(t.runs.c.id.in_(run_ids), t.runs.c.status == RunStatus.QUEUED.value)
                .values(status=status.value, finished_at=time.time(), error=_error_json(error))
                .returning(t.runs.c.id)
            )
            return list(rows.scalars())

    async def retry_of(self, run_id: str) -> str | None:
        """The id of the run that retries ``run_id``, if there is one."""
        query = select(t.runs.c.id).where(t.runs.c.parent_id == run_id, t.runs.c.trigger == "retry")
        async with self._read() as conn:
            return (await conn.execute(query)).scalar()

    async def job_id(self, run_id: str) -> int | None:
        """The id of the queue's job that carries a run to a worker; None for a run not sent."""
        async with self._read() as conn:
            return (await conn.execute(select(t.runs.c.job_id).where(t.runs.c.id == run_id))).scalar()

    async def cancel_job(self, job_id: int) -> bool:
        """Cancel the workflow a job carries: at once if no worker has taken it up (its queued
        runs are recorded cancelled; True), else by asking its worker to stop it (False)."""
        async with self._write() as conn:
            gone = (
                await conn.execute(
                    text("DELETE FROM procrastinate_jobs WHERE id = :id AND status = 'todo' RETURNING id"),
                    {"id": job_id},
                )
            ).first()
            if gone is not None:
                error = RunError("Cancelled", "stopped on request before it started")
                await conn.execute(
                    update(t.runs)
                    .where(t.runs.c.job_id == job_id, t.runs.c.status == RunStatus.QUEUED.value)
                    .values(status=RunStatus.CANCELLED.value, finished_at=time.time(), error=_error_json(error))
                )
                return True
            await conn.execute(text("SELECT procrastinate_cancel_job_v1(:id, true, false)"), {"id": job_id})
            return False

    async def stalled_jobs(
        self, stale_after: float, is_alive: Callable[[int, float | None], bool]
    ) -> list[int]:
        """Jobs being worked on by a worker that is gone: one whose runs belong to a dead
        process on this host, or whose worker has not beaten its heart for ``stale_after``
        seconds (or was pruned for that)."""
        async with self._read() as conn:
            silent = await conn.execute(
                text(
                    "SELECT j.id FROM procrastinate_jobs j"
                    " LEFT JOIN procrastinate_workers w ON w.id = j.worker_id"
                    " WHERE j.status = 'doing' AND j.task_name = :task"
                    " AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => :stale))"
                ),
                {"task": JOB_TASK, "stale": stale_after},
            )
            found = set(silent.scalars())
            here = await conn.execute(
                text(
                    # By invocation: with the retries its worker queued, which have no job id.
                    "SELECT DISTINCT j.id, r.pid, r.pid_started FROM procrastinate_jobs j"
                    " JOIN runs r ON r.invocation = j.args->>'invocation'"
                    " WHERE j.status = 'doing' AND j.task_name = :task AND r.host = :host"
                ),
                {"task": JOB_TASK, "host": HOST},
            )
            found.update(job for job, pid, started in here if not is_alive(pid, started))
        return sorted(found)

    async def recover_job(self, job_id: int, left: Callable[[str], int | None]) -> Recovery | None:
        """Take a stalled job off the queue and settle its runs (those it carried, and the
        retries its worker queued for them), in one transaction: never taken up, they are
        queued again as they were; else the unfinished ones are marked interrupted, and each
        that had started gets another attempt (a job of its own) if its task has one left
        (``left(task)``: the task's retries, None if it is gone). None if another process
        settled it."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    text("DELETE FROM procrastinate_jobs WHERE id = :id AND status = 'doing' RETURNING queue_name, args"),
                    {"id": job_id},
                )
            ).first()
            if row is None:
                return None
            args = JobArgs.from_json(row.args, queue=row.queue_name)
            runs = (
                await conn.execute(
                    select(*_RUN_COLUMNS, t.runs.c.pgid, t.runs.c.pgid_started).where(
                        # With the retries its worker queued itself: they share the invocation.
                        or_(t.runs.c.id.in_(list(args.runs.values())), t.runs.c.invocation == args.invocation)
                    )
                )
            ).all()
            if all(run.host == "" for run in runs):
                await self._defer(conn, [args])
                return Recovery(job_id, requeued=True)
            now = time.time()
            error = RunError("Interrupted", "the worker running it died")
            interrupted = (
                await conn.execute(
                    update(t.runs)
                    .where(t.runs.c.id.in_([run.id for run in runs]), t.runs.c.status.in_(_UNFINISHED))
                    .values(status=RunStatus.INTERRUPTED.value, finished_at=now, error=_error_json(error))
                    .returning(t.runs.c.id)
                )
            ).scalars().all()
            retried: list[tuple[str, str]] = []
            jobs: list[JobArgs] = []
            retries: list[QueuedRun] = []
            for run in runs:
                if run.started_at is None or run.status not in (*_UNFINISHED, RunStatus.INTERRUPTED.value):
                    continue
                number = next_attempt(RunStatus.INTERRUPTED, run.attempt, left(run.task))
                if number is None:
                    continue
                retry = QueuedRun(
                    id=new_run_id(), task=run.task, type=TaskType(run.type), attempt=number, trigger="retry",
                    parent_id=run.id, invocation="", parameters_json=run.parameters, queued_at=now,
                    scheduled_for=run.scheduled_for, owner=NO_PROCESS, queue=args.queue,
                )
                retry = replace(retry, invocation=retry.id)
                retries.append(retry)
                jobs.append(replace(
                    args, task=run.task, parameters=args.parameters if run.task == args.task else {},
                    with_needs=False, trigger="retry", parent_id=run.id, attempt=number,
                    scheduled_for=run.scheduled_for, invocation=retry.id, runs={run.task: retry.id},
                ))
                retried.append((run.id, retry.id))
            if retries:
                await conn.execute(t.runs.insert(), [_queued_row(retry) for retry in retries])
                await self._defer(conn, jobs)
        kill = [(run.pgid, run.pgid_started) for run in runs if run.id in interrupted and run.pgid is not None and run.host == HOST]
        return Recovery(job_id, interrupted=list(interrupted), retried=retried, kill=kill)

    # -- retention ------------------------------------------------------------------------------

    PRUNE_BATCH = 500  # runs per write transaction, at most
    PRUNE_TRANSACTION = 0.02  # seconds a write transaction should take: batches shrink to fit
    PRUNE_PAGE = 500  # candidate rows read per query

    async def prune_runs(
        self, *, older_than: float | None, keep_per_task: int | None, dry_run: bool = False
    ) -> int:
        """Delete old finished runs with their log lines, so the store does not grow without
        bound; return how many runs were (with ``dry_run``, would be) deleted.

        A run is deleted when it is finished and either ended (or, never started, was queued)
        more than ``older_than`` seconds ago, or is not among the newest ``keep_per_task`` runs
        of its task. None or 0 turns either part off. Queued and running runs always stay, and
        so does each task's latest succeeded run: it stands in for a need's result when a task
        runs without its needs.

        Deletes go in transactions of at most ``PRUNE_BATCH`` runs, fewer while they take
        longer than ``PRUNE_TRANSACTION`` (see ``_Pace``), each followed by a pause as long as
        it took, so the write lock is free at least half the time and other writers (running
        tasks' records) get in between. Runs past the age limit are deleted oldest first, which
        keeps each batch on few pages.
        """
        if (older_than or 0) < 0 or (keep_per_task or 0) < 0:
            raise ValueError("older_than and keep_per_task must not be negative")
        cutoff = time.time() - older_than if older_than else None
        keep = keep_per_task or None
        pruned = 0
        pace = _Pace(self.PRUNE_BATCH, self.PRUNE_TRANSACTION)
        if cutoff is not None:
            latest: dict[str, str | None] = {}
            after: tuple[float, str] | None = None
            while True:
                async with self._read() as conn:
                    rows = await self._expired_page(conn, cutoff, after)
                    await self._remember_latest_succeeded(conn, rows, latest)
                if not rows:
                    break
                after = (rows[-1].queued_at, rows[-1].id)
                ids = [row.id for row in rows if row.id != latest.get(row.task)]
                pruned += len(ids) if dry_run else await self._delete_runs(ids, pace)
        if keep is not None:
            async with self._read() as conn:
                bounds = await self._keep_bounds(conn, keep)
            for task, bound in bounds.items():
                pruned += await self._prune_surplus(task, bound, cutoff, pace, dry_run)
        return pruned

    async def _expired_page(
        self, conn: AsyncConnection, cutoff: float, after: tuple[float, str] | None
    ) -> list[Any]:
        """Finished runs that ended before ``cutoff``, oldest first, from after ``after``."""
        from sqlalchemy import func

        runs = t.runs.c
        query = (
            select(runs.id, runs.task, runs.status, runs.queued_at)
            .where(
                runs.queued_at < cutoff,  # implied by the next line, but it is what the index serves
                func.coalesce(runs.finished_at, runs.queued_at) < cutoff,
                runs.status.not_in(_UNFINISHED),
                *_after(after),
            )
            .order_by(runs.queued_at, runs.id)
            .limit(self.PRUNE_PAGE)
        )
        return list(await conn.execute(query))

    async def _remember_latest_succeeded(
        self, conn: AsyncConnection, rows: list[Any], latest: dict[str, str | None]
    ) -> None:
        """Add to ``latest`` the id of the latest succeeded run of each task that has a
        succeeded run among ``rows`` and is not in it yet."""
        for task in {row.task for row in rows if row.status == RunStatus.SUCCEEDED.value} - set(latest):
            latest[task] = await self._latest_succeeded(conn, task)

    async def _latest_succeeded(self, conn: AsyncConnection, task: str) -> str | None:
        runs = t.runs.c
        return (
            await conn.execute(
                select(runs.id)
                .where(runs.task == task, runs.status == RunStatus.SUCCEEDED.value)
                .order_by(runs.queued_at.desc(), runs.id.desc())
                .limit(1)
            )
        ).scalar()

    async def _keep_bounds(self, conn: AsyncConnection, keep: int) -> dict[str, tuple[float, str]]:
        """For each task with more than ``keep`` runs, the (queued_at, id) of its ``keep``-th
        newest run: the runs before it are not among the newest ``keep``."""
        from sqlalchemy import func

        runs = t.runs.c
        crowded = await conn.execute(
            select(runs.task).group_by(runs.task).having(func.count() > keep).order_by(runs.task)
        )
        bounds = {}
        for task in list(crowded.scalars()):
            row = (
                await conn.execute(
                    select(runs.queued_at, runs.id)
                    .where(runs.task == task)
                    .order_by(runs.queued_at.desc(), runs.id.desc())
                    .offset(keep - 1)
                    .limit(1)
                )
            ).one()
            bounds[task] = (row.queued_at, row.id)
        return bounds

    async def _prune_surplus(
        self, task: str, bound: tuple[float, str], cutoff: float | None, pace: _Pace, dry_run: bool
    ) -> int:
        """Prune the finished runs of ``task`` older than ``bound`` (those that ended before
        ``cutoff`` were the age limit's)."""
        from sqlalchemy import func

        runs = t.runs.c
        pruned = 0
        after: tuple[float, str] | None = None
        while True:
            async with self._read() as conn:
                latest = await self._latest_succeeded(conn, task)
                query = (
                    select(runs.id, runs.queued_at)
                    .where(
                        runs.task == task,
                        runs.queued_at <= bound[0],
                        runs.status.not_in(_UNFINISHED),
                        *_after(after),
                    )
                    .order_by(runs.queued_at, runs.id)
                    .limit(self.PRUNE_PAGE)
                )
                if cutoff is not None:
                    query = query.where(func.coalesce(runs.finished_at, runs.queued_at) >= cutoff)
                rows = list(await conn.execute(query))
            if not rows:
                return pruned
            after = (rows[-1].queued_at, rows[-1].id)
            ids = [row.id for row in rows if (row.queued_at, row.id) < bound and row.id != latest]
            pruned += len(ids) if dry_run else await self._delete_runs(ids, pace)
            if after >= bound:
                return pruned

    async def _delete_runs(self, ids: list[str], pace: _Pace) -> int:
        """Delete the finished runs among ``ids`` and their log lines, in paced batches."""
        runs = t.runs.c
        deleted = 0
        while ids:
            batch, ids = ids[: pace.size], ids[pace.size :]
            await pace.wait()
            started = time.monotonic()
            async with self._write() as conn:
                finished = select(runs.id).where(runs.id.in_(batch), runs.status.not_in(_UNFINISHED))
                await conn.execute(t.run_logs.delete().where(t.run_logs.c.run_id.in_(finished)))
                result = await conn.execute(
                    t.runs.delete().where(runs.id.in_(batch), runs.status.not_in(_UNFINISHED))
                )
                deleted += result.rowcount
            pace.took(time.monotonic() - started)
        return deleted

    # -- http ---------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Read one row: StoreError if the store cannot be read (for health checks)."""

        async with self._read() as conn:
            await conn.execute(text("SELECT 1"))

    async def runs_before(
        self, *, task: str | None = None, status: str | None = None, before: str | None = None, limit: int = 50
    ) -> list[Run]:
        """A page of run history, newest first: the runs older than the run ``before`` (in
        (queued_at, id) order, so pages neither repeat nor skip a run); RunNotFound if there
        is no run ``before``."""
        from sqlalchemy import and_, or_

        runs = t.runs.c
        query = select(*_RUN_COLUMNS).order_by(runs.queued_at.desc(), runs.id.desc()).limit(limit)
        if task is not None:
            query = query.where(runs.task == task)
        if status is not None:
            query = query.where(runs.status == status)
        async with self._read() as conn:
            if before is not None:
                queued_at = (await conn.execute(select(runs.queued_at).where(runs.id == before))).scalar()
                if queued_at is None:
                    raise RunNotFound(f"no run with id {before!r}")
                query = query.where(
                    runs.queued_at <= queued_at,
                    or_(runs.queued_at < queued_at, and_(runs.queued_at == queued_at, runs.id < before)),
                )
            return [_run_from_row(row) for row in await conn.execute(query)]

    async def latest_runs(self) -> dict[str, LastRun]:
        """Each task's newest run (by the time it was queued), for the tasks that have one: one
        index seek per task on ``runs_task_queued``."""
        runs = t.runs.c
        newest = (
            select(runs.id)
            .where(runs.task == t.tasks.c.name)
            .order_by(runs.queued_at.desc(), runs.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = select(runs.task, runs.id, runs.status, runs.queued_at, runs.finished_at).where(
            runs.id.in_(select(newest).select_from(t.tasks))
        )
        async with self._read() as conn:
            return {
                task: LastRun(run_id, RunStatus(status), finished_at if finished_at is not None else queued_at)
                for task, run_id, status, queued_at, finished_at in await conn.execute(query)
            }

    async def run_totals(self) -> list[tuple[str, str, int, float]]:
        """For every task and status: how many runs the store holds, and their durations'
        sum (in seconds; 0 where none has a duration)."""
        from sqlalchemy import func

        runs = t.runs.c
        query = select(
            runs.task, runs.status, func.count(), func.coalesce(func.sum(runs.duration_s), 0.0)
        ).group_by(runs.task, runs.status)
        async with self._read() as conn:
            return [(task, status, int(n), float(total)) for task, status, n, total in await conn.execute(query)]

    async def recent_durations(self, since: float, *, limit: int = 10_000) -> list[tuple[str, float]]:
        """(task, duration) of the runs that finished after ``since``, newest first."""
        runs = t.runs.c
        query = (
            select(runs.task, runs.duration_s)
            .where(runs.finished_at > since, runs.duration_s.is_not(None))
            .order_by(runs.finished_at.desc())
            .limit(limit)
        )
        async with self._read() as conn:
            return [(task, float(duration)) for task, duration in await conn.execute(query)]

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
                _configure_sqlite(engine)
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
        path = _sqlite_path(self.url)
        if path is None:
            return None
        import sqlite3

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



class _WhichFire(Exception):
    """A fire of several in one statement was lost; which one, only a statement each can tell."""


def _after(key: tuple[float, str] | None) -> list[Any]:
    """Conditions for the rows after ``key`` in (queued_at, id) order (keyset paging)."""
    if key is None:
        return []
    from sqlalchemy import or_

    return [t.runs.c.queued_at >= key[0], or_(t.runs.c.queued_at > key[0], t.runs.c.id > key[1])]


class _Pace:
    """Sizes the batches of a long series of write transactions and spaces them out.

    The first batch is small (a run can hold megabytes of output), and each next one doubles
    while they take under half of ``target``, up to ``most``; one that took longer shrinks the
    next in proportion. Before each batch, wait as long as the previous one took: SQLite has
    no queue for its write lock, and a writer waiting in its busy handler only retries now and
    then, so back-to-back transactions would keep it out.
    """

    FIRST = 16

    def __init__(self, most: int, target: float) -> None:
        self.size = min(most, self.FIRST)
        self.most = most
        self.target = target
        self.last = 0.0

    def took(self, seconds: float) -> None:
        self.last = seconds
        if seconds > self.target:
            self.size = max(1, min(self.size // 2, int(self.size * self.target / seconds)))
        elif seconds < self.target / 2:
            self.size = min(self.most, self.size * 2)

    async def wait(self) -> None:
        import anyio

        await anyio.sleep(self.last)


@asynccontextmanager
async def open_store(db: str | Path, *, sweep: bool = True) -> AsyncIterator[Store]:
    """Open (creating or upgrading as needed) the store at a path or SQLAlchemy async URL.

    Every process that opens a store first marks the unfinished runs of dead runner processes
    on its host ``interrupted``, so no run stays ``running`` forever after a crash; the daemon
    (``sweep=False``) does that itself once it leads, and logs each run it marks.
    """
    url = database_url(db)
    path = _sqlite_path(url)
    read_only: str | None = None
    options: dict[str, Any] = {}
    if path is not None:
        if not path.parent.is_dir():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {path.parent} for the store: {exc.strerror}") from exc
        read_only = _inspect_sqlite_file(path)
        if read_only is not None:
            import aiosqlite
            from sqlalchemy.pool import AsyncAdaptedQueuePool

            reader = _reader_uri(path)

            async def connect_reader() -> Any:
                return await aiosqlite.connect(reader, uri=True)

            options = {"async_creator": connect_reader, "poolclass": AsyncAdaptedQueuePool}
    try:
        engine = create_async_engine(url, **options)
    except Exception as exc:  # a malformed URL or a missing driver
        hint = "; pip install 'runner-tasks[postgres]'" if isinstance(exc, ImportError) and "psycopg" in url else ""
        raise StoreError(f"cannot open the store {_shown(url)!r}: {exc}{hint}") from exc
    if url.startswith("sqlite"):
        _configure_sqlite(engine, read_only=read_only is not None)
    store = Store(engine, url, read_only=read_only)
    try:
        await store._prepare()
        store.watch_file()
        if sweep:
            await store.mark_interrupted(HOST, process_is_alive)
        yield store
    finally:
        await store.close()
