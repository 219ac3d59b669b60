"""Named leases: one daemon per store holds the ``daemon`` lease and renews it while it lives."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select, update

from runner.errors import LeaseHeld
from runner.records import Lease
from runner.store import _tables as t
from runner.store.connection import StoreBase


class LeaseStore(StoreBase):
    """Take, renew, release and read a named lease."""

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
