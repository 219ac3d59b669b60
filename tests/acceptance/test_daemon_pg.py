"""Several `runner daemon`s on one PostgreSQL store, as operators run them for availability:
one leads and fires, the others stand by; `kill -9`, a lost session and SIGTERM hand the lead
over, and no fire runs twice.

Real processes, their JSON logs read as in test_daemon.py (whose Daemon helper this reuses),
the store read with psycopg.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from conftest import Cli, ProjectDir, poll
from pg import OF_THIS_DATABASE, pg_server, pg_url  # noqa: F401
from test_daemon import Daemon

from runner.leader import LEADER_LOCK

pytestmark = pytest.mark.timeout(60)

TAKEOVER_BOUND = 5.0
"""Seconds from a leader's death to another daemon leading, at most (measured: about 0.5)."""

TICK = """
    version: 1
    tasks:
      tick:
        command: sleep 0.6
        schedule: {every: 1s}
"""


class PgCli(Cli):
    """`runner --db URL ...`: every command on the PostgreSQL store."""

    def __init__(self, project: ProjectDir, url: str) -> None:
        super().__init__(project)
        self.url = url

    def argv(self, *args: str) -> list[str]:
        return super().argv("--db", self.url, *args)


@pytest.fixture
def cli(project: ProjectDir, pg_url: str) -> Any:  # noqa: F811
    runner = PgCli(project, pg_url)
    yield runner
    runner.cleanup()


def query(cli: PgCli, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(cli.url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["at"]).timestamp()


def the_leader(daemons: list[Daemon]) -> Daemon:
    """The one daemon of ``daemons`` that says it leads, once the others say they stand by."""
    poll(
        lambda: all(d.events("leader_elected") or d.events("standby") for d in daemons),
        within=15,
        what="each daemon to lead or stand by:\n" + "\n".join(d.log_path.read_text() for d in daemons),
    )
    leaders = [d for d in daemons if d.events("leader_elected")]
    assert len(leaders) == 1, [d.log_path.read_text() for d in leaders]
    return leaders[0]


def check_the_runs(cli: PgCli) -> list[tuple[Any, ...]]:
    """Every fire time has one run, and every run ended; the runs (status, pid)."""
    runs = query(cli, "SELECT scheduled_for, status, pid FROM runs WHERE task = 'tick' ORDER BY queued_at")
    twice = {slot: n for slot, n in Counter(slot for slot, _, _ in runs).items() if n > 1}
    assert not twice, f"fires that ran twice: {twice}"
    assert not [r for r in runs if r[1] in ("queued", "running")], runs
    return [(status, pid) for _, status, pid in runs]


def test_one_daemon_of_three_leads_and_a_standby_takes_over_from_a_leader_killed_with_9(
    project: ProjectDir, cli: PgCli
) -> None:
    project.tasks("a.yaml", TICK)
    daemons = [Daemon(cli) for _ in range(3)]
    first = the_leader(daemons)
    standbys = [d for d in daemons if d is not first]
    for standby in standbys:
        (said,) = standby.events("standby")
        assert (said["pid"], said["host"]) == (first.process.pid, first.events("leader_elected")[0]["host"])
        assert standby.events("daemon_started") == standby.events("fired") == []

    started = time.monotonic()
    assert standbys[0].stop() == 0
    assert time.monotonic() - started < 5, "a standby took long to stop"

    # Killed while a run of it goes on (each lasts 0.6 of every second).
    fired = len(first.wait_for("fired", count=2, task="tick"))
    first.wait_for("fired", count=fired + 1, task="tick")
    first.process.kill()
    killed_at = time.time()
    first.process.wait()
    first.log_file.close()

    second = standbys[1]
    (elected,) = second.wait_for("leader_elected", within=TAKEOVER_BOUND + 5)
    took = at(elected) - killed_at
    print(f"takeover after kill -9: {took:.3f}s")
    assert took < TAKEOVER_BOUND
    (taken,) = second.wait_for("lease_taken_over")
    assert taken["pid"] == first.process.pid
    second.wait_for("run_finished", count=2, task="tick", status="succeeded")
    assert second.stop() == 0

    runs = check_the_runs(cli)
    assert ("interrupted", first.process.pid) in runs  # the run it was killed in, marked at takeover
    assert {pid for _, pid in runs} == {first.process.pid, second.process.pid}


def test_a_leader_that_loses_its_session_exits_2_and_one_stopped_hands_over(project: ProjectDir, cli: PgCli) -> None:
    project.tasks("a.yaml", TICK)
    daemons = [Daemon(cli), Daemon(cli)]
    first = the_leader(daemons)
    (second,) = [d for d in daemons if d is not first]
    first.wait_for("fired", task="tick")

    # As when a proxy or an administrator ends the session: the lock goes with it.
    (ended,) = query(
        cli,
        "SELECT pg_terminate_backend(pid) FROM pg_locks "
        "WHERE locktype = 'advisory' AND granted AND classid = %s AND objid = %s"
        f" AND {OF_THIS_DATABASE}",  # not the other tests' daemons, in their databases beside this one
        LEADER_LOCK >> 32,
        LEADER_LOCK & 0xFFFFFFFF,
    )
    assert ended == (True,)
    first.wait_for("leadership_lost")
    assert first.process.wait(timeout=10) == 2
    first.log_file.close()
    assert "lost the leadership" in first.log_path.read_text().splitlines()[-1]
    second.wait_for("leader_elected")

    third = Daemon(cli)
    (said,) = third.wait_for("standby", within=15)
    assert said["pid"] == second.process.pid
    second.wait_for("run_finished", task="tick", status="succeeded")
    stopped_at = time.time()
    assert second.stop() == 0
    (elected,) = third.wait_for("leader_elected")
    print(f"hand-over after SIGTERM: {at(elected) - stopped_at:.3f}s")
    assert third.events("lease_taken_over") == [], "the stopped leader left its lease behind"
    third.wait_for("run_finished", task="tick", status="succeeded")
    assert third.stop() == 0

    runs = check_the_runs(cli)
    assert {pid for _, pid in runs} == {d.process.pid for d in (first, second, third)}
