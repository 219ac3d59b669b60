"""A python task's injected ``AsyncSession`` beside a busy `runner daemon`, on SQLite and
PostgreSQL: a task that reads and then waits stops no schedule and no record; a task's writes are
committed when it succeeds and rolled back when it fails or times out; a task that holds a write
transaction on purpose holds the records back (on SQLite), and none is lost or reported early.

Real daemon processes, their JSON logs read as in test_daemon.py (whose Daemon helper this
reuses), the store read with sqlite3 or psycopg beside them.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import pytest
from conftest import Cli, ProjectDir, ok, poll
from pg import pg_server, pg_url  # noqa: F401
from test_daemon import Daemon

pytestmark = pytest.mark.timeout(60)

EVERY = 0.5
"""The interval of ``quick``, the task that fires beside the sessions."""

LATE = 1.0
"""Seconds after its fire time by which a run of ``quick`` counts as started on time: a store
locked by a task's session held every start back for the whole of that task (seconds)."""

PLUGIN = """
from pathlib import Path

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


async def reader(session: AsyncSession) -> int:
    n = (await session.execute(text("SELECT count(*) FROM runs"))).scalar_one()
    await anyio.sleep(4)  # an HTTP call, a long computation
    return int(n)


async def note(session: AsyncSession, tag: str, then: str = "return") -> int:
    seen = (await session.execute(text("SELECT count(*) FROM runs"))).scalar_one()
    await anyio.sleep(0.6)  # the daemon commits meanwhile: the write below must get its turn
    await session.execute(text("INSERT INTO notes (tag) VALUES (:tag)"), {"tag": tag})
    if then == "raise":
        raise RuntimeError("changed my mind")
    if then == "hang":
        await anyio.sleep(30)
    return int(seen)


async def hold(session: AsyncSession) -> None:
    await session.execute(text("CREATE TABLE held (n INTEGER)"))
    await session.execute(text("INSERT INTO held (n) VALUES (1)"))
    Path("holding").write_text("yes")
    await anyio.sleep(3)  # with its write transaction open, on purpose (see the test's last check)
"""

QUICK = f"""
version: 1
tasks:
  quick:
    command: echo tick
    schedule: {{every: {EVERY}s}}
"""

Query = Callable[[str], list[tuple[Any, ...]]]


class DbCli(Cli):
    """`runner --db URL ...`: every command on the test's store."""

    def __init__(self, project: ProjectDir, db: str) -> None:
        super().__init__(project)
        self.db = db

    def argv(self, *args: str) -> list[str]:
        return super().argv("--db", self.db, *args)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, project: ProjectDir) -> Iterator[tuple[DbCli, Query]]:
    """A CLI on a SQLite or a PostgreSQL store, and a way to read that store."""
    if request.param == "sqlite":
        cli = DbCli(project, str(project.db))

        def query(sql: str) -> list[tuple[Any, ...]]:
            with closing(sqlite3.connect(project.db, isolation_level=None)) as conn:
                return conn.execute(sql).fetchall()

    else:
        import psycopg
        from sqlalchemy.engine import make_url

        url: str = request.getfixturevalue("pg_url")
        cli = DbCli(project, url)
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

        def query(sql: str) -> list[tuple[Any, ...]]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                cursor = conn.execute(sql)  # type: ignore[arg-type]
                return cursor.fetchall() if cursor.description else []

    project.tasks("a.yaml", QUICK)
    project.plugin("jobs", PLUGIN)
    yield cli, query
    cli.cleanup()


def fired_between(query: Query, since: float, until: float) -> list[tuple[Any, ...]]:
    """The runs of ``quick`` fired in [since, until]: (fire time, seconds late, status)."""
    return query(
        f"SELECT scheduled_for, started_at - scheduled_for, status FROM runs WHERE task = 'quick'"
        f" AND scheduled_for >= {since} AND scheduled_for <= {until} ORDER BY scheduled_for"
    )


def all_on_time(runs: list[tuple[Any, ...]]) -> None:
    """Every fire of the interval is there (no gap in the grid), ran, and started on time."""
    fires = [fire for fire, _, _ in runs]
    assert [round((b - a) / EVERY) for a, b in itertools.pairwise(fires)] == [1] * (len(fires) - 1), runs
    assert {status for _, _, status in runs} == {"succeeded"}, runs
    assert max(late for _, late, _ in runs) < LATE, runs


def test_a_task_that_reads_and_then_waits_holds_no_schedule_and_no_record_back(
    backend: tuple[DbCli, Query], project: ProjectDir
) -> None:
    cli, query = backend
    project.tasks("b.yaml", "version: 1\ntasks:\n  reader: {type: python, callable: plugins.jobs:reader}\n")
    daemon = Daemon(cli).started()
    (run_id,) = ok(cli("trigger", "reader")).stdout.split()
    (began,) = poll(
        lambda: query(f"SELECT started_at FROM runs WHERE id = '{run_id}' AND status = 'running'"),
        what="the reader to start",
    )[0]

    # While the reader sits in its transaction, quick's runs start, end and are recorded.
    poll(
        lambda: len(query(f"SELECT id FROM runs WHERE task = 'quick' AND status = 'succeeded' AND started_at > {began}")) >= 3,
        within=3.5,
        what="three runs of quick recorded while the reader waits",
    )
    assert query(f"SELECT status FROM runs WHERE id = '{run_id}'") == [("running",)], "the reader ended too soon to tell"

    (finished,) = daemon.wait_for("run_finished", run_id=run_id, within=10)
    assert finished["status"] == "succeeded"
    (ended,) = query(f"SELECT finished_at FROM runs WHERE id = '{run_id}'")[0]
    runs = fired_between(query, began, ended)
    assert len(runs) >= 6, runs  # 4 s of fires every 0.5 s
    all_on_time(runs)
    assert daemon.events("store_error") == []
    assert daemon.stop() == 0


def test_a_tasks_writes_are_committed_when_it_succeeds_and_rolled_back_when_it_fails_or_times_out(
    backend: tuple[DbCli, Query], project: ProjectDir
) -> None:
    cli, query = backend
    # Side by side with quick: each waits its turn for the write lock after reading.
    project.tasks(
        "b.yaml",
        """
        version: 1
        tasks:
          kept:
            type: python
            callable: plugins.jobs:note
            parameters: {tag: kept}
            schedule: {every: 1s}
          failed:
            type: python
            callable: plugins.jobs:note
            parameters: {tag: failed, then: raise}
            schedule: {every: 1s}
          slow:
            type: python
            callable: plugins.jobs:note
            parameters: {tag: slow, then: hang}
            timeout: 1.5s
            schedule: {every: 1s}
        """,
    )
    ok(cli("sync"))  # creates the store
    query("CREATE TABLE notes (tag VARCHAR(20))")
    daemon = Daemon(cli).started()
    for task, status in [("kept", "succeeded"), ("failed", "failed"), ("slow", "timed_out")]:
        daemon.wait_for("run_finished", task=task, status=status, within=15)
    assert daemon.stop() == 0

    errors = query("SELECT error FROM runs WHERE task = 'failed' AND status = 'failed'")
    assert errors and all("changed my mind" in error for (error,) in errors)
    kept = query("SELECT count(*) FROM runs WHERE task = 'kept' AND status = 'succeeded'")[0][0]
    assert query("SELECT tag FROM notes") == [("kept",)] * kept
    assert daemon.events("store_error") == []


def test_a_long_write_transaction_holds_records_back_and_loses_none(
    backend: tuple[DbCli, Query], project: ProjectDir
) -> None:
    cli, query = backend
    project.tasks("b.yaml", "version: 1\ntasks:\n  hold: {type: python, callable: plugins.jobs:hold}\n")
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="quick")
    (run_id,) = ok(cli("trigger", "hold")).stdout.split()
    poll(lambda: (project.root / "holding").exists(), what="the task to hold its write transaction")

    # Whatever the daemon says has finished is in the store by then, the hold or not.
    checks = 0
    while not query(f"SELECT id FROM runs WHERE id = '{run_id}' AND finished_at IS NOT NULL"):
        said = {event["run_id"]: event["status"] for event in daemon.events("run_finished")}
        stored = dict(query("SELECT id, status FROM runs WHERE finished_at IS NOT NULL"))
        assert {run: stored.get(run) for run in said} == said
        checks += 1
        time.sleep(0.05)
    assert checks >= 3

    daemon.wait_for("run_finished", run_id=run_id, status="succeeded")
    assert query("SELECT n FROM held") == [(1,)]
    (began, ended) = query(f"SELECT started_at, finished_at FROM runs WHERE id = '{run_id}'")[0]
    count = len(daemon.events("run_finished", task="quick"))
    daemon.wait_for("run_finished", task="quick", count=count + 2)
    assert daemon.stop() == 0

    runs = fired_between(query, began, ended)
    if cli.db.startswith("postgresql"):
        all_on_time(runs)  # the task's row locks are in no row runner writes
    else:
        # The task had the write lock: the fire that came first waited for it, and the fires
        # meanwhile found that run still going (recorded skipped). When a fire slips in just
        # before the lock is taken, the next is skipped and the one after it waits: the hold
        # less two intervals, 2 s (the hold was 2 s once, and that fire came 0.976 s late).
        assert runs and {status for _, _, status in runs} <= {"succeeded", "skipped"}, runs
        assert max(late or 0.0 for _, late, _ in runs) > LATE, runs
    assert query("SELECT id FROM runs WHERE status IN ('queued', 'running')") == []
    said = {event["run_id"]: event["status"] for event in daemon.events("run_finished")}
    assert dict(query("SELECT id, status FROM runs")) == said
    assert daemon.events("store_error") == []
