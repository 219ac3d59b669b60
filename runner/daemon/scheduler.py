"""The daemon's scheduler: fires each scheduled task at its time, on the time of a clock it is
given (the system's; a fake one in tests).

Fire times live in the store (``ScheduleState``): a fire moves its schedule's next fire time in
the transaction that queues the runs it fired, so a crash or a restart neither repeats nor
drops one. What the scheduler decides at a fire:

- ``misfire``: a fire time from before the daemon started was missed (no daemon ran); with
  ``once`` one run stands for every missed fire, with ``skip`` none runs (``fire_missed``).
  Either way the schedule goes on from now: several late fires of one task run once.
- ``overlap``: with ``skip``, a fire while the task's previous run is still queued or running
  in a live runner process is recorded as a ``skipped`` run; with ``allow`` it runs anyway.
- A task that is disabled, orphaned, removed or no longer scheduled stops firing at once
  (``reschedule``); a new or changed schedule starts from now.

A fire is prepared ``LEAD`` seconds ahead: the scheduler wakes before the fire time, reads
which of the due tasks still run and commits the fire (its runs queued, the schedule moved),
then starts the runs at the fire time, never before. While it fires, and until each run it
started has begun, ``settled`` keeps the HTTP API's live work (event streams, long polls,
pages) waiting, so that the moment a fire is due the loop is free for it (docs/performance.md).
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio

from runner import log
from runner.daemon.housekeeping import store_trouble, sweep
from runner.daemon.runs import Runs
from runner.engine import Engine
from runner.errors import ParameterError, StoreError, TaskNotRunnable
from runner.models import Schedule, iso
from runner.processes import HOST, process_is_alive
from runner.records import Fire
from runner.schedule import next_fire
from runner.store import ScheduleState, Store
from runner.workflow import Workflow, WorkflowOptions

CLOCK_CHECK = 30.0
"""The longest the scheduler sleeps without looking at the wall clock."""
LEAD = 0.1
"""Seconds before a fire time the fire is prepared (read and committed), so that at the fire
time only its starts are left: the commit was 15-20 ms of every fire's lateness."""
HOLD = 0.3
"""The longest ``settled`` keeps a caller waiting, however long a fire takes."""
BEGUN_STEP = 0.002


class Clock(Protocol):
    """The time a scheduler fires by."""

    def now(self) -> float:
        """The wall clock: seconds since the epoch, as fire times are."""
        ...

    async def wait(self, event: anyio.Event, seconds: float) -> None:
        """Wait until ``event`` is set or ``seconds`` have passed, whichever comes first."""
        ...


class SystemClock:
    """The machine's clock: ``time.time()``, and anyio's sleeping (on the monotonic clock)."""

    def now(self) -> float:
        return time.time()

    async def wait(self, event: anyio.Event, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await event.wait()


class Scheduler:
    """Fire the schedules of ``engine``'s tasks; fires before ``started_at`` were missed."""

    def __init__(self, store: Store, engine: Engine, runs: Runs, *, started_at: float, clock: Clock) -> None:
        self.store = store
        self.engine = engine
        self.runs = runs
        self.started_at = started_at
        self.clock = clock
        self.states: dict[str, ScheduleState] = {}
        self._wake = anyio.Event()
        self._settled = anyio.Event()  # cleared while a fire is prepared and started
        self._settled.set()
        self._fired: list[Workflow] = []  # the workflows the fire going on started here

    async def settled(self) -> None:
        """Return once no fire is being prepared or started (at most ``HOLD`` seconds later).
        Returns at once, without a checkpoint, when none is."""
        if not self._settled.is_set():
            with anyio.move_on_after(HOLD):
                await self._settled.wait()

    async def start(self) -> None:
        """Read the fire times the store has, and bring them in line with the tasks."""
        self.states = await self.store.schedule_states()
        await self.reschedule()

    async def reschedule(self) -> None:
        """Bring the schedule states in line with the tasks: new and changed schedules start
        from now; tasks that are no longer scheduled (or enabled, or declared) stop firing at
        once (the in-memory states change before anything is awaited)."""
        now = self.clock.now()
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

    async def run(self) -> None:
        """Fire what is due within ``LEAD``, then sleep until ``LEAD`` before the next fire time
        (or a reschedule); forever."""
        while True:
            now = self.clock.now()
            due = [(name, state) for name, state in self.states.items() if state.next_fire_at <= now + LEAD]
            if due:
                self._settled = anyio.Event()
                try:
                    if not await self._fire_due(due, now):
                        continue
                finally:
                    self._settled.set()
            upcoming = min((s.next_fire_at for s in self.states.values()), default=math.inf)
            # Sleeping is on the monotonic clock, fire times on the wall clock: look at the wall
            # clock again now and then, in case it jumped (NTP, a suspended machine).
            await self.clock.wait(self._wake, min(max(upcoming - LEAD - self.clock.now(), 0.0), CLOCK_CHECK))
            self._wake = anyio.Event()

    async def _fire_due(self, due: list[tuple[str, ScheduleState]], now: float) -> bool:
        """Fire ``due`` and wait until the runs started here have begun (``HOLD`` at most);
        False when the store could not say which of them still run."""
        try:
            busy = await self._still_running([name for name, _ in due])
        except StoreError as exc:
            await store_trouble(exc)
            return False
        self._fired = []
        # Side by side: their records share transactions (group commit), so a hundred tasks
        # due at the same second are queued in one or two commits, not a hundred.
        async with anyio.create_task_group() as firing:
            for name, state in due:
                firing.start_soon(self._fire, name, state, now, name in busy)
        # The engine tells nobody when a run begins: look, for HOLD at most.
        for _ in range(round(HOLD / BEGUN_STEP)):
            if all(self.runs.begun(workflow) for workflow in self._fired):
                break
            await anyio.sleep(BEGUN_STEP)
        self._fired = []
        return True

    async def _until(self, at: float) -> None:
        """Sleep until the wall clock reads ``at`` (never wake before it, unless the clock
        stands still for a second past ``LEAD``: a stop, shielded, waits for this)."""
        never = anyio.Event()
        with anyio.move_on_after(LEAD + 1.0):
            while (left := at - self.clock.now()) > 0:
                await self.clock.wait(never, left)

    async def _fire(self, name: str, state: ScheduleState, now: float, busy: bool) -> None:
        """Fire ``name``'s schedule once (``busy``: its previous run is still going)."""
        if self.states.get(name) is not state:  # changed by a reload meanwhile
            return
        schedule = self.engine.tasks[name].spec.schedule
        assert schedule is not None
        # The fire after this one: after now when late, after this fire's time when early.
        after = max(now, state.next_fire_at)
        advanced = ScheduleState(
            name, state.schedule, state.anchor, next_fire(schedule, after, anchor=state.anchor), state.next_fire_at
        )
        self.states[name] = advanced
        fires = [Fire(name, advanced.next_fire_at, state.next_fire_at)]
        try:
            # Shielded: a stop that comes while the fire is being committed, or in the moment
            # (``LEAD`` at most) between its commit and its time, must not leave its runs queued
            # but never started.
            with anyio.CancelScope(shield=True):
                await self._fire_once(name, schedule, state, advanced, fires, busy)
        except StoreError as exc:
            self.states[name] = state  # nothing was committed: the fire is still due
            await store_trouble(exc)

    async def _fire_once(
        self,
        name: str,
        schedule: Schedule,
        state: ScheduleState,
        advanced: ScheduleState,
        fires: list[Fire],
        busy: bool,
    ) -> None:
        if state.next_fire_at < self.started_at and schedule.misfire == "skip":
            log.logger.info(
                f"{name}: missed the fire of {iso(state.next_fire_at)} (misfire: skip); next at "
                f"{iso(advanced.next_fire_at)}",
                extra={"event": "fire_missed", "task": name, "fire_at": iso(state.next_fire_at)},
            )
            await self.store.save_schedule_states([advanced], [])
            return
        try:
            workflow = self.engine.workflow(name, WorkflowOptions(trigger="schedule", scheduled_for=state.next_fire_at))
        except (TaskNotRunnable, ParameterError) as exc:
            log.logger.error(f"{name}: cannot fire: {exc}", extra={"event": "fire_failed", "task": name})
            await self.store.save_schedule_states([advanced], [])
            return
        if busy and schedule.overlap == "skip":
            workflow.on_run = log.run_finished
            await self._until(state.next_fire_at)  # recorded skipped at its time, not before
            if await workflow.skip("the previous run of this task is still going (overlap: skip)", fires=fires) is None:
                await self._fire_lost(name, state, advanced)
            return
        if await self.runs.dispatch(workflow, when_due=lambda: self._until(state.next_fire_at), fires=fires):
            await self._fire_lost(name, state, advanced)
            return
        self._fired.append(workflow)
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
            await sweep(self.store)
        return busy
