"""The SQLite store on a real file: schema, versions, WAL, sync writes, and several processes at once.

The database is inspected with the plain ``sqlite3`` module, from outside the store, the way an
operator (or another process) would see it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import ProjectDir, cli_env

from runner.errors import StoreError, StoreVersionError
from runner.models import Source, TaskSpec, TaskType
from runner.store import CURRENT_VERSION, migrations, open_store
from runner.syncplan import Wanted, plan

pytestmark = pytest.mark.timeout(30)

TABLES = {"schema_version", "tasks", "runs", "run_logs"}


def spec(name: str, command: str = "echo") -> TaskSpec:
    return TaskSpec(name=name, type=TaskType.SHELL, source=Source("tasks.d/a.yaml", 3, 3), command=command)


def wanted(*specs: TaskSpec) -> dict[str, Wanted]:
    return {s.name: Wanted(s, True, None) for s in specs}


@contextmanager
def sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def tables(path: Path) -> set[str]:
    with sqlite(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def version(path: Path) -> list[tuple[int]]:
    with sqlite(path) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchall()


async def sync(db: Path, want: dict[str, Wanted]) -> dict[str, list[str]]:
    async with open_store(db) as store:
        result = await store.sync_tasks(lambda stored, _digests: plan(want, stored))
    return {k: v for k, v in result.to_json().items() if v}


# -- schema and versions -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_new_store_gets_the_schema_and_wal(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "runner.db"
    async with open_store(db) as store:
        assert await store.tasks() == {}
    assert db.is_file()
    assert tables(db) >= TABLES
    assert version(db) == [(CURRENT_VERSION,)]
    with sqlite(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.anyio
async def test_store_at_version_0_is_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    with sqlite(db) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (0)")
    async with open_store(db) as store:
        assert await sync(db, wanted(spec("a"))) == {"added": ["a"]}
        assert list(await store.tasks()) == ["a"]
    assert tables(db) >= TABLES
    assert version(db) == [(CURRENT_VERSION,)]


@pytest.mark.anyio
async def test_older_store_is_upgraded_by_the_next_migration_keeping_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "runner.db"
    await sync(db, wanted(spec("a")))

    ran: list[int] = []

    def to_next(sync_conn: Any) -> None:
        ran.append(1)
        sync_conn.exec_driver_sql("CREATE TABLE added_later (x INTEGER)")

    monkeypatch.setattr(migrations, "CURRENT_VERSION", CURRENT_VERSION + 1)
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, to_next])
    async with open_store(db) as store:
        assert list(await store.tasks()) == ["a"]
    async with open_store(db):
        pass  # already upgraded: the migration does not run twice
    assert ran == [1]
    assert "added_later" in tables(db)
    assert version(db) == [(CURRENT_VERSION + 1,)]


@pytest.mark.anyio
async def test_newer_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    await sync(db, wanted(spec("a")))
    with sqlite(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (CURRENT_VERSION + 1,))
    with pytest.raises(StoreVersionError) as caught:
        async with open_store(db):
            pytest.fail("a newer store was opened")
    message = str(caught.value)
    assert f"schema version {CURRENT_VERSION + 1}" in message
    assert f"understands up to {CURRENT_VERSION}" in message
    assert str(db) in message
    assert version(db) == [(CURRENT_VERSION + 1,)]
    with sqlite(db) as conn:
        assert conn.execute("SELECT name FROM tasks").fetchall() == [("a",)]


@pytest.mark.anyio
async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    db.write_text("this is not SQLite\n" * 100)
    with pytest.raises(StoreError, match=r"runner\.db"):
        async with open_store(db):
            pytest.fail("opened a text file as a store")
    assert db.read_text() == "this is not SQLite\n" * 100


@pytest.mark.anyio
async def test_a_store_under_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot create"):
        async with open_store(tmp_path / "file" / "runner.db"):
            pytest.fail("opened a store under a file")


# -- tasks ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tasks_round_trip_with_their_state(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    full = TaskSpec(
        name="full",
        type=TaskType.PYTHON,
        source=Source("tasks.d/sub/b.yml", 12, 3),
        callable="plugins.jobs:run",
        parameters={"a": 1, "nested": {"b": [1, 2]}},
        needs=("plain",),
        timeout=300.0,
        tags=("x",),
    )
    want = {
        "plain": Wanted(spec("plain"), True, None),
        "full": Wanted(full, False, "orphaned: cannot import plugins.jobs"),
    }
    assert await sync(db, want) == {"added": ["full", "plain"], "disabled": ["full"]}
    async with open_store(db) as store:
        stored = await store.tasks()
    assert list(stored) == ["full", "plain"]
    assert stored["full"].spec.definition() == full.definition()
    assert str(stored["full"].spec.source) == "tasks.d/sub/b.yml:12"
    assert (stored["full"].enabled, stored["full"].disabled_reason) == (False, "orphaned: cannot import plugins.jobs")
    assert (stored["plain"].enabled, stored["plain"].disabled_reason) == (True, None)


@pytest.mark.anyio
async def test_removed_tasks_keep_their_row(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    await sync(db, wanted(spec("a"), spec("b")))
    assert await sync(db, wanted(spec("a"))) == {"removed": ["b"]}
    async with open_store(db) as store:
        everything = await store.tasks()
        current = await store.tasks(include_removed=False)
    assert list(current) == ["a"]
    b = everything["b"]
    assert (b.removed, b.enabled, b.disabled_reason) == (True, False, "removed")
    assert b.spec.command == "echo"
    assert await sync(db, wanted(spec("a"), spec("b"))) == {"added": ["b"]}


@pytest.mark.anyio
async def test_a_read_of_some_tasks_spares_the_next_full_read_building_them_again(tmp_path: Path) -> None:
    # ``runner run`` syncs (reading the python tasks) and then starts its engine (reading all):
    # each spec is built from its stored JSON once, and a changed definition is built anew.
    db = tmp_path / "runner.db"
    job = TaskSpec(name="job", type=TaskType.PYTHON, source=Source("tasks.d/a.yaml", 3), callable="plugins.jobs:run")
    await sync(db, wanted(spec("a"), job))
    async with open_store(db) as store:
        python = await store.tasks(include_removed=False, task_type=TaskType.PYTHON)
        everything = await store.tasks()
        assert list(python) == ["job"] and everything["job"].spec is python["job"].spec
        assert everything["a"].spec.command == "echo"
    await sync(db, wanted(spec("a"), replace(job, timeout=5.0)))
    async with open_store(db) as store:
        stale = await store.tasks(task_type=TaskType.PYTHON)
        want = wanted(spec("a"), replace(job, timeout=9.0))
        await store.sync_tasks(lambda stored, _digests: plan(want, stored))
        assert (await store.tasks())["job"].spec.timeout == 9.0 != stale["job"].spec.timeout


@pytest.mark.anyio
async def test_sync_with_nothing_to_change_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    want = wanted(spec("a"), spec("b", "echo b"))
    await sync(db, want)
    with sqlite(db) as watcher:
        # data_version changes whenever another connection commits to the file
        before = watcher.execute("PRAGMA data_version").fetchone()
        assert await sync(db, want) == {}
        assert watcher.execute("PRAGMA data_version").fetchone() == before
        # and the probe does see a sync that changes something
        assert await sync(db, wanted(spec("a"))) == {"removed": ["b"]}
        assert watcher.execute("PRAGMA data_version").fetchone() != before


@pytest.mark.anyio
async def test_opening_an_up_to_date_store_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    await sync(db, wanted(spec("a")))
    with sqlite(db) as watcher:
        before = watcher.execute("PRAGMA data_version").fetchone()
        async with open_store(db) as store:
            await store.tasks()
        assert watcher.execute("PRAGMA data_version").fetchone() == before


# -- several processes on one store --------------------------------------------------------------

# Each process adds its own tasks, one sync at a time, keeping every task it finds: a
# read-modify-write. If two syncs planned from the same snapshot, one process's task would be
# missing from the other's plan and be marked removed; if BEGIN were deferred, one would fail
# with "database is locked". The processes start together: each says "ready", then waits for "go".
WORKER = textwrap.dedent(
    """
    import sys
    import anyio
    from runner.models import Source, TaskSpec, TaskType
    from runner.store import open_store
    from runner.syncplan import Wanted, plan

    db, me, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def keep_all_and_add(name):
        spec = TaskSpec(name=name, type=TaskType.SHELL, source=Source("tasks.d/a.yaml", 3),
                        command="echo " + name)

        def planner(stored, _digests):
            want = {n: Wanted(t.spec, t.enabled, t.disabled_reason)
                    for n, t in stored.items() if not t.removed}
            want[name] = Wanted(spec, True, None)
            return plan(want, stored)

        return planner

    async def main():
        async with open_store(db) as store:
            print("ready", flush=True)
            sys.stdin.readline()
            for i in range(rounds):
                done = await store.sync_tasks(keep_all_and_add(f"{me}-{i}"))
                assert done.added == (f"{me}-{i}",) and not done.removed, done

    anyio.run(main)
    """
)


def start_together(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=cli_env())
        for cmd in commands
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == "ready\n", proc.communicate()[1]
        results = []
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for cmd, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=25)
            results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.anyio
async def test_processes_syncing_one_store_at_once_neither_fail_nor_lose_updates(tmp_path: Path) -> None:
    db = tmp_path / "runner.db"
    async with open_store(db):
        pass
    workers, rounds = 4, 5
    results = start_together(
        [[sys.executable, "-c", WORKER, str(db), f"p{w}", str(rounds)] for w in range(workers)]
    )
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "database is locked" not in result.stderr
    async with open_store(db) as store:
        stored = await store.tasks()
    expected = {f"p{w}-{i}" for w in range(workers) for i in range(rounds)}
    assert set(stored) == expected
    assert [name for name, t in stored.items() if t.removed or not t.enabled] == []


SYNC_WHEN_TOLD = textwrap.dedent(
    """
    import sys
    from runner.cli import main
    import sqlalchemy.ext.asyncio  # the slow import, before the start line
    print("ready", flush=True)
    sys.stdin.readline()
    main(sys.argv[1:])
    """
)


def test_runner_sync_from_several_projects_into_one_new_store(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "runner.db"
    projects = []
    for i in range(4):
        p = ProjectDir(tmp_path / f"p{i}")
        p.tasks("a.yaml", f"version: 1\ntasks:\n  t{i}:\n    command: echo {i}\n  common:\n    command: echo common\n")
        projects.append(p)
    results = start_together(
        [
            [sys.executable, "-c", SYNC_WHEN_TOLD, "--project", str(p.root), "--db", str(db), "sync", "--json"]
            for p in projects
        ]
    )
    for result in results:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    # every sync made the store match its own project: the last one's tasks are current,
    # every other project's own task is kept as removed, and nothing was lost
    with sqlite(db) as conn:
        rows = dict(conn.execute("SELECT name, removed FROM tasks").fetchall())
        assert version(db) == [(CURRENT_VERSION,)]
    assert set(rows) == {"common", "t0", "t1", "t2", "t3"}
    assert rows["common"] == 0
    assert sorted(n for n, removed in rows.items() if not removed and n != "common") in (
        ["t0"], ["t1"], ["t2"], ["t3"],
    )
