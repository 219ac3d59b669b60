"""What a person asks first about each task: its state, its schedule in words and next fire
time, and how its last run went (``runner list``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.models import LastRun, StoredTask, iso
from runner.schedule import describe, next_fire
from runner.store import Store


@dataclass(frozen=True)
class TaskOverview:
    task: StoredTask
    schedule: str | None  # in words; None without a schedule
    next_fire_at: float | None  # None: does not fire (no schedule, disabled), or not known yet
    last_run: LastRun | None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.task.to_json(),
            "schedule_description": self.schedule,
            "next_fire_at": iso(self.next_fire_at),
            "last_run": self.last_run.to_json() if self.last_run else None,
        }


async def task_overviews(store: Store, *, include_removed: bool, now: float) -> list[TaskOverview]:
    """Every stored task (``include_removed``: removed ones too), by name.

    The next fire time is the daemon's, from the store, while the schedule it was computed for
    is the task's; otherwise a cron schedule's next time after ``now``, and for ``every:``
    nothing until a daemon has seen it (its grid starts then).
    """
    tasks = await store.tasks(include_removed=include_removed)
    states = await store.schedule_states()
    latest = await store.latest_runs()
    found = []
    for name, task in tasks.items():
        schedule = task.spec.schedule
        next_at = None
        if schedule is not None and task.enabled and not task.removed:
            state = states.get(name)
            if state is not None and state.schedule == schedule.key:
                next_at = state.next_fire_at
            elif schedule.every is None:
                next_at = next_fire(schedule, now, anchor=now)
        found.append(
            TaskOverview(task, describe(schedule) if schedule else None, next_at, latest.get(name))
        )
    return found
