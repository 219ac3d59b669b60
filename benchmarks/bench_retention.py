"""Benchmark: pruning old runs (``Store.prune_runs``, what ``runner prune`` and the daemon call).

A template store holds ``--tasks`` tasks x 1,100 runs (110,000 by default), written in the order
the engine writes them (by time, with time-ordered ids): per task 1,000 runs finished 31-120 days
ago and 100 in the last 29 days, the newest of them succeeded; each run has a 200-byte stdout
and ``--logs`` log rows. Every measurement starts from a fresh copy of the template, in process:

1. by age: ``prune_runs(older_than=30d, keep_per_task=1000)``, the defaults; prunes the 100,000
   old runs, oldest first.
2. by count: ``prune_runs(older_than=None, keep_per_task=100)``; prunes the same 100,000 runs,
   task by task, so each batch is spread over the whole file.
3. each of the two again with another process writing a one-row transaction every millisecond
   (a stand-in for the records of running tasks, on a connection set up as runner's are): how
   long its ``BEGIN IMMEDIATE`` waited for the lock, and how long each of its writes took in
   all (which includes the automatic checkpoints its own commits run: see below).
4. a dry run of 1, and a prune with nothing due (``older_than=365d``, ``keep_per_task=2000``):
   the cost of the daemon's hourly prune on a store that is kept trimmed.
5. large runs: ``--fat`` runs (default 2,000) of one task, each with 100 KB of stdout, 20 KB of
   stderr and 100 streamed log rows of 1 KB (520 MB in all), pruned by age with the other
   writer busy: the longest write transaction, and the writer's longest wait.

For 1 and 2: the total time, how many write transactions, and the longest one, timed from
before its ``BEGIN IMMEDIATE`` to the end of its ``COMMIT`` by wrapping ``Store._write`` (nothing
else writes then), and the file size before, after, and after ``VACUUM``. That time includes
the automatic checkpoint SQLite runs inside a ``COMMIT`` that takes the WAL past 1,000 pages,
which happens after the write lock is released; so each case runs once more with
``PRAGMA wal_autocheckpoint = 0`` to time the transactions alone.

Usage::

    .venv/bin/python benchmarks/bench_retention.py [--tasks 100] [--logs 2] [--fat 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio

DAY = 86_400.0
OLD, RECENT = 1_000, 100  # runs per task

WRITER = textwrap.dedent(
    """
    import json, sqlite3, sys, time
    from pathlib import Path

    db, stop = sys.argv[1], Path(sys.argv[2])
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = NORMAL")
    waits, n = [], 0
    while not stop.exists():
        n += 1
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        locked = time.monotonic()
        conn.execute(
            "INSERT INTO runs (id, task, type, status, attempt, trigger, parameters, queued_at, host, pid)"
            " VALUES (?, 'writer', 'shell', 'queued', 1, 'cli', '{}', ?, 'bench', 1)",
            (f"w{n:031d}", time.time()),
        )
        conn.execute("COMMIT")
        waits.append((locked - started, time.monotonic() - started))
        if n == 1:
            print("ready", flush=True)
        time.sleep(0.001)
    print(json.dumps(waits))
    """
)


def build_template(db: Path, tasks: int, logs: int, seed: int = 1) -> None:
    from runner.store import open_store

    async def create() -> None:
        async with open_store(db):
            pass

    anyio.run(create)
    rng = random.Random(seed)
    now = time.time()
    planned = []
    for t in range(tasks):
        ages = sorted((rng.uniform(31, 120) * DAY for _ in range(OLD)), reverse=True)
        ages += sorted((rng.uniform(0.01, 29) * DAY for _ in range(RECENT)), reverse=True)
        for i, age in enumerate(ages):
            last = i == len(ages) - 1
            status = "succeeded" if last or rng.random() < 0.8 else "failed"
            planned.append((now - age, f"task{t:03d}", status))
    planned.sort()
    runs, lines = [], []
    for n, (queued, task, status) in enumerate(planned):
        run_id = f"{int(queued * 1000):012x}{n:020x}"
        runs.append((run_id, task, status, queued, queued + 0.1, queued + 1.1, 1.0, 0 if status == "succeeded" else 1,
                     "x" * 200, "", run_id[:20]))
        lines.extend((run_id, queued + 0.5, "info", f"log line {k} of {run_id}") for k in range(logs))
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany(
            "INSERT INTO runs (id, task, type, status, attempt, trigger, parameters, queued_at, started_at,"
            " finished_at, duration_s, exit_code, stdout, stderr, invocation, host, pid)"
            " VALUES (?, ?, 'shell', ?, 1, 'schedule', '{\"a\": 1}', ?, ?, ?, ?, ?, ?, ?, ?, 'bench', 1)",
            runs,
        )
        conn.executemany("INSERT INTO run_logs (run_id, at, level, message) VALUES (?, ?, ?, ?)", lines)


def build_fat(db: Path, count: int) -> None:
    """``count`` runs of one task, finished 40 days ago, each with 120 KB of output and 100
    streamed log rows of 1 KB."""
    from runner.store import open_store

    async def create() -> None:
        async with open_store(db):
            pass

    anyio.run(create)
    start = time.time() - 40 * DAY
    with closing(sqlite3.connect(db)) as conn, conn:
        for n in range(count):
            queued = start + n
            run_id = f"{int(queued * 1000):012x}{n:020x}"
            conn.execute(
                "INSERT INTO runs (id, task, type, status, attempt, trigger, parameters, queued_at, finished_at,"
                " stdout, stderr, host, pid) VALUES (?, 'fat', 'shell', 'failed', 1, 'cli', '{}', ?, ?, ?, ?, 'bench', 1)",
                (run_id, queued, queued + 1, "o" * 100_000, "e" * 20_000),
            )
            conn.executemany(
                "INSERT INTO run_logs (run_id, at, level, message, stream) VALUES (?, ?, '', ?, 'stdout')",
                [(run_id, queued, "l" * 1023 + "\n")] * 100,
            )


def fresh_copy(template: Path, db: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, db)
    return db


def timed_writes() -> list[float]:
    """Wrap ``Store._write`` to record how long each write transaction took; return the list."""
    from runner.store import Store

    took: list[float] = []
    original = Store._write

    @asynccontextmanager
    async def write(self: Store) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            async with original(self) as conn:
                yield conn
        finally:
            took.append(time.perf_counter() - started)

    Store._write = write  # type: ignore[method-assign]
    return took


def prune(
    db: Path, older_than: float | None, keep: int | None, dry_run: bool = False, checkpoints: bool = True
) -> tuple[int, float]:
    from sqlalchemy import event

    from runner.store import open_store

    def no_checkpoints(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA wal_autocheckpoint = 0")

    async def go() -> tuple[int, float]:
        async with open_store(db) as store:
            if not checkpoints:
                event.listen(store.engine.sync_engine.engine, "connect", no_checkpoints)
                await store.engine.dispose()
            started = time.perf_counter()
            pruned = await store.prune_runs(older_than=older_than, keep_per_task=keep, dry_run=dry_run)
            return pruned, time.perf_counter() - started

    return anyio.run(go)


def with_writer(
    db: Path, scratch: Path, older_than: float | None, keep: int | None
) -> tuple[float, list[tuple[float, float]]]:
    """Prune while another process writes; the prune's time, and for each of the writer's
    writes, how long it waited for the lock and how long it took in all."""
    stop = scratch / "stop"
    stop.unlink(missing_ok=True)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        _, seconds = prune(db, older_than, keep)
        stop.touch()
        waits = [(lock, total) for lock, total in json.loads(writer.communicate(timeout=60)[0])]
    finally:
        writer.kill()
        writer.wait()
    return seconds, waits


def file_size(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.stat().st_size


def vacuumed_size(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("VACUUM")
    return file_size(db)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100, help="tasks, 1,100 runs each (default 100)")
    parser.add_argument("--logs", type=int, default=2, help="log rows per run (default 2)")
    parser.add_argument("--fat", type=int, default=2000, help="large runs for measurement 5 (default 2000; 0: skip)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import runner

    due = args.tasks * OLD
    total = args.tasks * (OLD + RECENT)
    cases = {"by age": (30 * DAY, 1000), "by count": (None, RECENT)}
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        template = scratch / "template.db"
        build_template(template, args.tasks, args.logs)
        size_full = file_size(template)
        db = scratch / "m.db"
        took = timed_writes()
        results: dict[str, dict[str, list[Any]]] = {
            c: {"total": [], "txns": [], "longest": [], "bare": [], "waits": [], "with_writer": []} for c in cases
        }
        dry, idle, fat_longest, fat_waits, fat_writes = [], [], [], [], []
        fat_template = scratch / "fat.db"
        if args.fat:
            build_fat(fat_template, args.fat)
        sizes: dict[str, tuple[int, int]] = {}
        for _ in range(args.repeat):  # interleaved, so that a burst of load hits every figure
            for case, (older_than, keep) in cases.items():
                took.clear()
                pruned, seconds = prune(fresh_copy(template, db), older_than, keep)
                assert pruned == due, f"{case}: pruned {pruned}, expected {due}"
                result = results[case]
                result["total"].append(seconds)
                result["txns"].append(len(took))
                result["longest"].append(max(took))
                sizes[case] = (file_size(db), vacuumed_size(db))
                took.clear()
                prune(fresh_copy(template, db), older_than, keep, checkpoints=False)
                result["bare"].append(max(took))
                seconds, waits = with_writer(fresh_copy(template, db), scratch, older_than, keep)
                result["with_writer"].append(seconds)
                result["waits"].extend(waits)
            pruned, seconds = prune(fresh_copy(template, db), *cases["by age"], dry_run=True)
            assert pruned == due
            dry.append(seconds)
            pruned, seconds = prune(db, 365 * DAY, 2000)
            assert pruned == 0
            idle.append(seconds)
            if args.fat:
                took.clear()
                _, waits = with_writer(fresh_copy(fat_template, db), scratch, 30 * DAY, None)
                fat_longest.append(max(took))
                fat_waits.append(max(lock for lock, _ in waits))
                fat_writes.append(max(total for _, total in waits))
    load_after = load()

    med = statistics.median
    print(f"store: {total:,} runs of {args.tasks} tasks, {args.logs} log rows each, {size_full / 1e6:.1f} MB; "
          f"{due:,} due")
    print(f"{'measure':50} {'median':>12} {'min':>12} {'max':>12}")
    for case, result in results.items():
        for label, values in (
            (f"{case}: prune {due:,} runs, total", result["total"]),
            (f"{case}: longest write transaction", result["longest"]),
            (f"{case}:   the same, no automatic checkpoints", result["bare"]),
            (f"{case}: the same prune, another writer busy", result["with_writer"]),
        ):
            print(f"{label:50} {ms(med(values)):>12} {ms(min(values)):>12} {ms(max(values)):>12}")
        txns = result["txns"]
        print(f"{case + ': write transactions':50} {med(txns):>12,.0f} {min(txns):>12,} {max(txns):>12,}")
        for label, index in (("waited for the lock", 0), ("took per write", 1)):
            values = sorted(pair[index] for pair in result["waits"])
            p99 = values[int(len(values) * 0.99)]
            print(f"{case + ': the other writer ' + label:50} median {ms(med(values))}, p99 {ms(p99)}, "
                  f"max {ms(values[-1])} ({len(values):,} writes)")
        after, vacuumed = sizes[case]
        print(f"{case + ': file size after, after VACUUM':50} {after / 1e6:.1f} MB, {vacuumed / 1e6:.1f} MB")
    print(f"{'dry run (by age)':50} {ms(med(dry)):>12} {ms(min(dry)):>12} {ms(max(dry)):>12}")
    idle_label = f"nothing due ({total:,} runs)"
    print(f"{idle_label:50} {ms(med(idle)):>12} {ms(min(idle)):>12} {ms(max(idle)):>12}")
    if args.fat:
        label = f"{args.fat:,} large runs: longest write (lock wait incl.)"
        print(f"{label:50} {ms(med(fat_longest)):>12} {ms(min(fat_longest)):>12} {ms(max(fat_longest)):>12}")
        label = f"{args.fat:,} large runs: the writer's longest lock wait"
        print(f"{label:50} {ms(med(fat_waits)):>12} {ms(min(fat_waits)):>12} {ms(max(fat_waits)):>12}")
        label = f"{args.fat:,} large runs: the writer's longest write"
        print(f"{label:50} {ms(med(fat_writes)):>12} {ms(min(fat_writes)):>12} {ms(max(fat_writes)):>12}")
    print(f"(repeat {args.repeat}; python {platform.python_version()}; sqlite {sqlite3.sqlite_version}; "
          f"nproc {os.cpu_count()}; runner from {Path(runner.__file__).parent})")
    print(f"(load average before: {load_before}; after: {load_after})")


if __name__ == "__main__":
    sys.exit(main())
