"""Next fire times: cron in a time zone across DST changes, and intervals anchored in time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from runner.models import Schedule, format_duration
from runner.schedule import next_fire, normalize_cron
from runner.spec import parse_duration

OSLO = ZoneInfo("Europe/Oslo")


def at(*args: int, tz: ZoneInfo = OSLO) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def fires_between(schedule: Schedule, start: float, end: float, *, anchor: float) -> Iterator[float]:
    """Every fire time in ``(start, end]``, as a daemon running all along would take them."""
    fire = next_fire(schedule, start, anchor=anchor)
    while fire <= end:
        yield fire
        fire = next_fire(schedule, fire, anchor=anchor)


def local(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, OSLO).isoformat()


def test_a_daily_0230_fires_once_on_the_autumn_change() -> None:
    daily = Schedule(cron="30 2 * * *", timezone="Europe/Oslo")
    fires = list(fires_between(daily, at(2026, 10, 24, 12, 0), at(2026, 10, 26, 12, 0), anchor=0))
    assert [local(f) for f in fires] == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


def test_a_daily_0230_fires_at_0300_when_spring_skips_it() -> None:
    daily = Schedule(cron="30 2 * * *", timezone="Europe/Oslo")
    fires = list(fires_between(daily, at(2026, 3, 28, 12, 0), at(2026, 3, 30, 12, 0), anchor=0))
    assert [local(f) for f in fires] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_an_hourly_schedule_fires_in_both_repeated_hours() -> None:
    hourly = Schedule(cron=normalize_cron("@hourly"), timezone="Europe/Oslo")
    fires = list(fires_between(hourly, at(2026, 10, 25, 1, 30), at(2026, 10, 25, 3, 30), anchor=0))
    assert [local(f) for f in fires] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]


def test_cron_without_a_timezone_is_utc_and_fires_strictly_after() -> None:
    utc = ZoneInfo("UTC")
    schedule = Schedule(cron="0 12 * * *")
    assert next_fire(schedule, at(2026, 1, 1, 12, 0, tz=utc), anchor=0) == at(2026, 1, 2, 12, 0, tz=utc)


@pytest.mark.parametrize(
    ("after", "expected"),
    [(1000.0, 1090.0), (1089.9, 1090.0), (1090.0, 1180.0), (500.0, 1090.0), (1000.0 + 90 * 1000, 1000.0 + 90 * 1001)],
)
def test_every_fires_on_a_grid_anchored_where_the_task_appeared(after: float, expected: float) -> None:
    assert next_fire(Schedule(every=90.0), after, anchor=1000.0) == pytest.approx(expected)


def test_fires_between_lists_what_a_stopped_daemon_missed() -> None:
    every_minute = Schedule(every=60.0)
    assert list(fires_between(every_minute, 0.0, 200.0, anchor=0.0)) == [60.0, 120.0, 180.0]
    assert list(fires_between(every_minute, 0.0, 59.0, anchor=0.0)) == []


@pytest.mark.parametrize(
    ("text", "shown"),
    [("90m", "1h30m"), ("90s", "1m30s"), ("0.5s", "0.5s"), ("2d", "2d"), ("1h0.5s", "1h0.5s"), ("26h1m4s", "1d2h1m4s")],
)
def test_an_interval_is_shown_as_the_duration_it_parses_back_to(text: str, shown: str) -> None:
    seconds = parse_duration(text)
    assert format_duration(seconds) == shown
    assert parse_duration(shown) == seconds
