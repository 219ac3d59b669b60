"""Schedules: cron expressions and intervals, and when they next fire."""

from __future__ import annotations

import functools
import math
import zoneinfo
from datetime import datetime

from runner.models import Schedule, format_duration

CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@functools.cache
def normalize_cron(expression: str) -> str:
    """The 5-field form of ``expression`` (aliases such as ``@daily`` expanded); ValueError if bad."""
    from cronsim import CronSim, CronSimError  # lazy, for start-up time

    expression = " ".join(expression.split())
    expression = CRON_ALIASES.get(expression.lower(), expression)
    if len(expression.split(" ")) != 5:
        raise ValueError(
            f"cron expression {expression!r} must have 5 fields (minute hour day month weekday)"
        )
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from exc
    return expression


@functools.cache
def check_timezone(name: str) -> None:
    """Raise ValueError unless ``name`` is an IANA timezone this machine knows."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r} (use an IANA name such as Europe/Oslo)") from exc


def next_fire(schedule: Schedule, after: float, *, anchor: float) -> float:
    """The first time ``schedule`` fires strictly after ``after`` (UTC epoch seconds).

    ``every: D`` fires at ``anchor + k * D`` for k >= 1, ``anchor`` being when the task first
    appeared, so fire times do not drift with restarts. A cron schedule fires in its time zone
    through cronsim: a daily 02:30 fires once on the autumn change (at the first 02:30), and on
    the spring change, when 02:30 does not exist, at 03:00.
    """
    if schedule.every is not None:
        steps = max(math.floor((after - anchor) / schedule.every) + 1, 1)
        fire = anchor + steps * schedule.every
        return fire if fire > after else fire + schedule.every  # float rounding at the edge
    from cronsim import CronSim  # lazy, for start-up time

    zone = zoneinfo.ZoneInfo(schedule.timezone or "UTC")
    start = datetime.fromtimestamp(after, zone)
    return float(next(CronSim(schedule.cron or "", start)).timestamp())


def describe(schedule: Schedule) -> str:
    """``schedule`` in words: ``every 1h30m``, ``At 02:30 every day (Europe/Oslo)``."""
    if schedule.every is not None:
        return f"every {format_duration(schedule.every)}"
    return f"{_explain(schedule.cron or '')} ({schedule.timezone or 'UTC'})"


@functools.cache
def _explain(expression: str) -> str:
    from cronsim import CronSim  # lazy, for start-up time

    explained: str = CronSim(expression, datetime(2000, 1, 1)).explain()
    return explained
