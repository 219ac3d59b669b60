"""The engine behind the ``AsyncSession`` a python task is handed, kept apart from runner's own.

A task's session must never stop the runner. Its engine has a pool of its own (however many
sessions are open, the store's writers never wait for a connection), and on SQLite its
transactions begin deferred, so that a task that reads and then awaits something slow holds no
lock that runner's writers need (in WAL mode a reader blocks no writer).

A deferred SQLite transaction that has read takes the write lock at its first write, and SQLite
refuses that at once, without waiting out the busy timeout, when another connection holds the
write lock or has committed since the transaction's first read (``SQLITE_BUSY`` or
``SQLITE_BUSY_SNAPSHOT``, in 0.0 s, measured with SQLite 3.40): in a daemon that records a run
every second that would fail most read-then-write tasks. So when a write is refused so and the
transaction has changed nothing yet, it is begun again as ``BEGIN IMMEDIATE`` (which waits its
turn, up to the busy timeout) and the write runs in it. The reads before it saw the store as it
was then, as every statement does under PostgreSQL's default READ COMMITTED; from its first write
on, the transaction holds the lock and is committed or rolled back as a whole.

On SQLite, which tasks have a session's transaction open is tracked (``holders``), so that a
recorder that finds the store locked can tell a task's long write transaction, which ends with
the task, from an outage.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

_CHANGES = "runner_changes_at_begin"  # Connection.info key: the rows changed before this transaction
_REFUSED = ("SQLITE_BUSY", "SQLITE_BUSY_SNAPSHOT")


class TaskSessions:
    """The engine of task sessions, and which tasks have a transaction open on it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._open: dict[int, str] = {}  # id of the DBAPI connection -> the task using it
        sync = engine.sync_engine
        if engine.dialect.name == "sqlite":
            # Only on SQLite can a session hold the lock that every write of runner's needs;
            # on PostgreSQL runner's writes wait on a task's row locks, and fail on none.
            event.listen(sync, "begin", self._began)
            for name in ("commit", "rollback"):
                event.listen(sync, name, self._ended)
            for name in ("checkin", "invalidate"):  # a connection lost mid-transaction ends it too
                event.listen(sync.pool, name, lambda dbapi_conn, *_: self._open.pop(id(dbapi_conn), None))
            # After the store's own "begin" listener, which emits the BEGIN.
            event.listen(sync, "begin", _count_changes)
            event.listen(sync, "do_execute", _upgrading(lambda cursor, sql, params: cursor.execute(sql, params)))
            event.listen(sync, "do_executemany", _upgrading(lambda cursor, sql, params: cursor.executemany(sql, params)))
            no_params = _upgrading(lambda cursor, sql, _: cursor.execute(sql))
            event.listen(sync, "do_execute_no_params", lambda cursor, sql, context: no_params(cursor, sql, None, context))

    def engine_for(self, task: str) -> AsyncEngine:
        """The engine for a session of ``task`` (named in ``holders``)."""
        return self._engine.execution_options(runner_task=task)

    def holders(self) -> list[str]:
        """The tasks that have a session's transaction open on SQLite, each once."""
        return sorted(set(self._open.values()))

    async def dispose(self) -> None:
        await self._engine.dispose()

    def _began(self, conn: Any) -> None:
        self._open[id(conn.connection.dbapi_connection)] = conn.get_execution_options().get("runner_task", "?")

    def _ended(self, conn: Any) -> None:
        self._open.pop(id(conn.connection.dbapi_connection), None)


def _count_changes(conn: Any) -> None:
    conn.info[_CHANGES] = conn.connection.driver_connection.total_changes


def _upgrading(execute: Callable[[Any, str, Any], Any]) -> Callable[[Any, str, Any, Any], bool]:
    """A ``do_execute`` listener: ``execute``, begun again with the write lock if refused it."""

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        try:
            execute(cursor, statement, parameters)
        except sqlite3.OperationalError as exc:
            if not _refused_upgrade(exc, context):
                raise
            cursor.execute("ROLLBACK")
            cursor.execute("BEGIN IMMEDIATE")
            execute(cursor, statement, parameters)
        return True  # executed here: SQLAlchemy must not execute it again

    return do_execute


def _refused_upgrade(exc: sqlite3.OperationalError, context: Any) -> bool:
    """Whether a statement was refused the write lock in a transaction that has written nothing
    (rolling it back loses nothing). A transaction that had written would hold the lock already,
    so could not be refused it; as a second guard, it must have changed no row since BEGIN."""
    if getattr(exc, "sqlite_errorname", None) not in _REFUSED:
        return False
    conn = context.root_connection
    if not conn.in_transaction() or conn.in_nested_transaction() or _CHANGES not in conn.info:
        return False  # begun again, a transaction would lose its savepoints
    return bool(conn.connection.driver_connection.total_changes == conn.info[_CHANGES])
