"""Requests to cancel a run (``runner cancel``, ``POST /api/v1/runs/{id}/cancel``), which travel
through the store to whichever process runs the run.

A request is a time in the run's own row (``cancel_requested_at``), set only while the run is
unfinished, so that asking and finding it finished are one statement. The processes that run
runs look for requests on theirs with one query by primary key per tick
(``cancel_requested``); the process that runs a run is the one that stops it and records it
``cancelled``. A run queued for a worker that none has taken up yet has no such process: its
job is taken off the queue (or, waiting for its needs, it is let go) and it is recorded
cancelled at once; the runs of its workflow that wait for it are then skipped, as when any need
does not succeed.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Collection

from sqlalchemy import select, text, update

from runner.errors import RunNotFound
from runner.models import RunStatus
from runner.store import _tables as t
from runner.store._rows import UNFINISHED
from runner.store.connection import StoreBase
from runner.store.jobs import cancel_waiting


class CancelOutcome(enum.Enum):
    """What asking to cancel a run did."""

    REQUESTED = "requested"  # the process running it (or about to) will stop it and record it
    CANCELLED = "cancelled"  # recorded cancelled at once: queued for a worker none had taken up
    FINISHED = "finished"  # it had already finished: nothing to stop


class CancelStore(StoreBase):
    """Cancel requests: made by anyone, noticed by the process that runs the run."""

    async def request_cancel(self, run_id: str) -> CancelOutcome:
        """Ask for ``run_id`` to be stopped; RunNotFound if there is no such run."""
        runs = t.runs.c
        async with self._write() as conn:
            row = (
                await conn.execute(select(runs.status, runs.host, runs.queue, runs.invocation).where(runs.id == run_id))
            ).first()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}; `runner runs` lists recent ones")
            if row.status not in UNFINISHED:
                return CancelOutcome.FINISHED
            # Sent to workers and not taken up: waiting for its needs, or its job on the queue.
            waiting = row.status == RunStatus.QUEUED.value and row.host == "" and row.queue is not None
            if waiting and self._postgres and await cancel_waiting(conn, run_id, row.invocation):
                return CancelOutcome.CANCELLED
            # A worker took the job up meanwhile, or a process of its own runs the run: that
            # process stops it (its status is checked again here: it may have just finished).
            asked = await conn.execute(
                update(t.runs)
                .where(runs.id == run_id, runs.status.in_(UNFINISHED))
                .values(cancel_requested_at=time.time())
            )
            return CancelOutcome.REQUESTED if asked.rowcount else CancelOutcome.FINISHED

    async def cancel_requested(self, run_ids: Collection[str]) -> list[str]:
        """The runs among ``run_ids`` someone asked to cancel: one lookup by primary key.

        The ids are bound as one value (an array; on SQLite a JSON array, read with its JSON
        functions, built in since SQLite 3.38): an engine watches every run it was handed, also
        those still waiting for a slot (2,000 at once in the benchmarks), and SQLAlchemy renders
        an expanding ``IN`` one bound value at a time, at every look: with 1,000 ids, ~2,000
        Python calls a look (docs/performance.md, "Per-run work").
        """
        if not run_ids:
            return []
        ids: list[str] | str = list(run_ids)
        query = _REQUESTED_PG
        if not self._postgres:
            query, ids = _REQUESTED, json.dumps(ids)
        async with self._read() as conn:
            return list((await conn.execute(query, {"ids": ids})).scalars())


_REQUESTED = text(
    "SELECT id FROM runs WHERE id IN (SELECT value FROM json_each(:ids)) AND cancel_requested_at IS NOT NULL"
)
_REQUESTED_PG = text("SELECT id FROM runs WHERE id = ANY(:ids) AND cancel_requested_at IS NOT NULL")
