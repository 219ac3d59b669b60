"""Leader election on a real PostgreSQL (runner/leader.py), in process, and the fire
compare-and-set that keeps two leaders of a moment from running one fire twice.

The daemons themselves, killed and stopped, are in tests/acceptance/test_daemon_pg.py.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pg import OF_THIS_DATABASE, pg_server, pg_url  # noqa: F401

from runner import leader
from runner.models import TaskType
from runner.recorder import Recorder
from runner.records import Fire, Owner, QueuedRun
from runner.store import ScheduleState, Store, database_url, open_store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[Store]:  # noqa: F811
    async with open_store(pg_url) as opened:
        yield opened


@contextmanager
def admin(url: str) -> Iterator[Any]:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def lock_holder(url: str) -> int | None:
    """The server pid of the session that holds the leader's lock on this database (the tests'
    cluster has other tests' databases, and their daemons' locks, beside it)."""
    with admin(url) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND objid = %s"
            f" AND {OF_THIS_DATABASE}",
            (leader.LEADER_LOCK >> 32, leader.LEADER_LOCK & 0xFFFFFFFF),
        ).fetchone()
        return row[0] if row else None


def never_stale(_lease: Any) -> bool:
    return False


async def standing_by(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """The ``standby`` record, once a campaign has logged it."""
    with anyio.fail_after(5):
        while True:
            found = [r for r in caplog.records if getattr(r, "event", None) == "standby"]
            if found:
                (record,) = found
                return record
            await anyio.sleep(0.01)


async def test_one_daemon_leads_the_next_stands_by_naming_it_and_takes_over_when_its_session_ends(
    pg_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner")
    stop = anyio.Event()
    async with leader.election(pg_store, "daemon", never_stale) as first:
        assert await first.campaign(stop) and first.proven
        await pg_store.acquire_lease("daemon", host="web1", pid=4242, pid_started=None, is_stale=never_stale)
        won = anyio.Event()
        async with anyio.create_task_group() as group, leader.election(pg_store, "daemon", never_stale) as second:

            async def campaign() -> None:
                if await second.campaign(stop):
                    won.set()

            group.start_soon(campaign)
            standby = await standing_by(caplog)
            assert (standby.pid, standby.host) == (4242, "web1")  # type: ignore[attr-defined]
            assert not won.is_set()
            assert [r.event for r in caplog.records].count("leader_elected") == 1  # type: ignore[attr-defined]

            await first.close()  # as a dead leader's socket closes
            started = time.monotonic()
            with anyio.fail_after(5):
                await won.wait()
            assert time.monotonic() - started <= leader.RETRY_EVERY + 0.5


async def test_a_standby_stops_campaigning_when_told(pg_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner")
    async with leader.election(pg_store, "daemon", never_stale) as first, leader.election(
        pg_store, "daemon", never_stale
    ) as second:
        assert await first.campaign(anyio.Event())
        await pg_store.acquire_lease("daemon", host="web1", pid=4242, pid_started=None, is_stale=never_stale)
        stop = anyio.Event()
        results: list[bool] = []
        done = anyio.Event()
        async with anyio.create_task_group() as group:

            async def campaign() -> None:
                results.append(await second.campaign(stop))
                done.set()

            group.start_soon(campaign)
            await standing_by(caplog)
            stop.set()
            with anyio.fail_after(1):
                await done.wait()
        assert results == [False]


async def test_a_leader_whose_session_is_ended_loses_the_leadership(
    pg_store: Store, pg_url: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setattr(leader, "CHECK_EVERY", 0.1)
    async with leader.election(pg_store, "daemon", never_stale) as chosen:
        assert await chosen.campaign(anyio.Event())
        holder = lock_holder(pg_url)
        assert holder is not None
        lost = anyio.Event()
        async with chosen.leading(lost.set):
            with admin(pg_url) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (holder,))
            with anyio.fail_after(leader.CHECK_EVERY + 2):
                await lost.wait()
        assert chosen.lost is not None and "session ended" in chosen.lost
    assert lock_holder(pg_url) is None


async def test_a_leader_whose_session_stops_answering_gives_up_and_lets_go(
    pg_store: Store, pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """As when the network to the server fails: the server still thinks the session alive."""
    monkeypatch.setattr(leader, "CHECK_EVERY", 0.1)
    monkeypatch.setattr(leader, "CHECK_TIMEOUT", 0.5)
    async with leader.election(pg_store, "daemon", never_stale) as chosen:
        assert await chosen.campaign(anyio.Event())
        holder = lock_holder(pg_url)
        assert holder is not None
        try:
            os.kill(holder, signal.SIGSTOP)
        except PermissionError:
            pytest.skip("cannot stop the server's processes (not root, nor their owner)")
        try:
            lost = anyio.Event()
            async with chosen.leading(lost.set):
                with anyio.fail_after(3):
                    await lost.wait()
        finally:
            os.kill(holder, signal.SIGCONT)
        assert chosen.lost == "its session did not answer within 0.5s"
    # The leader closed its end: once the server reads that, the lock is free.
    deadline = time.monotonic() + 5
    while lock_holder(pg_url) is not None:
        assert time.monotonic() < deadline, "the lock stayed held"
        await anyio.sleep(0.05)
    assert [r.getMessage() for r in caplog.records if r.name == "psycopg"] == []


async def test_on_sqlite_there_is_nothing_to_elect(tmp_path: Path) -> None:
    async with open_store(database_url(tmp_path / "runner.db")) as store, leader.election(
        store, "daemon", never_stale
    ) as sole:
        assert await sole.campaign(anyio.Event()) and not sole.proven
        async with sole.leading(lambda: pytest.fail("a sole daemon lost the leadership")):
            await anyio.sleep(0.05)
        assert sole.lost is None


def test_a_leader_cut_off_from_the_server_gives_up_before_the_server_frees_the_lock() -> None:
    assert leader.CHECK_EVERY + leader.CHECK_TIMEOUT < leader.SERVER_GIVES_UP - 2


async def test_the_second_of_two_fires_of_one_time_records_nothing_and_says_so(store: Store) -> None:
    await store.save_schedule_states([ScheduleState("tick", '{"every": 1}', 0.0, 1.0)], [])
    fire = Fire("tick", 2.0, 1.0)

    def row(run_id: str) -> QueuedRun:
        return QueuedRun(
            id=run_id, task="tick", type=TaskType.SHELL, attempt=1, trigger="schedule", parent_id=None,
            invocation=run_id, parameters_json="{}", queued_at=time.time(), scheduled_for=1.0, owner=Owner("h", 1, None),
        )

    recorder = Recorder(store)
    async with anyio.create_task_group() as group:
        await group.start(recorder.run)
        assert await recorder.queued([row("first")], fires=[fire]) == []
        assert await recorder.queued([row("second")], fires=[fire]) == ["tick"]
        assert await recorder.queued([row("unrelated")]) == []
        recorder.close()
    assert sorted(r.id for r in await store.runs()) == ["first", "unrelated"]
