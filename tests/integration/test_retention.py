"""Retention: ``Store.prune_runs`` on a real SQLite file.

Runs are written straight into the file with ``sqlite3`` (ages and statuses the engine would take
days to produce), pruned through the store, and what is left is read back from outside with
``sqlite3``, as an operator would see it. One test prunes 20,000 runs while another process
writes, and measures how long that writer waits for the lock.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import cli_env
from sqlalchemy import event
from sqlalchemy.engine import Engine

from runner.errors import RunNotFound
from runner.store import Store, open_store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

DAY = 86_400.0
NOW = time.time()
FINISHED = ("succeeded", "failed", "timed_out", "cancelled", "interrupted", "skipped")


def add_runs(db: Path, *runs: dict[str, Any], logs_per_run: int = 2) -> None:
    """Insert runs (``id``, ``task``, ``status``, ``queued``: seconds ago, ``ended``: seconds
    ago or None) and ``logs_per_run`` log lines for each."""
    rows, logs = [], []
    for run in runs:
        queued = NOW - run["queued"]
        ended = run.get("ended", run["queued"])
        finished = NOW - ended if ended is not None and run["status"] in FINISHED else None
        rows.append((run["id"], run["task"], run["status"], queued, finished))
        logs += [(run["id"], queued, "info", f"line {n}") for n in range(logs_per_run)]
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany(
            "INSERT INTO runs (id, task, type, status, attempt, trigger, parameters, queued_at,"
            " finished_at, host, pid) VALUES (?, ?, 'shell', ?, 1, 'cli', '{}', ?, ?, 'elsewhere', 1)",
            rows,
        )
        conn.executemany("INSERT INTO run_logs (run_id, at, level, message) VALUES (?, ?, ?, ?)", logs)


def run_ids(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM runs")}


def logged_run_ids(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT DISTINCT run_id FROM run_logs")}


def run(run_id: str, task: str, status: str, queued: float, ended: float | None = None) -> dict[str, Any]:
    return {"id": run_id, "task": task, "status": status, "queued": queued, "ended": queued if ended is None else ended}


# Ages in days. "keeps" says why a run stays under the policy of 30 days and no count limit.
AGED = [
    run("a-old-succeeded", "a", "succeeded", 40 * DAY),
    run("a-old-failed", "a", "failed", 40 * DAY),
    run("a-old-skipped", "a", "skipped", 35 * DAY),
    run("a-old-interrupted", "a", "interrupted", 31 * DAY),
    run("a-old-running", "a", "running", 40 * DAY),  # keeps: unfinished
    run("a-old-queued", "a", "queued", 50 * DAY),  # keeps: unfinished
    run("a-long", "a", "failed", 40 * DAY, ended=10 * DAY),  # keeps: ended 10 days ago
    run("a-new-succeeded", "a", "succeeded", 1 * DAY),  # keeps: young, a's latest succeeded
    run("a-new-failed", "a", "failed", 3600),  # keeps: young
    run("b-older-succeeded", "b", "succeeded", 60 * DAY),
    run("b-latest-succeeded", "b", "succeeded", 45 * DAY),  # keeps: b's latest succeeded
    run("b-later-failed", "b", "failed", 40 * DAY),
    run("c-only-failed", "c", "failed", 90 * DAY),  # c never succeeded: nothing to keep
]
AGED_KEPT = {"a-old-running", "a-old-queued", "a-long", "a-new-succeeded", "a-new-failed", "b-latest-succeeded"}


async def test_prunes_the_finished_runs_older_than_the_limit(db: Path, store: Store) -> None:
    add_runs(db, *AGED)

    pruned = await store.prune_runs(older_than=30 * DAY, keep_per_task=None)

    assert run_ids(db) == AGED_KEPT
    assert pruned == len(AGED) - len(AGED_KEPT)
    assert logged_run_ids(db) == AGED_KEPT


async def test_a_dry_run_counts_and_deletes_nothing(db: Path, store: Store) -> None:
    add_runs(db, *AGED)

    assert await store.prune_runs(older_than=30 * DAY, keep_per_task=None, dry_run=True) == len(AGED) - len(AGED_KEPT)
    assert await store.prune_runs(older_than=30 * DAY, keep_per_task=2, dry_run=True) == 8

    assert run_ids(db) == {r["id"] for r in AGED}
    assert logged_run_ids(db) == {r["id"] for r in AGED}


async def test_keeps_the_newest_runs_of_each_task(db: Path, store: Store) -> None:
    add_runs(
        db,
        run("x1", "x", "succeeded", 6 * DAY),  # keeps: x's latest succeeded
        run("x2", "x", "failed", 5 * DAY),
        run("x3", "x", "queued", 4 * DAY),  # keeps: unfinished
        run("x4", "x", "cancelled", 3 * DAY),
        run("x5", "x", "failed", 2 * DAY),  # keeps: newest three
        run("x6", "x", "running", 1 * DAY),  # keeps: newest three
        run("x7", "x", "timed_out", 3600),  # keeps: newest three
        run("y1", "y", "failed", 9 * DAY),  # keeps: y has only three runs
        run("y2", "y", "succeeded", 8 * DAY),
        run("y3", "y", "failed", 7 * DAY),
    )

    pruned = await store.prune_runs(older_than=None, keep_per_task=3)

    assert run_ids(db) == {"x1", "x3", "x5", "x6", "x7", "y1", "y2", "y3"}
    assert pruned == 2
    assert logged_run_ids(db) == run_ids(db)


async def test_runs_queued_at_the_same_moment_are_ranked_by_id(db: Path, store: Store) -> None:
    add_runs(db, *[run(f"t{n}", "t", "failed", DAY) for n in range(5)])

    assert await store.prune_runs(older_than=None, keep_per_task=2) == 3

    assert run_ids(db) == {"t3", "t4"}  # what `runner runs --task t --limit 2` lists


async def test_either_limit_prunes_a_run(db: Path, store: Store) -> None:
    add_runs(
        db,
        run("old", "z", "failed", 40 * DAY),  # past the age limit, though among the newest five
        *[run(f"z{n}", "z", "failed", (10 - n) * DAY) for n in range(10)],  # z0..z4 past the count
    )

    assert await store.prune_runs(older_than=30 * DAY, keep_per_task=5) == 6

    assert run_ids(db) == {"z5", "z6", "z7", "z8", "z9"}


async def test_zero_or_none_turns_a_limit_off(db: Path, store: Store) -> None:
    add_runs(db, *AGED)
    everything = {r["id"] for r in AGED}

    for older_than, keep in [(0, 0), (None, None), (0, None), (None, 0)]:
        assert await store.prune_runs(older_than=older_than, keep_per_task=keep) == 0
    assert run_ids(db) == everything

    assert await store.prune_runs(older_than=0, keep_per_task=100) == 0
    assert await store.prune_runs(older_than=100 * DAY, keep_per_task=0) == 0
    assert run_ids(db) == everything


async def test_negative_limits_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="negative"):
        await store.prune_runs(older_than=-1, keep_per_task=None)
    with pytest.raises(ValueError, match="negative"):
        await store.prune_runs(older_than=None, keep_per_task=-1)


async def test_pruned_runs_are_gone_from_the_history(db: Path, store: Store) -> None:
    add_runs(db, *AGED)

    await store.prune_runs(older_than=30 * DAY, keep_per_task=None)

    assert {r.id for r in await store.runs(limit=None)} == AGED_KEPT
    with pytest.raises(RunNotFound):
        await store.run("a-old-failed")
    assert [r.id for r in await store.runs(task="b", status="succeeded", limit=1)] == ["b-latest-succeeded"]


@pytest.fixture
def statements() -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement executed while the test runs, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    yield seen
    event.remove(Engine, "before_cursor_execute", record)


async def test_every_query_uses_an_index(db: Path, store: Store, statements: list[tuple[str, Any]]) -> None:
    add_runs(db, *AGED, *[run(f"k{n:03d}", "k", "failed", n * 60) for n in range(50)])
    statements.clear()

    await store.prune_runs(older_than=30 * DAY, keep_per_task=10)

    assert statements
    with closing(sqlite3.connect(db)) as conn:
        for statement, parameters in statements:
            if statement.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
                continue
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, parameters)]
            full_scans = [step for step in plan if step.startswith("SCAN") and "COVERING INDEX" not in step]
            assert not full_scans, f"{statement}\n{plan}"


WRITER = textwrap.dedent(
    """
    import json, sqlite3, sys, time
    from pathlib import Path

    db, stop = sys.argv[1], Path(sys.argv[2])
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = NORMAL")
    waits, seen, n = [], [], 0
    while not stop.exists():
        n += 1
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO runs (id, task, type, status, attempt, trigger, parameters, queued_at, host, pid)"
            " VALUES (?, 'writer', 'shell', 'queued', 1, 'cli', '{}', ?, 'elsewhere', 1)",
            (f"w{n:031d}", time.time()),
        )
        conn.execute("COMMIT")
        waits.append(time.monotonic() - started)
        seen.append(conn.execute("SELECT count(*) FROM runs WHERE task = 'old'").fetchone()[0])
        if n == 1:
            print("ready", flush=True)
        time.sleep(0.001)
    print(json.dumps({"waits": waits, "seen": seen}))
    """
)


@pytest.mark.slow
def test_a_large_prune_lets_another_process_write_in_between(db: Path, tmp_path: Path) -> None:
    many = 20_000

    async def create() -> None:
        async with open_store(db):
            pass

    anyio.run(create)
    add_runs(db, *[run(f"old{n:05d}", "old", "failed", 40 * DAY + n) for n in range(many)], logs_per_run=1)
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(stop)],
        stdout=subprocess.PIPE,
        env=cli_env(),
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"

        async def prune() -> tuple[int, float]:
            async with open_store(db) as store:
                started = time.monotonic()
                pruned = await store.prune_runs(older_than=30 * DAY, keep_per_task=None)
                return pruned, time.monotonic() - started

        pruned, took = anyio.run(prune)
        stop.touch()
        report = json.loads(writer.communicate(timeout=30)[0])
    finally:
        writer.kill()
        writer.wait()

    assert pruned == many
    assert run_ids(db) == {f"w{n:031d}" for n in range(1, len(report["waits"]) + 1)}
    assert logged_run_ids(db) == set()
    between = sorted({count for count in report["seen"] if 0 < count < many}, reverse=True)
    assert len(between) >= 5, f"the writer saw only {between} runs left in {took:.2f}s of pruning"
    assert max(report["waits"]) < 0.5, f"a write waited {max(report['waits']):.3f}s for the lock"

