"""Benchmark: workflows through the engine (fan-in, chain, diamond), every run recorded.

Each workflow runs in process as ``Engine.workflow(target).execute()``, timed from the start of
``execute`` (which records every run of the workflow ``queued`` first) to its return (the
target's final record committed); each measurement starts from a fresh copy of one synced store.
Figures are printed beside what they are judged against, measured in the same process:

1. fan-in: ``--width`` no-op async python tasks, all needed by one final task (``width + 1``
   runs) vs the same ``--width`` tasks run independently (one ``engine.run`` each, all at once,
   as in bench_runs.py). Target: >= 3,000 recorded runs/s, and about the independent rate.
   The same fan-in at a tenth of the width is printed too: the cost per task must not grow
   with the width.
2. chain: ``--chain`` tasks, each needing the one before (``c1`` needs ``c0``, ...), cost per
   task vs the cost of one run (one ``engine.run`` of one no-op task, median of ``--single``
   sequential runs). Target: "little more per task than one run" (the ratio is printed).
3. diamond: one task, ``--diamond`` tasks that need it, one task that needs them all.

Usage::

    .venv/bin/python benchmarks/bench_workflows.py [--width 2000] [--chain 1000] [--diamond 100]
        [--single 200] [--repeat 5] [--concurrency 16] [--profile DIR]

``--profile DIR`` also runs the fan-in, the chain and the single runs once each under cProfile
(after the timed repeats) and writes ``DIR/fanin.prof``, ``DIR/chain.prof`` and
``DIR/single.prof`` (read them with ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

DEFAULT_CONCURRENCY = 16  # the engine's default (runner.engine.DEFAULT_MAX_CONCURRENCY)
NOOP = "plugins.noop:noop"


def write_project(root: Path, width: int, chain: int, diamond: int) -> None:
    """fan0..fan{width-1} and fanin (needs all of them); small0.. and smallin (a tenth of the
    width); c0..c{chain-1}, each needing the one before; top, mid0..mid{diamond-1}, bottom;
    and one."""
    (root / "tasks.d").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "plugins" / "__init__.py").write_text("")
    (root / "plugins" / "noop.py").write_text("async def noop() -> None:\n    return None\n")
    lines = ["version: 1", "tasks:"]

    def task(name: str, needs: list[str] | None = None) -> None:
        lines.extend([f"  {name}:", "    type: python", f"    callable: {NOOP}"])
        if needs:
            lines.append(f"    needs: [{', '.join(needs)}]")

    fans = [f"fan{i}" for i in range(width)]
    for name in fans:
        task(name)
    task("fanin", fans)
    smalls = [f"small{i}" for i in range(max(1, width // 10))]
    for name in smalls:
        task(name)
    task("smallin", smalls)
    for i in range(chain):
        task(f"c{i}", [f"c{i - 1}"] if i else [])
    task("top")
    mids = [f"mid{i}" for i in range(diamond)]
    for name in mids:
        task(name, ["top"])
    task("bottom", mids)
    task("one")
    (root / "tasks.d" / "bench.yaml").write_text("\n".join(lines) + "\n")


async def sync_template(root: Path, db: Path) -> None:
    from runner.store import open_store
    from runner.sync import sync_project

    async with open_store(db) as store:
        await sync_project(root, store)


def fresh_copy(template: Path, db: Path) -> Path:
    """A store with every task synced and no run yet (SQLite: the file and any WAL left)."""
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{template}{suffix}")
        if source.exists():
            shutil.copyfile(source, f"{db}{suffix}")
    return db


async def with_engine(root: Path, db: Path, concurrency: int, body: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    from runner.engine import Engine
    from runner.store import open_store

    async with open_store(db) as store, Engine(store, root, max_concurrency=concurrency) as engine:
        return await body(store, engine)


def workflow_seconds(target: str, expected_runs: int, profile: cProfile.Profile | None = None):
    """A body that runs ``target``'s workflow and returns the seconds ``execute`` took."""

    async def body(store: Any, engine: Any) -> float:
        workflow = engine.workflow(target)
        if profile is not None:
            profile.enable()
        started = time.perf_counter()
        final = await workflow.execute()
        elapsed = time.perf_counter() - started
        if profile is not None:
            profile.disable()
        assert final.succeeded, f"{target}: {final.status}"
        recorded = await store.runs(invocation=workflow.invocation, status="succeeded", limit=None)
        assert len(recorded) == expected_runs, f"{target}: {len(recorded)} of {expected_runs} recorded succeeded"
        return elapsed

    return body


def independent_seconds(names: list[str]):
    """A body that runs every one of ``names`` with its own ``engine.run``, all at once."""

    async def body(store: Any, engine: Any) -> float:
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(engine.run, name)
        elapsed = time.perf_counter() - started
        recorded = await store.runs(status="succeeded", limit=None)
        assert len(recorded) == len(names), f"{len(recorded)} of {len(names)} recorded succeeded"
        return elapsed

    return body


def single_seconds(count: int, profile: cProfile.Profile | None = None):
    """A body that runs one no-op task ``count`` times, one after another; each run's seconds."""

    async def body(store: Any, engine: Any) -> list[float]:
        await engine.run("one")  # untimed: first-run costs (resolving the callable, ...)
        times = []
        if profile is not None:
            profile.enable()
        for _ in range(count):
            started = time.perf_counter()
            run = await engine.run("one")
            times.append(time.perf_counter() - started)
            assert run.succeeded
        if profile is not None:
            profile.disable()
        return times

    return body


def compile_runner() -> None:
    """Write runner's bytecode first, as an install does (see bench_runs.py)."""
    import compileall

    import runner

    compileall.compile_dir(str(Path(runner.__file__).parent), quiet=1)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=2000, help="fan-in width (default 2000)")
    parser.add_argument("--chain", type=int, default=1000, help="chain length (default 1000)")
    parser.add_argument("--diamond", type=int, default=100, help="diamond width (default 100; 0: skip)")
    parser.add_argument("--single", type=int, default=200, help="sequential single runs (default 200)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--profile", type=Path, help="also write cProfile output into this directory")
    args = parser.parse_args()
    compile_runner()
    import runner

    width, small, chain, diamond = args.width, max(1, args.width // 10), args.chain, args.diamond
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as scratch:
        root = Path(scratch) / "project"
        write_project(root, width, chain, diamond)
        template = Path(scratch) / "template.db"
        asyncio.run(sync_template(root, template))
        fans = [f"fan{i}" for i in range(width)]
        counter = iter(range(1_000_000))

        def measure(body: Callable[[Any, Any], Awaitable[Any]]) -> Any:
            db = fresh_copy(template, Path(scratch) / f"m{next(counter)}.db")
            return asyncio.run(with_engine(root, db, args.concurrency, body))

        fanin, independent, smallin, chained, diamonds, singles = [], [], [], [], [], []
        for _ in range(args.repeat):  # interleaved, so that a burst of load hits every figure
            fanin.append(measure(workflow_seconds("fanin", width + 1)))
            independent.append(measure(independent_seconds(fans)))
            smallin.append(measure(workflow_seconds("smallin", small + 1)))
            chained.append(measure(workflow_seconds(f"c{chain - 1}", chain)))
            if diamond:
                diamonds.append(measure(workflow_seconds("bottom", diamond + 2)))
            singles.extend(measure(single_seconds(args.single)))

        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name, make in (
                ("fanin", lambda p: workflow_seconds("fanin", width + 1, p)),
                ("chain", lambda p: workflow_seconds(f"c{chain - 1}", chain, p)),
                ("single", lambda p: single_seconds(args.single, p)),
            ):
                profile = cProfile.Profile()
                measure(make(profile))
                profile.dump_stats(args.profile / f"{name}.prof")
    load_after = load()

    med = statistics.median
    fan_rate = (width + 1) / med(fanin)
    ind_rate = width / med(independent)
    fan_us = med(fanin) / (width + 1) * 1e6
    small_us = med(smallin) / (small + 1) * 1e6
    chain_ms = med(chained) / chain * 1e3
    single_ms = med(singles) * 1e3
    met = "met" if fan_rate >= 3000 else "NOT met"
    rows = [
        (f"fan-in of {width} ({width + 1} runs)", f"{fan_rate:.0f} runs/s",
         f"{width} independent: {ind_rate:.0f} runs/s", fan_rate / ind_rate, f">= 3000 runs/s: {met}"),
        (f"fan-in of {width}, per task", f"{fan_us:.0f} us",
         f"fan-in of {small}: {small_us:.0f} us", fan_us / small_us, "not growing with width"),
        (f"chain of {chain}, per task", f"{chain_ms:.2f} ms",
         f"one run: {single_ms:.2f} ms", chain_ms / single_ms, "little more than 1"),
    ]
    if diamond:
        diamond_s = med(diamonds)
        rows.append((f"diamond 1-{diamond}-1 ({diamond + 2} runs)", f"{diamond_s * 1e3:.1f} ms",
                     f"{(diamond + 2) / diamond_s:.0f} runs/s", None, "(info)"))
    print(f"{'measure':34} {'value':>14}  {'compared with':34} {'ratio':>6}  target")
    for label, value, against, ratio, target in rows:
        shown = f"{ratio:6.2f}" if ratio is not None else ""
        print(f"{label:34} {value:>14}  {against:34} {shown:>6}  {target}")
    print(f"(medians of {args.repeat}; single run: median of {len(singles)}; concurrency {args.concurrency}; "
          f"python {platform.python_version()}; nproc {os.cpu_count()}; runner from {Path(runner.__file__).parent})")
    print(f"(load average before: {load_before}; after: {load_after})")
    if args.profile:
        print(f"(profiles in {args.profile}: fanin.prof, chain.prof, single.prof)")


if __name__ == "__main__":
    sys.exit(main())
