"""``GET /metrics`` in the Prometheus text format (version 0.0.4), read from the store.

Counts come from one GROUP BY over the runs the store holds (pruning lowers them, so they are
gauges, not counters); duration quantiles from the runs that finished in the last
``WINDOW`` seconds. The text is cached for ``CACHE`` seconds, so scrapers cannot load the store.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import anyio

from runner.models import RunStatus

if TYPE_CHECKING:
    from runner.http.view import DaemonView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CACHE = 2.0
WINDOW = 600.0
QUANTILES = (0.5, 0.9, 0.99)
_NOT_TIMED = {RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.SKIPPED.value}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


class Metrics:
    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self._text = ""
        self._at = -CACHE
        self._lock = anyio.Lock()

    async def render(self) -> str:
        async with self._lock:
            if time.monotonic() - self._at >= CACHE:
                self._text = await self._render()
                self._at = time.monotonic()
            return self._text

    async def _render(self) -> str:
        store, daemon = self.daemon.store, self.daemon
        totals = await store.run_totals()
        recent = await store.recent_durations(time.time() - WINDOW)
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        family("runner_up", "gauge", "1 while the daemon serves this API.")
        lines.append("runner_up 1")
        family("runner_runs", "gauge", "Runs in the store, by task and status (pruning lowers it).")
        by_status: dict[str, int] = defaultdict(int)
        for task, status, count, _ in totals:
            by_status[status] += count
            lines.append(f'runner_runs{{task="{_label(task)}",status="{_label(status)}"}} {count}')
        family("runner_queue_depth", "gauge", "Runs queued and not started yet.")
        lines.append(f"runner_queue_depth {by_status[RunStatus.QUEUED.value]}")
        family("runner_runs_running", "gauge", "Runs running now.")
        lines.append(f"runner_runs_running {by_status[RunStatus.RUNNING.value]}")

        family(
            "runner_run_duration_seconds", "summary",
            f"Run durations: quantiles over the runs that finished in the last {WINDOW:g}s; "
            "sum and count over the runs in the store.",
        )
        windows: dict[str, list[float]] = defaultdict(list)
        for task, duration in recent:
            windows[task].append(duration)
        sums: dict[str, tuple[float, int]] = {}
        for task, status, count, total in totals:
            if status in _NOT_TIMED:
                continue
            done_total, done_count = sums.get(task, (0.0, 0))
            sums[task] = (done_total + total, done_count + count)
        for task in sorted(set(windows) | set(sums)):
            label = _label(task)
            lines.extend(
                f'runner_run_duration_seconds{{task="{label}",quantile="{q:g}"}} {_quantile(windows[task], q):.6f}'
                for q in (QUANTILES if windows.get(task) else ())
            )
            total, count = sums.get(task, (0.0, 0))
            lines.append(f'runner_run_duration_seconds_sum{{task="{label}"}} {total:.6f}')
            lines.append(f'runner_run_duration_seconds_count{{task="{label}"}} {count}')

        tasks = daemon.engine.tasks.values()
        family("runner_tasks", "gauge", "Tasks the daemon knows, by state.")
        states = {"enabled": 0, "disabled": 0, "removed": 0}
        for stored in tasks:
            states["removed" if stored.removed else "enabled" if stored.enabled else "disabled"] += 1
        for state, count in states.items():
            lines.append(f'runner_tasks{{state="{state}"}} {count}')
        family("runner_scheduled_tasks", "gauge", "Tasks with a schedule the daemon fires.")
        lines.append(f"runner_scheduled_tasks {len(daemon.states)}")

        sync = daemon.sync_state
        family("runner_sync_errors_total", "counter", "Syncs of the task files that failed since the daemon started.")
        lines.append(f"runner_sync_errors_total {sync.errors}")
        family("runner_sync_ok", "gauge", "1 if the last sync of the task files succeeded.")
        lines.append(f"runner_sync_ok {int(sync.last_error is None)}")
        family("runner_last_sync_success_timestamp_seconds", "gauge", "When the task files last synced without error (Unix time).")
        lines.append(f"runner_last_sync_success_timestamp_seconds {sync.last_ok_at or 0:.3f}")
        return "\n".join(lines) + "\n"
