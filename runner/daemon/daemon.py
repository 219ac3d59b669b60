"""The daemon itself: it leads, then runs its services in one task group until it is stopped.

The services, each in a module of its own: the scheduler (``scheduler.py``), the triggers
(``triggers.py``), the reload (``reload.py``), the housekeeping (``housekeeping.py``: the
lease, crash sweeps, pruning, stalled jobs, the store file), and the runs they start
(``runs.py``), with the HTTP API (runner/http) when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from runner import leader, log
from runner.daemon.housekeeping import Housekeeping, sweep
from runner.daemon.options import DaemonOptions
from runner.daemon.reload import Reloader, SyncState
from runner.daemon.runs import Runs
from runner.daemon.scheduler import Clock, Scheduler, SystemClock
from runner.daemon.triggers import Triggers
from runner.engine import Engine
from runner.errors import DaemonRunning, LeadershipLost, StoreFileChanged
from runner.lease import LEASE, describe_holder, lease_is_stale
from runner.models import StoredTask
from runner.processes import this_process
from runner.revision import Revision
from runner.shutdown import on_stop_signals, signal_name
from runner.store import Lease, LeaseHeld, ScheduleState, Store
from runner.workflow import WorkflowOptions


def _gone(_lease: Lease) -> bool:
    return True


class Daemon:
    """``runner daemon``: use ``await Daemon(root, store, options).run()``."""

    def __init__(
        self, root: Path, store: Store, options: DaemonOptions | None = None, *, clock: Clock | None = None
    ) -> None:
        self.root = root.resolve()
        self.store = store
        self.options = options or DaemonOptions()
        self.clock = clock or SystemClock()
        self._stop = anyio.Event()
        self._hurry = anyio.Event()
        self._started_at = self.clock.now()  # fire times before this were missed: no daemon ran
        self._reloader = Reloader(self.root, store, self._stop)
        self._engine: Engine | None = None
        self._scheduler: Scheduler | None = None
        self._runs: Runs | None = None

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    @property
    def states(self) -> dict[str, ScheduleState]:
        """The fire times of the scheduled tasks (none before the scheduler starts)."""
        return self._scheduler.states if self._scheduler is not None else {}

    @property
    def sync_state(self) -> SyncState:
        return self._reloader.sync_state

    async def settled(self) -> None:
        """Return once the scheduler is not firing (see ``Scheduler.settled``)."""
        if self._scheduler is not None:
            await self._scheduler.settled()

    # -- the whole life ---------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> None:
        """Lead, sync, then fire, take triggers and reload until SIGTERM/SIGINT.

        Leading is holding the store's ``daemon`` lease. On PostgreSQL a daemon must first win
        the election (runner/leader.py): while another daemon leads, it waits as a standby."""
        async with anyio.create_task_group() as life:
            if handle_signals:
                # From the first moment: a signal to a standby, or during a long first sync,
                # stops the daemon gently too.
                await life.start(on_stop_signals, self._on_signal)
            async with leader.election(self.store, LEASE, lease_is_stale) as election:
                if await election.campaign(self._stop):
                    async with election.leading(self.stop):
                        await self._lead(election.proven)
            life.cancel_scope.cancel()
        if election.lost is not None:
            raise LeadershipLost(
                f"this daemon lost the leadership on the store {self.store.url}: {election.lost}; "
                "another daemon may lead now. Start it again (a supervisor does): it waits as a standby"
            )

    async def _lead(self, proven: bool) -> None:
        """Hold the lease while serving (``proven``: the election proved its holder gone)."""
        me = this_process()
        try:
            previous = await self.store.acquire_lease(
                LEASE, host=me.host, pid=me.pid, pid_started=me.pid_started, is_stale=_gone if proven else lease_is_stale
            )
        except LeaseHeld as exc:
            raise DaemonRunning(
                f"another daemon is running on the store {self.store.url}: "
                f"{describe_holder(exc.holder)}; stop it first (one daemon per store)"
            ) from exc
        if previous is not None:
            log.logger.warning(
                f"took over the lease of a daemon that is gone ({describe_holder(previous)})",
                extra={"event": "lease_taken_over", "pid": previous.pid, "host": previous.host},
            )
        try:
            await self._serve(previous)
        finally:
            # A lease in a file that was replaced is nobody's concern any more.
            with anyio.CancelScope(shield=True), contextlib.suppress(StoreFileChanged):
                await self.store.release_lease(LEASE, host=me.host, pid=me.pid)

    async def _serve(self, previous: Lease | None) -> None:
        await sweep(self.store)
        await self._reloader.sync(None)
        if not self._stop.is_set():
            await self._run_engine(previous)

    async def _run_engine(self, previous: Lease | None) -> None:
        options: dict[str, Any] = {"revision": self._reloader.revision}
        if self.options.max_concurrency:
            options["max_concurrency"] = self.options.max_concurrency
        if self.options.remote:
            await self.store.ensure_queue()
        async with Engine(self.store, self.root, **options) as engine, anyio.create_task_group() as group:
            self._engine = engine
            runs = self._runs = Runs(engine, group, remote=self.options.remote)
            scheduler = self._scheduler = Scheduler(
                self.store, engine, runs, started_at=self._started_at, clock=self.clock
            )
            await scheduler.start()
            if previous is not None:
                await runs.retry_interrupted(self.store, previous)
            self._reloader.apply = self._apply
            await self._run_services(engine, scheduler, runs)
            await runs.drain(self.options.grace, self._hurry)

    async def _run_services(self, engine: Engine, scheduler: Scheduler, runs: Runs) -> None:
        """The services in one task group, until the daemon is stopped."""
        housekeeping = Housekeeping(self.store, self.options, self._stop)
        async with anyio.create_task_group() as services:
            services.start_soon(scheduler.run)
            services.start_soon(Triggers(self.store, engine, runs.dispatch).run)
            services.start_soon(housekeeping.keep_lease)
            services.start_soon(housekeeping.watch_store_file)
            services.start_soon(housekeeping.prune)
            if self.options.remote:
                services.start_soon(housekeeping.recover_stalled)
            if self.options.watch:
                services.start_soon(self._reloader.watch)
            if self.options.http is not None:
                # Imported only when served: the HTTP extra (starlette, uvicorn) is optional.
                from runner.http import serve

                await services.start(serve, self, self.options.http)
            pid = this_process().pid
            log.logger.info(
                f"daemon started: pid {pid}, {len(engine.tasks)} tasks, {len(scheduler.states)} scheduled",
                extra={"event": "daemon_started", "pid": pid, "scheduled": len(scheduler.states)},
            )
            await self._stop.wait()
            services.cancel_scope.cancel()

    async def _apply(self, revision: Revision, tasks: Mapping[str, StoredTask] | None) -> None:
        """Make a sync live: the engine takes the tasks as synced, the scheduler reschedules."""
        assert self._scheduler is not None
        self.engine.revision = revision
        await self.engine.reload(tasks)
        await self._scheduler.reschedule()

    def stop(self) -> None:
        """Stop firing and taking triggers; running runs get the grace period to finish."""
        self._stop.set()

    def _on_signal(self, signum: int) -> None:
        """The first SIGTERM/SIGINT stops the daemon gently; a second one cuts the grace short."""
        if self._stop.is_set():
            self._hurry.set()
            return
        log.logger.info(
            f"stopping on {signal_name(signum)}: no new runs; running ones get "
            f"{self.options.grace:g}s to finish (a second signal cancels them now)",
            extra={"event": "daemon_stopping", "signal": signum},
        )
        self.stop()

    async def run_now(self, name: str, parameters: dict[str, Any]) -> str:
        """Run ``name`` after its needs, as a trigger would (the HTTP API's POST); its run id
        once queued. Raises TaskNotRunnable or ParameterError, before anything is recorded."""
        assert self._runs is not None
        workflow = self.engine.workflow(name, WorkflowOptions(parameters=parameters, trigger="api"))
        with anyio.CancelScope(shield=True):
            await self._runs.dispatch(workflow)
        log.logger.info(
            f"{name}: run {workflow.target_run_id} requested over HTTP",
            extra={"event": "triggered", "task": name, "run_id": workflow.target_run_id},
        )
        return workflow.target_run_id
