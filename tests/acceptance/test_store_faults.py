"""The store's file under faults, as operators meet them: deleted or replaced under a running
daemon, `runner run` or `runner logs -f`; a full disk and a dropped table while `runner run`
records; `--db` pointed at some other program's SQLite file; a store this process may only read.

A full disk is caused for real by SQLite itself: the runner process is started with a
``sitecustomize`` that sets ``PRAGMA max_page_count`` on every connection it opens, so the
store cannot grow past a few pages more than it has, and SQLite fails the write with
SQLITE_FULL exactly as on a full disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, ProjectDir, live_members, logged_events, ok, poll, wait_for_event

pytestmark = pytest.mark.timeout(60)

STARTED = 'echo "$$ $RUNNER_RUN_ID" > started.tmp && mv started.tmp started'

TASKS = f"""
    version: 1
    tasks:
      tick:
        command: echo tick
        schedule: {{every: 0.3s}}
      slow:
        command: '{STARTED}; echo begun; sleep 30'
      wait:
        command: '{STARTED}; echo begun; while [ ! -e go ]; do sleep 0.05; done; echo done'
      big:
        command: head -c 3000000 /dev/zero | tr '\\0' x | fold -w 100
"""


class Daemon:
    """One `runner daemon` process logging JSON lines to a file."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.log_path = cli.project.root / f"daemon-{len(cli.started)}.log"
        self.log_file = self.log_path.open("w")
        self.process = cli.start("--log-format", "json", "daemon", *args, stderr=self.log_file)

    def wait_for(self, event: str, *, within: float = 10, **fields: Any) -> list[dict[str, Any]]:
        return wait_for_event(self.log_path, event, within=within, **fields)

    def exit_code(self, *, within: float) -> int:
        try:
            return self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon did not exit within {within}s:\n{self.log_path.read_text()}") from None
        finally:
            self.log_file.close()


def rows(db: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(query, args).fetchall()


def copy_store(db: Path, to: Path) -> None:
    """A consistent copy of a live store (SQLite's backup API), as a restore would bring back."""
    with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(to)) as target:
        source.backup(target)


# -- the store file deleted or replaced under a running process -------------------------------------


def test_a_daemon_whose_store_file_is_deleted_stops_at_once_saying_so(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", TASKS)
    daemon = Daemon(cli)
    daemon.wait_for("daemon_started")
    ok(cli("trigger", "slow"))
    pgid, _ = cli.task_started()
    daemon.wait_for("run_finished", task="tick")

    project.db.unlink()
    deleted_at = time.monotonic()
    code = daemon.exit_code(within=5)
    took = time.monotonic() - deleted_at

    assert code != 0, "a supervisor must see a failure, and start it again on the new file"
    assert took < 2.0, f"the daemon went on for {took:.1f}s on a deleted store"
    (said,) = logged_events(daemon.log_path, "store_file_changed")
    assert said["what"] == "deleted" and said["path"] == str(project.db)
    assert f"the store file {project.db} was deleted while runner was running" in said["message"]
    assert "restart runner" in said["message"]
    assert live_members(pgid) == [], "the running task was killed: its record can go nowhere"
    assert sorted(project.db.parent.iterdir()) == [], "the deleted file's -wal and -shm went with it"


def test_a_daemon_whose_store_file_is_replaced_stops_and_fires_nothing_into_the_new_file(
    project: ProjectDir, cli: Cli
) -> None:
    project.tasks("a.yaml", TASKS)
    first = Daemon(cli)
    first.wait_for("daemon_started")
    first.wait_for("run_finished", task="tick")

    restored = project.db.with_name("restored.db")
    copy_store(project.db, restored)
    copied = rows(restored, "SELECT count(*) FROM runs")[0][0]
    poll(lambda: rows(project.db, "SELECT count(*) FROM runs")[0][0] > copied, what="a run after the backup")
    restored.replace(project.db)  # a restore from a backup: a new file at the same path
    replaced_at = time.monotonic()
    assert first.exit_code(within=5) != 0
    assert time.monotonic() - replaced_at < 2.0
    (said,) = logged_events(first.log_path, "store_file_changed")
    assert said["what"] == "replaced"

    # The file now at the path is the backup as it was: nothing the first daemon wrote after
    # the backup (SQLite would have read that from the old file's runner.db-wal, still beside
    # it), nor after the replacement (it fires nothing into a file it did not open).
    assert rows(project.db, "SELECT count(*) FROM runs")[0][0] == copied
    assert rows(project.db, "PRAGMA integrity_check") == [("ok",)]
    second = Daemon(cli)
    second.wait_for("run_finished", task="tick")
    assert rows(project.db, "SELECT pid FROM leases")[0][0] == second.process.pid
    second.process.send_signal(signal.SIGTERM)
    assert second.exit_code(within=15) == 0


def test_runner_run_whose_store_file_is_replaced_exits_2_and_reports_no_success(
    project: ProjectDir, cli: Cli
) -> None:
    project.tasks("a.yaml", TASKS)
    ok(cli("sync"))
    running = cli.start("run", "wait")
    cli.task_started()
    copy_store(project.db, project.db.with_name("restored.db"))
    project.db.with_name("restored.db").replace(project.db)
    (project.root / "go").touch()
    result = cli.finish(running, within=10)

    assert result.returncode == 2, result.stderr
    assert f"cannot record to the store {project.db}: the file was replaced while runner was running" in result.stderr
    assert "succeeded" not in result.stderr and "done" not in result.stdout


def test_logs_follow_stops_when_the_store_file_is_deleted(project: ProjectDir, cli: Cli, tmp_path: Path) -> None:
    project.tasks("a.yaml", TASKS)
    running = cli.start("run", "slow")
    _, run_id = cli.task_started()
    printed = tmp_path / "followed"
    with printed.open("w") as stdout:
        follower = cli.start("logs", "-f", run_id, stdout=stdout)
        poll(lambda: printed.read_text() == "begun\n", what="the follower to print the first line")
        project.db.unlink()
        result = cli.finish(follower, within=5)
    assert result.returncode == 2
    assert f"the store file {project.db} was deleted while runner was running" in result.stderr
    cli.finish(running, within=10)


# -- a full disk and a dropped table while `runner run` records ----------------------------------------


@pytest.fixture
def full_store(tmp_path: Path) -> dict[str, str]:
    """The environment for a runner process whose store cannot grow more than 3 pages (12 KB)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import os
            import sqlite3

            _connect = sqlite3.connect

            def connect(*args, **kwargs):
                conn = _connect(*args, **kwargs)
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {pages + 3}")
                return conn

            sqlite3.connect = connect
            """
        )
    )
    return {"PYTHONPATH": str(hook)}


def test_a_full_disk_fails_runner_run_with_exit_2_and_no_success_line(
    project: ProjectDir, cli: Cli, full_store: dict[str, str]
) -> None:
    project.tasks("a.yaml", TASKS)
    ok(cli("sync"))
    started = time.monotonic()
    result = cli.finish(cli.start("run", "big", env=full_store), within=30)
    took = time.monotonic() - started

    assert result.returncode == 2, result.stderr
    assert "succeeded" not in result.stderr
    assert f"cannot record to the store {project.db}: database or disk is full (SQLITE_FULL)" in result.stderr
    assert "(big)" in result.stderr
    assert took < 15, f"gave up after {took:.1f}s"
    statuses = [status for (status,) in rows(project.db, "SELECT status FROM runs WHERE task = 'big'")]
    assert "succeeded" not in statuses


@pytest.fixture
def small_disk(project: ProjectDir) -> Iterator[Path]:
    """A file system of 1 MB (a tmpfs) mounted where the project's store goes: root only."""
    where = project.root / ".runner"
    where.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", "--lazy", str(where)], check=True)


def test_a_really_full_disk_fails_runner_run_the_same_way(project: ProjectDir, cli: Cli, small_disk: Path) -> None:
    project.tasks("a.yaml", TASKS)
    ok(cli("sync"))
    result = cli.finish(cli.start("run", "big"), within=30)
    assert result.returncode == 2, result.stderr
    assert "succeeded" not in result.stderr
    assert f"cannot record to the store {project.db}: database or disk is full (SQLITE_FULL)" in result.stderr


def test_sigterm_cuts_the_wait_for_a_full_disk_short(
    project: ProjectDir, cli: Cli, full_store: dict[str, str], tmp_path: Path
) -> None:
    project.tasks("a.yaml", TASKS)
    ok(cli("sync"))
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr:
        running = cli.start("run", "big", env=full_store, stderr=stderr)
        poll(lambda: "trying again" in errors.read_text(), within=15, what="the first failed write")
        running.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        result = cli.finish(running, within=10)
    took = time.monotonic() - signalled
    said = errors.read_text()
    assert result.returncode == 2, said
    assert took < 2.0, f"went on for {took:.1f}s after SIGTERM"
    assert "database or disk is full (SQLITE_FULL)" in said
    assert "succeeded" not in said and "recorded cancelled" not in said


def test_a_table_dropped_under_runner_run_fails_it_at_once(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", TASKS)
    ok(cli("sync"))
    running = cli.start("run", "wait")
    cli.task_started()
    with closing(sqlite3.connect(project.db)) as conn:
        conn.execute("DROP TABLE run_logs")
        conn.commit()
    (project.root / "go").touch()
    dropped = time.monotonic()
    result = cli.finish(running, within=15)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - dropped < 3.0, "no waiting for a failure that cannot pass"
    assert f"cannot record to the store {project.db}: no such table: run_logs (SQLITE_ERROR)" in result.stderr
    assert "succeeded" not in result.stderr


# -- --db pointed at a SQLite file that is not a runner store ------------------------------------------


def test_a_foreign_sqlite_file_is_refused_and_left_as_it_was(project: ProjectDir, cli: Cli, tmp_path: Path) -> None:
    project.tasks("a.yaml", TASKS)
    foreign = tmp_path / "app.db"
    with closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
        conn.commit()
    before = foreign.read_bytes()

    for args in (("sync",), ("list",), ("runs",), ("run", "tick")):
        result = cli("--db", str(foreign), *args)
        assert result.returncode == 2, (args, result.stdout + result.stderr)
        assert (
            f"{foreign} is a SQLite database but not a runner store (it has tables customers, orders "
            "and no schema_version); point --db at a new file or a runner store"
        ) in result.stderr
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("app.db")) == ["app.db"]


def test_an_empty_file_or_a_new_path_becomes_a_store(project: ProjectDir, cli: Cli, tmp_path: Path) -> None:
    project.tasks("a.yaml", TASKS)
    empty = tmp_path / "empty.db"
    empty.touch()
    for db in (empty, tmp_path / "new" / "runner.db"):
        assert "added:" in ok(cli("--db", str(db), "sync")).stdout
        assert rows(db, "SELECT count(*) FROM tasks")[0][0] == 4


# -- a store this process may only read ---------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Any]:
    """Makes paths read-only for the runner processes of the test, undone at the end: by file
    permissions for an ordinary user, by ``chattr +i`` for root (who ignores permissions)."""
    done: list[Path] = []
    as_root = os.geteuid() == 0
    if as_root and shutil.which("chattr") is None:
        pytest.skip("root needs chattr to make a file read-only")

    def protect(*paths: Path) -> None:
        for path in paths:
            if as_root:
                if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                    pytest.skip(f"chattr +i is not supported on the file system of {path}")
            else:
                path.chmod(path.stat().st_mode & ~0o222)
            done.append(path)

    yield protect
    for path in reversed(done):
        if as_root:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(path.stat().st_mode | 0o200)


@pytest.mark.parametrize("what", ["file", "file and directory"])
def test_a_read_only_store_can_be_read_and_writes_fail_with_exit_2(
    project: ProjectDir, cli: Cli, read_only: Any, what: str
) -> None:
    project.tasks("a.yaml", TASKS)
    ok(cli("run", "tick"))
    (run,) = cli.runs()
    before = project.db.read_bytes()
    read_only(project.db, *([project.db.parent] if what == "file and directory" else []))

    assert run["id"] in ok(cli("runs")).stdout
    assert ok(cli("show", run["id"])).stdout.startswith(f"id:          {run['id']}")
    assert "tick" in ok(cli("list")).stdout
    assert ok(cli("logs", run["id"])).stdout == "tick\n"

    project.tasks("b.yaml", "version: 1\ntasks:\n  more: {command: echo more}\n")
    for args in (("run", "tick"), ("sync",)):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stdout + result.stderr)
        assert f"cannot write the store {project.db}: it is read-only here" in result.stderr
        assert "Traceback" not in result.stderr
    assert project.db.read_bytes() == before
