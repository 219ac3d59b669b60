"""Where each task's schedule stands, kept so that restarts neither repeat nor drop a fire."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from runner.records import Fire
from runner.store import _tables as t
from runner.store.connection import StoreBase


@dataclass(frozen=True)
class ScheduleState:
    """Where a task's schedule stands: kept in the store so restarts neither repeat nor drop."""

    task: str
    schedule: str  # the JSON of the schedule these times were computed for
    anchor: float
    next_fire_at: float
    last_fire_at: float | None = None


class WhichFire(Exception):
    """A fire of several in one statement was lost; which one, only a statement each can tell."""


async def move_schedules(conn: AsyncConnection, fires: list[Fire], fire_by_fire: bool) -> list[str]:
    """Move each fire's schedule on, if it still stands at the fire's time; return the
    tasks of the fires whose schedule did not. Several fires go in one statement, as
    before the compare-and-set; if one of them was lost (rare), ``WhichFire`` rolls the
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
        raise WhichFire
    return []


class ScheduleStore(StoreBase):
    """Schedule states: read them all, replace some, drop others."""

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
