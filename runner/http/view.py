"""What the HTTP API reads of the daemon, as Protocols: the API depends on these, not on
``Daemon``, so the daemon can start the API without the two importing each other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runner.models import StoredTask
    from runner.store import Store


class TaskSource(Protocol):
    @property
    def tasks(self) -> Mapping[str, StoredTask]:
        """The tasks as the daemon last synced them, by name."""
        ...


class SyncHealth(Protocol):
    @property
    def last_ok_at(self) -> float | None: ...

    @property
    def last_error(self) -> str | None:
        """Of the last sync; None when it succeeded."""
        ...

    @property
    def errors(self) -> int:
        """Syncs that failed since the daemon started."""
        ...

    @property
    def problems(self) -> tuple[str, ...]:
        """Of the last sync, each ``path:line:col: what``; empty when it succeeded."""
        ...

    @property
    def last_failed_at(self) -> float | None: ...


class FireTimes(Protocol):
    """A schedule's state as the daemon keeps it: the schedule it was computed for (its key)
    and its next fire time."""

    @property
    def schedule(self) -> str: ...

    @property
    def next_fire_at(self) -> float: ...


class DaemonView(Protocol):
    """The daemon as the API sees it: its store, its tasks, its schedules and syncs, and a way
    to start a run."""

    @property
    def store(self) -> Store: ...

    @property
    def engine(self) -> TaskSource: ...

    @property
    def states(self) -> Mapping[str, FireTimes]:
        """The schedules the daemon fires, by task."""
        ...

    @property
    def sync_state(self) -> SyncHealth: ...

    async def run_now(self, name: str, parameters: dict[str, Any]) -> str:
        """Queue ``name`` after its needs; its run id. TaskNotRunnable or ParameterError first."""
        ...

    async def settled(self) -> None:
        """Return once the daemon is not starting scheduled runs (a moment at most; at once,
        without a checkpoint, when it is not): the live work of pages waits for it."""
        ...


Settled = Callable[[], Awaitable[None]]
"""``DaemonView.settled``."""
