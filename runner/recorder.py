"""Group commit for run records: the writes of concurrent runs share transactions.

Committing each state change on its own caps SQLAlchemy async on SQLite near 850 commits/s
(FIELD-NOTES). Instead every write joins the batch being gathered, and one writer commits that
batch while the next one fills up; a caller returns only once its own write is committed. There
is no timer: a lone run is committed at once, and under load batches grow by themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus

from runner.errors import StoreError
from runner.store import Store
from runner.store.store import RunBatch


class _Pending:
    def __init__(self) -> None:
        self.batch = RunBatch()
        self.committed = anyio.Event()
        self.error: BaseException | None = None


class Recorder:
    """Gathers run writes into batches and commits each batch in one transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending = _Pending()
        self._wake = anyio.Event()
        self._closing = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer loop; start it with ``task_group.start`` and stop it with ``close``."""
        task_status.started()
        # Shielded as a whole: when the engine's caller is cancelled, the runs it cancels still
        # have to record that they were, so the writer ends only when ``close`` says so.
        with anyio.CancelScope(shield=True):
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                pending, self._pending = self._pending, _Pending()
                if not pending.batch.empty:
                    try:
                        await self.store.write_runs(pending.batch)
                    except Exception as exc:
                        pending.error = exc
                pending.committed.set()
                if self._closing and self._pending.batch.empty:
                    return

    def close(self) -> None:
        """Let the writer commit what is pending, then end."""
        self._closing = True
        self._wake.set()

    async def _commit(self, fill: Any) -> None:
        pending = self._pending
        fill(pending.batch)
        self._wake.set()
        await pending.committed.wait()
        if pending.error is not None:
            raise StoreError(f"cannot record the run: {pending.error}") from pending.error

    async def queued(
        self, rows: list[dict[str, Any]], *, fires: Sequence[dict[str, Any]] = (), claimed: Sequence[str] = ()
    ) -> None:
        """Record runs queued; with them, in the same transaction, a schedule's fire and the
        triggers these runs take up."""

        def fill(batch: RunBatch) -> None:
            batch.inserts.extend(rows)
            batch.fires.extend(fires)
            batch.claimed.extend(claimed)

        await self._commit(fill)

    def started(self, run_id: str, at: float) -> None:
        """Record that a run started, without waiting: a run that lasts longer than a commit is
        seen ``running``; one that ends sooner may be committed with its end in one batch."""
        self._pending.batch.starts.append((run_id, at))
        self._wake.set()

    async def finished(self, fields: dict[str, Any], logs: list[dict[str, Any]]) -> None:
        def fill(batch: RunBatch) -> None:
            batch.finishes.append(fields)
            batch.logs.extend(logs)

        await self._commit(fill)
