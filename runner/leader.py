"""Which daemon leads when several run on one PostgreSQL store: an advisory lock decides.

The daemon that holds the session-level advisory lock ``LEADER_LOCK`` leads: it does all that
a daemon does. The others are standbys: they say once who leads, try for the lock every
``RETRY_EVERY`` seconds, and do nothing else. On SQLite there is nothing to elect (one daemon
per store, the lease decides: runner/lease.py), and ``election`` gives a stand-in that leads at once.

Why a session-level advisory lock, on a connection of its own (rather than a lease row with
a heartbeat, whose takeover waits out a timeout and trusts clocks, or a row lock, which needs a
transaction held open):

- PostgreSQL ends it with the session, with no clock and no heartbeat row to trust. A leader
  that dies (``kill -9``, an OOM kill) closes its socket, and the lock is free at once. A
  leader whose host vanishes is found dead by TCP keepalives, set on both ends of the session
  (``KEEPALIVE_*``, ``USER_TIMEOUT``), within ``SERVER_GIVES_UP`` seconds.
- The session holds no transaction open (autocommit): nothing for VACUUM to wait for, no
  ``idle_in_transaction_session_timeout`` to trip. It is not the store's write lock
  (``PG_WRITE_LOCK``), which each store write takes for its transaction only.
- Not from SQLAlchemy's pool, whose connections are reset, recycled and thrown away at will.

A leader asks its session ``SELECT 1`` every ``CHECK_EVERY`` seconds, and at once when the
server says something unasked (it does when it ends the session). A session that is gone,
or does not answer within ``CHECK_TIMEOUT``, may have lost the lock to another daemon: the
leader stops firing and taking triggers at once, lets its running runs finish within the
grace period, and exits non-zero (``LeadershipLost``), for its supervisor to start it again as
a standby; a daemon that cannot tell whether it leads must not go on as if it did. A leader cut
off from the server gives up after ``CHECK_EVERY + CHECK_TIMEOUT`` seconds, before the server
frees the lock (``SERVER_GIVES_UP``). A session the server ends (``pg_terminate_backend``, a
restart) is seen within milliseconds, before a standby's next try. Should two daemons still
both lead for a moment (a session dropped by a proxy without a word, a leader's whole host
paused for longer than ``SERVER_GIVES_UP``), a fire is still run once: a fire moves its schedule on only from
where it stands, a compare-and-set in ``Store.write_runs``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio

from runner import log
from runner.errors import StoreError
from runner.models import iso
from runner.processes import HOST, this_process
from runner.store import PG_WRITE_LOCK, Lease, Store

if TYPE_CHECKING:
    from psycopg import AsyncConnection

LEADER_LOCK = PG_WRITE_LOCK << 8 | ord("L")
"""The advisory lock key whose holder leads ("runnerL")."""

RETRY_EVERY = 0.5
"""Seconds between a standby's tries for the lock."""

CHECK_EVERY = 1.0
"""Seconds between a leader's looks at its lock's session."""

CHECK_TIMEOUT = 2.0
"""Seconds the session has to answer a look before the leader gives up."""

KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 1, 3
"""TCP keepalives on the lock's session, both ends: the first probe after 5 s of silence, then
one a second; three unanswered probes end the connection."""

USER_TIMEOUT = 8.0
"""Seconds data sent on the session may stay unacknowledged before the connection ends (the
keepalives cover a silent connection, this one a busy one)."""

SERVER_GIVES_UP = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT
"""About how long the server keeps the lock of a leader whose host vanished."""

CONNECT_TIMEOUT = 10
"""Seconds to connect the lock's session."""

NAME_LEADER_WITHIN = 5.0
"""Seconds a standby waits for the leader to record its lease before it says it waits for an
unnamed one."""

STORE_RETRY = 1.0
"""Seconds a standby waits after the server failed it before it tries again."""


_checking: ContextVar[bool] = ContextVar("runner_leader_checking", default=False)


def _not_our_check(record: logging.LogRecord) -> bool:
    """psycopg warns when a query it cancels does not end ("closing connection"): for the
    leader's check that did not answer, that is expected, and the leader says it itself."""
    return not _checking.get()


class Election:
    """One daemon's part in the election: ``campaign`` until it leads, then lead within
    ``leading``.

    This base class is the stand-in for a store with nothing to elect (SQLite): it leads at
    once and never loses."""

    proven = False
    """Whether leading proves the previous lease holder gone (so its lease is taken over
    whatever its heartbeat says)."""

    lost: str | None = None
    """Why the leadership was lost, once it was."""

    async def campaign(self, stop: anyio.Event) -> bool:
        """Wait until this daemon leads (True) or ``stop`` is set (False)."""
        return True

    @asynccontextmanager
    async def leading(self, on_lost: Callable[[], None]) -> AsyncIterator[None]:
        """Watch the leadership while the block runs: when it is lost, set ``lost`` and call
        ``on_lost``."""
        yield


class AdvisoryLockElection(Election):
    """The election on a PostgreSQL store; see the module's docstring."""

    proven = True

    def __init__(self, store: Store, lease: str, is_stale: Callable[[Lease], bool]) -> None:
        self.store = store
        self.lease = lease
        self.is_stale = is_stale
        self._conn: AsyncConnection[Any] | None = None
        psycopg_log = logging.getLogger("psycopg")
        if _not_our_check not in psycopg_log.filters:
            psycopg_log.addFilter(_not_our_check)

    async def close(self) -> None:
        """Close the lock's session: the lock is free at once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _connect(self) -> AsyncConnection[Any]:
        import psycopg  # the postgres extra: an election happens on PostgreSQL only

        conn = await psycopg.AsyncConnection.connect(
            self.store.conninfo(),
            autocommit=True,
            application_name=f"runner daemon {this_process().pid} on {HOST}"[:63],
            connect_timeout=CONNECT_TIMEOUT,
            keepalives=1,
            keepalives_idle=KEEPALIVE_IDLE,
            keepalives_interval=KEEPALIVE_INTERVAL,
            keepalives_count=KEEPALIVE_COUNT,
            tcp_user_timeout=int(USER_TIMEOUT * 1000),
        )
        try:
            # The server's end: a client host that vanished frees the lock as soon.
            await conn.execute(
                f"SET tcp_keepalives_idle = {KEEPALIVE_IDLE}; "
                f"SET tcp_keepalives_interval = {KEEPALIVE_INTERVAL}; "
                f"SET tcp_keepalives_count = {KEEPALIVE_COUNT}; "
                f"SET tcp_user_timeout = {int(USER_TIMEOUT * 1000)}"
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn

    async def _try(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect()
        row = await (await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))).fetchone()
        return bool(row and row[0])

    async def campaign(self, stop: anyio.Event) -> bool:
        import psycopg

        started = time.monotonic()
        named = False
        while not stop.is_set():
            try:
                if await self._try():
                    pid = this_process().pid
                    log.logger.info(
                        f"leading the daemons on {self.store.url} (pid {pid} on {HOST})",
                        extra={"event": "leader_elected", "pid": pid, "host": HOST},
                    )
                    return True
            except psycopg.Error as exc:
                await self.close()
                log.logger.error(
                    f"cannot try for the leadership on {self.store.url}: {exc}; trying again in {STORE_RETRY:g}s",
                    extra={"event": "store_error"},
                )
                with anyio.move_on_after(STORE_RETRY):
                    await stop.wait()
                continue
            if not named:
                named = await self._name_leader(time.monotonic() - started > NAME_LEADER_WITHIN)
            with anyio.move_on_after(RETRY_EVERY):
                await stop.wait()
        return False

    async def _name_leader(self, anyway: bool) -> bool:
        """Log ``standby`` with the leader's lease, once the leader has recorded it (or, with
        ``anyway``, without it); whether it was logged."""
        try:
            leader = await self.store.lease(self.lease)
        except StoreError:
            leader = None
        if leader is None or self.is_stale(leader):
            if not anyway:
                return False
            log.logger.info(
                "standby: another daemon leads (it has not recorded its lease yet); taking over when it stops",
                extra={"event": "standby"},
            )
            return True
        log.logger.info(
            f"standby: pid {leader.pid} on {leader.host} leads, since {iso(leader.acquired_at)}; "
            "taking over when it stops",
            extra={"event": "standby", "pid": leader.pid, "host": leader.host, "since": iso(leader.acquired_at)},
        )
        return True

    @asynccontextmanager
    async def leading(self, on_lost: Callable[[], None]) -> AsyncIterator[None]:
        # The watch ends before the session can be closed under it.
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch, on_lost)
            yield
            group.cancel_scope.cancel()

    async def _watch(self, on_lost: Callable[[], None]) -> None:
        import psycopg

        assert self._conn is not None
        _checking.set(True)  # in this task only
        while True:
            # The session says nothing unasked, except when the server ends it (its last word,
            # then the socket closes): look at once then, so that a leader whose session was
            # ended steps down before a standby's next try for the lock.
            with anyio.move_on_after(CHECK_EVERY) as quiet:
                await anyio.wait_readable(self._conn.fileno())
            try:
                with anyio.fail_after(CHECK_TIMEOUT):
                    await self._conn.execute("SELECT 1")
            except psycopg.Error as exc:
                self.lost = f"its session ended ({str(exc).strip() or type(exc).__name__})"
            except TimeoutError:
                self.lost = f"its session did not answer within {CHECK_TIMEOUT:g}s"
            if self.lost is not None:
                break
            if not quiet.cancelled_caught:  # it said something harmless: never a busy loop
                await anyio.sleep(0.1)
        # Still open, it would keep the lock from the next leader.
        await self.close()
        log.logger.error(
            f"lost the leadership: {self.lost}; no more fires or triggers, exiting once the runs "
            "going are done",
            extra={"event": "leadership_lost"},
        )
        on_lost()


@asynccontextmanager
async def election(store: Store, lease: str, is_stale: Callable[[Lease], bool]) -> AsyncIterator[Election]:
    """The election for a daemon on ``store`` (``lease``: the name of the daemon's lease,
    which names the leader to standbys; ``is_stale``: whether a lease's holder is gone)."""
    if not store.postgres:
        yield Election()
        return
    chosen = AdvisoryLockElection(store, lease, is_stale)
    try:
        yield chosen
    finally:
        await chosen.close()

