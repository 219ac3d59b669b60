"""What a python task may read of the store: past runs, their results, and the tasks.

A task that asks for ``History`` by type gets one over runner's store. It reads only: what a
run records and when runs are pruned stays runner's, so a task cannot write, prune or remove
runs through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.models import Run, StoredTask
    from runner.store import Store


class History:
    """Read-only access to the runs and tasks in runner's store (injected by type)."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    async def runs(
        self, *, task: str | None = None, status: str | None = None, invocation: str | None = None, limit: int | None = 20
    ) -> list[Run]:
        """Runs, newest first: of one ``task``, in one ``status`` (``"succeeded"``, ...), of one
        ``invocation``; at most ``limit`` (None: all)."""
        return await self._store.runs(task=task, status=status, invocation=invocation, limit=limit)

    async def run(self, run_id: str) -> Run:
        """One run, with its log lines; ``RunNotFound`` if there is none with that id."""
        return await self._store.run(run_id)

    async def load_result(self, run_id: str) -> Any:
        """What a python run returned, the object itself (its JSON form if it could not be kept)."""
        return await self._store.load_result(run_id)

    async def tasks(self) -> dict[str, StoredTask]:
        """Every task the store knows, by name, removed ones included."""
        return await self._store.tasks()
