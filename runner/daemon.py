"""The daemon: fires schedules, takes triggers, reloads on file changes, shuts down gently.

One daemon per store holds the ``daemon`` lease (host, pid, heartbeat). On PostgreSQL several
may run: the one that wins the election leads and holds the lease, the others wait as
standbys (runner/leader.py). Everything the leader decides is committed with the runs it
starts: a schedule's next fire time moves in the same transaction that queues the fired runs,
and a trigger is taken up in the transaction that queues its runs, so a crash or a restart
neither repeats nor drops one.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from runner import leader, log, registry
from runner.engine import Engine, Workflow
from runner.errors import ParameterError, RunnerError, StoreError, StoreFileChanged, TaskNotRunnable
from runner.models import RunStatus, Schedule, TaskType, iso
from runner.processes import HOST, PID, PID_STARTED, kill_orphaned_groups, process_is_alive
from runner.records import Fire, QueuedRun, RunEnd, RunError, next_attempt
from runner.revision import Revision, project_revision
from runner.schedule import next_fire
from runner.spec import ParseCache
from runner.store import (
    FILE_CHECK_EVERY,
    Interrupted,
    Lease,
    LeaseHeld,
    ScheduleState,
    Store,
    Trigger,
)

LEASE = "daemon"
DEFAULT_GRACE = 30.0
"""Seconds running runs get to finish after SIGTERM/SIGINT before they are cancelled."""

HEARTBEAT = 5.0
"""Seconds between renewals of the daemon's lease."""

SWEEP_EVERY = 1.0
"""Seconds between looks for runs of dead processes on this host (marked interrupted)."""

STALE_AFTER = 30.0
"""A lease held on another host and not renewed for this long is taken over."""

TRIGGER_POLL = 0.1
"""Seconds between looks for new triggers."""

PRUNE_EVERY = 3600.0
"""Seconds between prunings of old runs (the first is at start)."""

CLOCK_CHECK = 30.0
"""The longest the scheduler sleeps without looking at the wall clock."""

STORE_RETRY = 1.0
"""Seconds to wait after the store failed a read or write before the daemon tries again."""

REWATCH_EVERY = 1.0
"""Seconds between checks of which directories tasks.d/ and plugins/ lead to: a symlink swapped
to a new release changes no file in the watched ones, so no event reports it."""


class DaemonRunning(RunnerError):
    """Another live daemon holds the store."""


@dataclass(frozen=True)
class DaemonOptions:
    watch: bool = True
    grace: float = DEFAULT_GRACE
    max_concurrency: int | None = None
    retain: float | None = 30 * 86400.0
    retain_runs: int | None = 1000
    http: HttpOptions | None = None  # serve the HTTP API (runner-tasks[http]) while the daemon runs
    remote: bool = False  # send runs to workers (runner worker) instead of running them here


@dataclass(frozen=True)
class HttpOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    allow_trigger: bool = False  # POST /api/v1/tasks/{name}/runs, with the bearer token
    auth_read: bool = False  # the read endpoints want the token too
    token: str | None = None  # RUNNER_HTTP_TOKEN
    timeout: float = 10.0  # seconds a client gets to send a request head, then its body
    max_connections: int | None = None  # None: 200, fewer under a low file descriptor limit


@dataclass
class SyncState:
    """How the last syncs of the task files went, for health checks and metrics."""

    last_ok_at: float | None = None
    last_error: str | None = None  # of the last sync, None when it succeeded
    errors: int = 0  # syncs that failed since the daemon started
    problems: tuple[str, ...] = ()  # of the last sync, each "path:line:col: what" (the first 20)
    last_failed_at: float | None = None


def describe_holder(lease: Lease) -> str:
    return f"pid {lease.pid} on {lease.host}, since {iso(lease.acquired_at)}"


def _gone(_lease: Lease) -> bool:
    return True


def lease_is_stale(lease: Lease) -> bool:
    """Whether the lease's holder is gone: a dead process on this host, or silent elsewhere."""
    if lease.host == HOST:
        return not process_is_alive(lease.pid, lease.pid_started)
    return time.time() - lease.heartbeat_at > STALE_AFTER


class Daemon:
    """``runner daemon``: use ``await Daemon(root, store, options).run()``."""

    def __init__(self, root: Path, store: Store, options: DaemonOptions = DaemonOptions()) -> None:
        self.root = root.resolve()
        self.store = store
        self.options = options
        self.states: dict[str, ScheduleState] = {}
        self._wake = anyio.Event()
        self._runs: TaskGroup | None = None
        self._run_scopes: set[anyio.CancelScope] = set()
        self._idle = anyio.Event()
        self._idle.set()
        self._engine: Engine | None = None
        self._parsed: ParseCache = {}  # task files as last read: a reload parses only changed ones
        self._read_from: dict[Path, tuple[int, int] | None] = {}  # the directories last read
        self._reloading = anyio.Lock()
        self._stop = anyio.Event()
        self._started_at = time.time()  # fire times before this were missed: no daemon ran
        self._hurry = anyio.Event()
        self.sync_state = SyncState()
        self._revision: Revision | None = None  # of the files last synced

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    # -- the whole life ---------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> None:
        """Lead, sync, then fire, take triggers and reload until SIGTERM/SIGINT.

        Leading is holding the store's ``daemon`` lease. On PostgreSQL a daemon must first win
        the election (runner/leader.py): while another daemon leads, it waits as a standby."""
        async with anyio.create_task_group() as life:
            if handle_signals:
                # From the first moment: a signal to a standby, or during a long first sync,
                # stops the daemon gently too.
                await life.start(self._on_signals)
            async with leader.election(self.store, LEASE, lease_is_stale) as election:
                if await election.campaign(self._stop):
                    async with election.leading(self.stop):
                        await self._lead(election.proven)
            life.cancel_scope.cancel()
        if election.lost is not None:
            raise leader.LeadershipLost(
                f"this daemon lost the leadership on the store {self.store.url}: {election.lost}; "
                "another daemon may lead now. Start it again (a supervisor does): it waits as a standby"
            )

    async def _lead(self, proven: bool) -> None:
        """Hold the lease while serving (``proven``: the election proved its holder gone)."""
        try:
            previous = await self.store.acquire_lease(
                LEASE, host=HOST, pid=PID, pid_started=PID_STARTED, is_stale=_gone if proven else lease_is_stale
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
                await self.store.release_lease(LEASE, host=HOST, pid=PID)

    async def _serve(self, previous: Lease | None) -> None:
        _settle_interrupted(await self.store.mark_interrupted(HOST, process_is_alive))
        await self._sync(None)
        if not self._stop.is_set():
            await self._run_engine(previous)

    async def _run_engine(self, previous: Lease | None) -> None:
        options: dict[str, Any] = {"revision": self._revision}
        if self.options.max_concurrency:
            options["max_concurrency"] = self.options.max_concurrency
        if self.options.remote:
            await self.store.ensure_queue()
        async with Engine(self.store, self.root, **options) as engine:
            self._engine = engine
            self.states = await self.store.schedule_states()
            await self._reschedule()
            async with anyio.create_task_group() as runs:
                self._runs = runs
                if previous is not None:
                    await self._retry_interrupted(previous)
                async with anyio.create_task_group() as loops:
                    loops.start_soon(self._fire_schedules)
                    loops.start_soon(self._take_triggers)
                    loops.start_soon(self._keep_lease)
                    loops.start_soon(self._watch_store_file)
                    loops.start_soon(self._prune)
                    if self.options.remote:
                        loops.start_soon(self._recover_stalled)
                    if self.options.watch:
                        loops.start_soon(self._watch)
                    if self.options.http is not None:
                        from runner.http import serve

                        await loops.start(serve, self, self.options.http)
                    log.logger.info(
                        f"daemon started: pid {PID}, {len(engine.tasks)} tasks, {len(self.states)} scheduled",
                        extra={"event": "daemon_started", "pid": PID, "scheduled": len(self.states)},
                    )
                    await self._stop.wait()
                    loops.cancel_scope.cancel()
                await self._drain()

    def stop(self) -> None:
        """Stop firing and taking triggers; running runs get the grace period to finish."""
        self._stop.set()

    async def _on_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The first SIGTERM/SIGINT stops the daemon gently; a second one cuts the grace short."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if self._stop.is_set():
                    self._hurry.set()
                    continue
                log.logger.info(
                    f"stopping on {signal.Signals(signum).name}: no new runs; running ones get "
                    f"{self.options.grace:g}s to finish (a second signal cancels them now)",
                    extra={"event": "daemon_stopping", "signal": signum},
                )
                self.stop()

    async def _drain(self) -> None:
        """Let running runs finish within the grace period, then cancel them: their process
        groups are killed and they are recorded cancelled."""
        async with anyio.create_task_group() as waiting:

            async def until(event: anyio.Event) -> None:
                await event.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(until, self._idle)
            waiting.start_soon(until, self._hurry)
            await anyio.sleep(self.options.grace)
            waiting.cancel_scope.cancel()
        if self._run_scopes:
            log.logger.info(
                f"cancelling {len(self._run_scopes)} running workflow(s)",
                extra={"event": "daemon_cancelling", "count": len(self._run_scopes)},
            )
        for scope in list(self._run_scopes):
            scope.cancel()
        self.engine.cancel_submitted()

    # -- running workflows -----------------------------------------------------------------

    async def _dispatch(self, workflow: Workflow, **with_runs: Any) -> list[str]:
        """Queue the workflow's runs (committing ``with_runs`` with them) and start it here, or
        send it to the workers (``--remote``). Returns the tasks whose fire in ``with_runs``
        was lost (see ``Workflow.queue``): then nothing was queued or started."""
        if self.options.remote:
            return await workflow.send(**with_runs)
        lost = await workflow.queue(**with_runs)
        if not lost:
            self._start(workflow)
        return lost

    def _start(self, workflow: Workflow) -> None:
        assert self._runs is not None
        workflow.on_run = log.run_finished
        # Counted from now, not from when the task gets going: a stop that comes in between
        # must wait for it (and be able to cancel it) like any other.
        scope = anyio.CancelScope()
        self._run_scopes.add(scope)
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._runs.start_soon(self._execute, workflow, scope)

    async def _execute(self, workflow: Workflow, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await workflow.execute(queued=True)
            except RunnerError as exc:
                log.logger.error(
                    f"{workflow.target}: {exc}", extra={"event": "run_error", "task": workflow.target}
                )
            finally:
                self._run_scopes.discard(scope)
                if not self._run_scopes:
                    self._idle.set()

    # -- schedules -------------------------------------------------------------------------

    async def _reschedule(self) -> None:
        """Bring the schedule states in line with the tasks: new and changed schedules start
        from now; tasks that are no longer scheduled (or enabled, or declared) stop firing at
        once (the in-memory states change before anything is awaited)."""
        now = time.time()
        wanted: dict[str, Schedule] = {
            name: task.spec.schedule
            for name, task in self.engine.tasks.items()
            if task.spec.schedule is not None and task.enabled and not task.removed
        }
        gone = [name for name in self.states if name not in wanted]
        for name in gone:
            del self.states[name]
        fresh = []
        for name, schedule in wanted.items():
            state = self.states.get(name)
            if state is None or state.schedule != schedule.key:
                state = self.states[name] = ScheduleState(name, schedule.key, now, next_fire(schedule, now, anchor=now))
                fresh.append(state)
        await self.store.save_schedule_states(fresh, gone)
        self._wake.set()  # only now: a fire moves its schedule's stored row, which must exist

    async def _fire_schedules(self) -> None:
        while True:
            now = time.time()
            due = [(name, state) for name, state in self.states.items() if state.next_fire_at <= now]
            if due:
                try:
                    busy = await self._still_running([name for name, _ in due])
                except StoreError as exc:
                    await _store_trouble(exc)
                    continue
                # Side by side: their records share transactions (group commit), so a hundred
                # tasks due at the same second are queued in one or two commits, not a hundred.
                async with anyio.create_task_group() as firing:
                    for name, state in due:
                        firing.start_soon(self._fire, name, state, now, name in busy)
            upcoming = min((s.next_fire_at for s in self.states.values()), default=math.inf)
            # Sleeping is on the monotonic clock, fire times on the wall clock: look at the wall
            # clock again now and then, in case it jumped (NTP, a suspended machine).
            with anyio.move_on_after(min(max(upcoming - time.time(), 0.0), CLOCK_CHECK)):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _fire(self, name: str, state: ScheduleState, now: float, busy: bool) -> None:
        """Fire ``name``'s schedule once (``busy``: its previous run is still going)."""
        if self.states.get(name) is not state:  # changed by a reload meanwhile
            return
        schedule = self.engine.tasks[name].spec.schedule
        assert schedule is not None
        advanced = ScheduleState(
            name, state.schedule, state.anchor, next_fire(schedule, now, anchor=state.anchor), state.next_fire_at
        )
        self.states[name] = advanced
        fires = [Fire(name, advanced.next_fire_at, state.next_fire_at)]
        try:
            # Shielded: a stop that comes while the fire is being committed must not leave its
            # runs queued but never started.
            with anyio.CancelScope(shield=True):
                await self._fire_once(name, schedule, state, advanced, fires, busy)
        except StoreError as exc:
            self.states[name] = state  # nothing was committed: the fire is still due
            await _store_trouble(exc)

    async def _fire_once(
        self,
        name: str,
        schedule: Schedule,
        state: ScheduleState,
        advanced: ScheduleState,
        fires: list[Fire],
        busy: bool,
    ) -> None:
        if state.next_fire_at < self._started_at and schedule.misfire == "skip":
            log.logger.info(
                f"{name}: missed the fire of {iso(state.next_fire_at)} (misfire: skip); next at "
                f"{iso(advanced.next_fire_at)}",
                extra={"event": "fire_missed", "task": name, "fire_at": iso(state.next_fire_at)},
            )
            await self.store.save_schedule_states([advanced], [])
            return
        try:
            workflow = self.engine.workflow(name, trigger="schedule", scheduled_for=state.next_fire_at)
        except (TaskNotRunnable, ParameterError) as exc:
            log.logger.error(f"{name}: cannot fire: {exc}", extra={"event": "fire_failed", "task": name})
            await self.store.save_schedule_states([advanced], [])
            return
        if busy and schedule.overlap == "skip":
            workflow.on_run = log.run_finished
            if await workflow.skip("the previous run of this task is still going (overlap: skip)", fires=fires) is None:
                await self._fire_lost(name, state, advanced)
            return
        if await self._dispatch(workflow, fires=fires):
            await self._fire_lost(name, state, advanced)
            return
        log.logger.info(
            f"{name}: fired run {workflow.target_run_id} (due {iso(state.next_fire_at)})",
            extra={"event": "fired", "task": name, "run_id": workflow.target_run_id, "fire_at": iso(state.next_fire_at)},
        )

    async def _fire_lost(self, name: str, state: ScheduleState, advanced: ScheduleState) -> None:
        """Another daemon fired this schedule first (two led at once, for a moment): nothing
        was recorded. Go on from where the store has the schedule."""
        log.logger.warning(
            f"{name}: the fire of {iso(state.next_fire_at)} was taken by another daemon; not run here",
            extra={"event": "fire_lost", "task": name, "fire_at": iso(state.next_fire_at)},
        )
        stored = (await self.store.schedule_states()).get(name)
        if self.states.get(name) is not advanced:  # changed by a reload meanwhile
            return
        if stored is not None:
            self.states[name] = stored
        else:  # the row went missing (a failed save): put it back, and fire again
            self.states[name] = state
            await self.store.save_schedule_states([state], [])

    async def _still_running(self, names: list[str]) -> set[str]:
        """Those of ``names`` with a run queued or running in a live process (any runner's)."""
        unfinished = await self.store.unfinished(names)
        busy = {
            name
            for name, runs in unfinished.items()
            if any(host != HOST or process_is_alive(pid, started) for host, pid, started in runs)
        }
        if set(unfinished) - busy:  # runs of dead processes only: say so now, not at the next sweep
            _settle_interrupted(await self.store.mark_interrupted(HOST, process_is_alive))
        return busy

    # -- triggers --------------------------------------------------------------------------

    async def _take_triggers(self) -> None:
        seen: int | None = None
        while True:
            try:
                # Read the triggers only when something was committed since the last look: an
                # idle daemon then costs next to no CPU.
                version = self.store.data_version()
                if version is None or version != seen:
                    for trigger in await self.store.triggers():
                        await self._take(trigger)
                    seen = version
            except StoreError as exc:
                await _store_trouble(exc)
            await anyio.sleep(TRIGGER_POLL)

    async def _take(self, trigger: Trigger) -> None:
        try:
            workflow = self.engine.workflow(
                trigger.task,
                parameters=trigger.parameters,
                with_needs=trigger.with_needs,
                trigger="trigger",
                run_id=trigger.run_id,
            )
        except (TaskNotRunnable, ParameterError) as exc:
            with anyio.CancelScope(shield=True):
                await self._refuse(trigger, exc)
            return
        with anyio.CancelScope(shield=True):  # taken up means started, even when a stop comes
            await self._dispatch(workflow, claimed=[trigger.run_id])
        log.logger.info(
            f"{trigger.task}: triggered run {trigger.run_id}",
            extra={"event": "triggered", "task": trigger.task, "run_id": trigger.run_id},
        )

    async def _refuse(self, trigger: Trigger, exc: RunnerError) -> None:
        """Record a trigger that cannot run as a failed run with its id, saying why."""
        stored = self.engine.tasks.get(trigger.task)
        now = time.time()
        run = QueuedRun(
            id=trigger.run_id, task=trigger.task, type=stored.spec.type if stored else TaskType.SHELL, attempt=1,
            trigger="trigger", parent_id=None, invocation=trigger.run_id, parameters_json="{}", queued_at=now,
        )
        await self.engine.recorder.queued([run], claimed=[trigger.run_id])
        await self.engine.recorder.finished(RunEnd(trigger.run_id, RunStatus.FAILED, now, error=RunError.of(exc)), [])
        log.logger.error(
            f"{trigger.task}: trigger {trigger.run_id} refused: {exc}",
            extra={"event": "trigger_refused", "task": trigger.task, "run_id": trigger.run_id},
        )

    async def run_now(self, name: str, parameters: dict[str, Any]) -> str:
        """Run ``name`` after its needs, as a trigger would (the HTTP API's POST); its run id
        once queued. Raises TaskNotRunnable or ParameterError, before anything is recorded."""
        workflow = self.engine.workflow(name, parameters=parameters, trigger="api")
        with anyio.CancelScope(shield=True):
            await self._dispatch(workflow)
        log.logger.info(
            f"{name}: run {workflow.target_run_id} requested over HTTP",
            extra={"event": "triggered", "task": name, "run_id": workflow.target_run_id},
        )
        return workflow.target_run_id

    # -- crash recovery --------------------------------------------------------------------

    async def _retry_interrupted(self, previous: Lease) -> None:
        """Retry the runs a dead daemon had started, where their task has retries left."""
        for run in await self.store.started_runs_interrupted(previous.host, previous.pid):
            stored = self.engine.tasks.get(run.task)
            number = next_attempt(run.status, run.attempt, stored.spec.retries.count if stored else None)
            if number is None:
                continue
            try:
                workflow = self.engine.workflow(
                    run.task, parameters=run.parameters, with_needs=False, trigger="retry",
                    parent_id=run.id, attempt=number,
                )
            except (TaskNotRunnable, ParameterError) as exc:
                log.warn(
                    "retry_refused", f"{run.task}: interrupted run {run.id} not retried: {exc}",
                    task=run.task, run_id=run.id, error=str(exc),
                )
                continue
            await self._dispatch(workflow)
            log.logger.info(
                f"{run.task}: retrying interrupted run {run.id} as {workflow.target_run_id}",
                extra={"event": "retry_interrupted", "task": run.task, "run_id": workflow.target_run_id},
            )

    async def _keep_lease(self) -> None:
        last_renewal = -math.inf
        while True:
            try:
                if time.monotonic() - last_renewal >= HEARTBEAT:
                    if not await self.store.renew_lease(LEASE, host=HOST, pid=PID):
                        raise DaemonRunning("another daemon took over this store's lease; stopping")
                    last_renewal = time.monotonic()
                _settle_interrupted(await self.store.mark_interrupted(HOST, process_is_alive))
            except StoreError as exc:
                await _store_trouble(exc)
            await anyio.sleep(SWEEP_EVERY)

    async def _watch_store_file(self) -> None:
        """Stop the daemon when its SQLite file is deleted or replaced (``Store.check_file``).

        Its records would go on into a file nobody reads, and a daemon started on the new file
        would hold a lease of its own there: so this one stops at once (StoreFileChanged, exit
        2, for a supervisor to start it again on the new file). Its running runs are cancelled
        without the grace period, their process groups killed: their records cannot be written
        anywhere that counts. It fires nothing from the moment the file changed, since every
        store write looks first, and exits within about a second (the kill grace of a task that
        ignores SIGTERM aside)."""
        while True:
            try:
                self.store.check_file()
            except StoreFileChanged as exc:
                log.logger.error(
                    f"{exc}; running runs are cancelled, and their records cannot be stored",
                    extra={"event": "store_file_changed", "path": exc.path, "what": exc.what},
                )
                self._stop.set()  # the file watcher's thread ends only on this event
                raise
            await anyio.sleep(FILE_CHECK_EVERY)

    async def _recover_stalled(self) -> None:
        from runner.remote import RECOVER_EVERY, recover_stalled

        while True:
            await recover_stalled(self.store)  # this host's dead runs: _keep_lease sweeps
            await anyio.sleep(RECOVER_EVERY)

    async def _prune(self) -> None:
        """Prune old runs at start and every hour; in a loop of its own, since a backlog can
        take many seconds (in short transactions) and the lease must be renewed meanwhile."""
        if self.options.retain is None and self.options.retain_runs is None:
            return
        while True:
            try:
                pruned = await self.store.prune_runs(
                    older_than=self.options.retain, keep_per_task=self.options.retain_runs
                )
            except StoreError as exc:
                await _store_trouble(exc)
                continue
            if pruned:
                log.logger.info(f"pruned {pruned} old runs", extra={"event": "pruned", "count": pruned})
            await anyio.sleep(PRUNE_EVERY)

    # -- reloading -------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Reload on changes under ``tasks.d/`` and ``plugins/``, and when either directory is
        replaced (a symlink swapped to a new release, a directory renamed over it) or appears.

        The watch follows the directories it started on: a swap is seen only by checking once a
        second which directory each path leads to, and the watch then starts again on the new one.
        """
        from watchfiles import awatch

        moved: set[Path] = set()
        while True:
            seen = self._read_from  # not what is there now: what the last sync read
            rewatch = anyio.Event()  # set when a directory is replaced, or the daemon stops
            async with anyio.create_task_group() as group:
                group.start_soon(self._notice_replaced, seen, rewatch)
                if moved:
                    # It reads once the new watch is in place (awatch sets it up before its first
                    # wait), so nothing changed after the read goes unseen.
                    group.start_soon(self._reload, moved)
                watched = [place for place in seen if _identity(place) is not None]
                if watched:
                    # The watcher waits in a thread that a cancel cannot interrupt; the event can.
                    # The generator is closed here, not by asyncio's finalizer in a task of its own.
                    watcher = awatch(*watched, watch_filter=_relevant, debounce=100, step=20, stop_event=rewatch)
                    async with contextlib.aclosing(watcher):
                        async for changes in watcher:
                            await self._reload({Path(path) for _, path in changes})
                await rewatch.wait()
            if self._stop.is_set():
                return
            # An event may have had the new directory read already.
            moved = {place for place, identity in self._read_from.items() if _identity(place) != identity}

    async def _notice_replaced(self, seen: dict[Path, tuple[int, int] | None], rewatch: anyio.Event) -> None:
        while not self._stop.is_set():
            with anyio.move_on_after(REWATCH_EVERY):
                await self._stop.wait()
            if any(_identity(place) != identity for place, identity in seen.items()):
                break
        rewatch.set()

    async def _reload(self, changed: set[Path]) -> None:
        async with self._reloading:
            while True:
                try:
                    await self._sync(changed)
                    return
                except StoreError as exc:
                    await _store_trouble(exc)

    async def _sync(self, changed: Iterable[Path] | None) -> None:
        """Validate and sync the files (``changed``: what changed, None at start); on success,
        reschedule. Invalid files are logged and change nothing: the last good state runs on."""
        from runner.errors import ProjectError
        from runner.spec import load_tasks
        from runner.sync import sync_project

        started = time.monotonic()
        self._read_from = {place: _identity(place) for place in (self.root / "tasks.d", self.root / "plugins")}
        declared = await anyio.to_thread.run_sync(load_tasks, self.root, self._parsed)
        plugins = self.root / "plugins"
        if changed is not None and any(p.suffix == ".py" or p == plugins or plugins in p.parents for p in changed):
            # At once, with no await between: a run that starts now finds its callable.
            registry.reload_plugins()
            registry.import_plugins(self.root)
        try:
            plan = await sync_project(self.root, self.store, declared=declared)
        except ProjectError as exc:
            for problem in exc.problems:
                log.logger.error(
                    str(problem),
                    extra={"event": "invalid_task_file", "path": problem.path, "line": problem.line, "col": problem.col},
                )
            log.logger.error(
                f"{len(exc.problems)} problem(s) in the task files; the last good definitions keep running",
                extra={"event": "reload_failed", "problems": len(exc.problems)},
            )
            self.sync_state.errors += 1
            self.sync_state.problems = tuple(str(problem) for problem in exc.problems[:20])
            self.sync_state.last_error = "; ".join(self.sync_state.problems)
            self.sync_state.last_failed_at = time.time()
            return
        self.sync_state.last_ok_at, self.sync_state.last_error, self.sync_state.problems = time.time(), None, ()
        self.store.remember_specs(declared.specs.values())
        self._revision = await anyio.to_thread.run_sync(project_revision, self.root)
        if self._engine is None:
            return
        self.engine.revision = self._revision
        await self.engine.reload()
        await self._reschedule()
        changes = {k: v for k, v in plan.to_json().items() if v}
        log.logger.info(
            f"reloaded in {time.monotonic() - started:.3f}s: "
            + ("; ".join(f"{k} {', '.join(v)}" for k, v in changes.items()) or "no task changed"),
            extra={"event": "reloaded", **changes},
        )


async def end_leftover_tasks(within: float = 1.0) -> None:
    """Cancel the tasks that outlived the daemon's own: started by a library outside its task
    groups. asyncio.run waits for them at exit, forever if one ignores the cancel; so each is
    logged with where it stands, and one still going after ``within`` seconds ends the process
    (everything is recorded and the lease released by then)."""
    import asyncio
    import io
    import os
    import sys

    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in leftover:
        stack = io.StringIO()
        task.print_stack(file=stack)
        log.logger.warning(f"a task outlived the daemon: {task!r}", extra={"event": "leftover_task", "stack": stack.getvalue()})
        task.cancel()
    if not leftover:
        return
    with anyio.move_on_after(within):
        await asyncio.wait(leftover)
    if any(not task.done() for task in leftover):
        log.logger.warning("leftover tasks ignored the cancel; exiting without them", extra={"event": "daemon_stopped"})
        sys.stderr.flush()
        os._exit(0)


def _settle_interrupted(interrupted: Interrupted) -> None:
    """Kill what the runs marked interrupted left running, and log one ``run_interrupted`` per
    run, at start as in the sweep, so a log shipper sees every interrupted run (a restarted
    daemon's own predecessor's too)."""
    kill_orphaned_groups(interrupted.groups)
    for run_id in interrupted.run_ids:
        log.logger.warning(
            f"run {run_id} interrupted: the process running it died",
            extra={"event": "run_interrupted", "run_id": run_id},
        )


async def _store_trouble(exc: StoreError) -> None:
    """Log a store that cannot be read or written (a full disk, a lock held too long) and give
    it a moment; the loop that met it tries again, and the daemon keeps running. A store file
    deleted or replaced is no trouble to wait out: that stops the daemon (``_watch_store_file``,
    within ``FILE_CHECK_EVERY``), so it is not logged here."""
    if not isinstance(exc, StoreFileChanged):
        log.logger.error(f"{exc}; trying again in {STORE_RETRY:g}s", extra={"event": "store_error"})
    await anyio.sleep(STORE_RETRY)


def _relevant(change: Any, path: str) -> bool:
    """A task file or plugin module; or what may hold some: a directory or symlink that appears,
    anything that goes (a directory moved out is reported as deleted, like a file)."""
    from watchfiles import Change

    if path.endswith((".yaml", ".yml", ".py")):
        return True
    name = os.path.basename(path)
    if name.startswith(".") or "__pycache__" in Path(path).parts:
        return False
    return change == Change.deleted or os.path.isdir(path) or os.path.islink(path)


def _identity(directory: Path) -> tuple[int, int] | None:
    """Which directory ``directory`` leads to now (device and inode); None if none."""
    try:
        info = os.stat(directory)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


async def request_run(store: Store, trigger: Trigger) -> Lease | None:
    """Ask the daemon to run a task (``runner trigger``); the daemon's lease, None if no live
    daemon holds the store (the run starts when one does)."""
    await store.add_trigger(trigger)
    lease = await store.lease(LEASE)
    return None if lease is None or lease_is_stale(lease) else lease
