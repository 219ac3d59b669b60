"""Triggers: requests to the daemon to run a task (``runner trigger``), until one takes them up
in the transaction that queues their runs (``RunBatch.claimed``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from runner.store import _tables as t
from runner.store.connection import StoreBase


@dataclass(frozen=True)
class Trigger:
    """A request to the daemon to run a task (``runner trigger``), not yet taken up."""

    run_id: str
    task: str
    parameters: dict[str, Any]
    with_needs: bool
    requested_at: float


class TriggerStore(StoreBase):
    """Add a trigger; read those not yet taken up."""

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
