"""Schedules: cron expressions and intervals, and when they next fire."""

from __future__ import annotations

import functools
import zoneinfo
from datetime import datetime

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
    from cronsim import CronSim, CronSimError

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
