"""Benchmark: recorded runs per second, shell spawn overhead, and `runner run` start-up.

Each figure is printed beside the floor it is judged against, measured in the same process:

1. 2,000 independent no-op python tasks through the engine (every run recorded queued,
   running, succeeded) vs one SQLAlchemy async commit per state change (the rate a runner
   without group commit is capped at). Target: >= 3,000 recorded runs/s.
2. 200 shell ``true`` runs through the engine vs spawning ``true`` with plain asyncio
   subprocesses at the same concurrency. Target: >= 70% of the plain rate.
3. ``runner run`` of a single task (a fresh process) vs
   ``python -c "import sqlalchemy.ext.asyncio, aiosqlite, yaml, jsonschema, click, anyio"``.
   Target: <= 1.5x.

Usage: python benchmarks/bench_runs.py [--python-tasks 2000] [--shell-tasks 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

CONCURRENCY = 16


def write_project(root: Path, python_tasks: int, shell_tasks: int) -> None:
    (root / "tasks.d").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "plugins" / "__init__.py").write_text("")
    (root / "plugins" / "noop.py").write_text("async def noop() -> None:\n    return None\n")
    lines = ["version: 1", "tasks:"]
    for i in range(python_tasks):
        lines += [f"  py{i}:", "    type: python", "    callable: plugins.noop:noop"]
    for i in range(shell_tasks):
        lines += [f"  sh{i}:", "    command: [\"true\"]"]
    lines += ["  hello:", "    command: echo hello"]
    (root / "tasks.d" / "bench.yaml").write_text("\n".join(lines) + "\n")


async def engine_rate(root: Path, db: Path, names: list[str]) -> float:
    from runner.engine import Engine
    from runner.store import open_store
    from runner.sync import sync_project

    async with open_store(db) as store:
        await sync_project(root, store)
        async with Engine(store, root, max_concurrency=CONCURRENCY) as engine:
            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                for name in names:
                    group.start_soon(engine.run, name)
            elapsed = time.perf_counter() - started
        finished = await store.runs(status="succeeded", limit=None)
    assert len(finished) >= len(names), "not every run was recorded succeeded"
    return len(names) / elapsed


async def commit_per_change_rate(db: Path, changes: int) -> float:
    """One small row per transaction, as a runner that commits every state change would."""
    from sqlalchemy import Column, Integer, MetaData, String, Table
    from sqlalchemy.ext.asyncio import create_async_engine

    meta = MetaData()
    table = Table("t", meta, Column("id", Integer, primary_key=True), Column("v", String))
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        await conn.run_sync(meta.create_all)
    started = time.perf_counter()
    for i in range(changes):
        async with engine.begin() as conn:
            await conn.execute(table.insert().values(v=str(i)))
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return changes / elapsed


async def plain_spawn_rate(count: int) -> float:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with limit:
            proc = await asyncio.create_subprocess_exec(
                "true", stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
            await proc.communicate()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - started)


def wall(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compile_runner() -> None:
    """Write runner's bytecode first, as an install does: with PYTHONDONTWRITEBYTECODE set (or an
    editable install that never wrote it) every run would compile runner's sources again."""
    import compileall

    import runner

    compileall.compile_dir(str(Path(runner.__file__).parent), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-tasks", type=int, default=2000)
    parser.add_argument("--shell-tasks", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    compile_runner()

    with tempfile.TemporaryDirectory(prefix="runner-bench-") as scratch:
        root = Path(scratch) / "project"
        write_project(root, args.python_tasks, args.shell_tasks)
        py_names = [f"py{i}" for i in range(args.python_tasks)]
        sh_names = [f"sh{i}" for i in range(args.shell_tasks)]

        py_rates, floor_rates, sh_rates, plain_rates = [], [], [], []
        for attempt in range(args.repeat):
            py_rates.append(asyncio.run(engine_rate(root, Path(scratch) / f"py{attempt}.db", py_names)))
            floor_rates.append(asyncio.run(commit_per_change_rate(Path(scratch) / f"floor{attempt}.db", 2000)))
            plain_rates.append(asyncio.run(plain_spawn_rate(args.shell_tasks)))
            sh_rates.append(asyncio.run(engine_rate(root, Path(scratch) / f"sh{attempt}.db", sh_names)))

        db = Path(scratch) / "cli.db"
        runner = [sys.executable, "-m", "runner", "--project", str(root), "--db", str(db)]
        subprocess.run([*runner, "sync"], check=True, capture_output=True)
        cli = wall([*runner, "run", "hello"], args.repeat + 2)
        baseline = wall(
            [sys.executable, "-c", "import sqlalchemy.ext.asyncio, aiosqlite, yaml, jsonschema, click, anyio"],
            args.repeat + 2,
        )

    py, floor = statistics.median(py_rates), statistics.median(floor_rates)
    sh, plain = statistics.median(sh_rates), statistics.median(plain_rates)
    print(f"{'measure':48} {'value':>12} {'floor/baseline':>15} {'ratio':>8}  target")
    print(f"{'no-op python runs/s (' + str(args.python_tasks) + ')':48} {py:12.0f} {floor:15.0f} {py / floor:8.2f}  >= 3000/s")
    print(f"{'shell `true` runs/s (' + str(args.shell_tasks) + ')':48} {sh:12.0f} {plain:15.0f} {sh / plain:8.2f}  >= 0.70")
    print(f"{'`runner run hello` wall s':48} {cli:12.3f} {baseline:15.3f} {cli / baseline:8.2f}  <= 1.50")
    print(f"(medians of {args.repeat}; concurrency {CONCURRENCY}; python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
