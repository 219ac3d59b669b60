"""The SQLite file under a store: how its connections are set up, and the checks on the file
that come before and while runner uses it.

Every connection gets WAL, ``synchronous=NORMAL``, foreign keys and a busy timeout of
``BUSY_TIMEOUT_MS``, and every transaction that writes begins with ``BEGIN IMMEDIATE``: it takes
the write lock at once, waiting its turn for up to the busy timeout. Measured with 4 processes
doing read-modify-write on one WAL file: pysqlite's default transaction handling lost about 70%
of the updates without an error, a deferred ``BEGIN`` failed about 45% of the transactions at
once with "database is locked" (whatever the busy timeout), and ``BEGIN IMMEDIATE`` had
neither. pysqlite's own transaction handling is turned off (``isolation_level = None``) so that
the ``BEGIN`` emitted here is the one that runs. Readers use a plain ``BEGIN``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.errors import StoreError

BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for a lock another holds before it gives up."""


def sqlite_path(url: str) -> Path | None:
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


def configure_sqlite(engine: AsyncEngine, *, read_only: bool = False) -> None:
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


def remove_own_sidecars(path: Path) -> None:
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


def reader_uri(path: Path) -> str:
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


def inspect_sqlite_file(path: Path) -> str | None:
    """Check the SQLite file at ``path`` before runner opens it: refuse (StoreError) a SQLite
    database that is not a runner store, so that none of runner's tables are added to some
    other program's database; return why this process cannot write it (None if it can). A new
    path or an empty file is a new store; a file that is not a database at all is left to the
    connection to report, as before."""
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
        with contextlib.closing(sqlite3.connect(reader_uri(path), uri=True)) as conn:
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
