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
4. through the CLI, as a user types it (``--cli``, the number of repeats; 0 skips it): a fan-in
   of ``--width`` no-op python tasks run by ``runner run`` in a fresh process, once with ``def``
   tasks and once with ``async def`` ones, each as the wall time of the fan-in minus the wall
   time of ``runner run`` of one task of the same kind in the same project (so the start-up and
   the project load cancel out; the lesser of one such run just before and one just after the
   fan-in), and the CPU time of the process per run, the same difference.
   Targets: >= 5,000 recorded runs/s for ``def``, >= 6,000/s for ``async def``. Each round
   also times a fixed loop of pure Python just before it (``reference_ms``) and prints it with
   the round's rates: on a shared VM the same code's rates move by 2-3x within minutes, and the
   reference is a hint (no more: it is a tight loop, the runs are not) of which rounds met a
   slow machine.

Usage::

    .venv/bin/python benchmarks/bench_workflows.py [--width 2000] [--chain 1000] [--diamond 100]
        [--single 200] [--repeat 5] [--concurrency 16] [--profile DIR] [--cli 5] [--only-cli]

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
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


def write_cli_project(root: Path, width: int) -> None:
    """dfan0.. (``def``) needed by dfanin, afan0.. (``async def``) needed by afanin, and one of
    each kind alone (done, aone)."""
    (root / "tasks.d").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "plugins" / "__init__.py").write_text("")
    (root / "plugins" / "noop.py").write_text(
        "def noop_def() -> None:\n    return None\n\n\nasync def noop() -> None:\n    return None\n"
    )
    lines = ["version: 1", "tasks:"]
    for kind, callable_ in (("d", "plugins.noop:noop_def"), ("a", NOOP)):
        fans = [f"{kind}fan{i}" for i in range(width)]
        for name in [*fans, f"{kind}one"]:
            lines.extend([f"  {name}:", "    type: python", f"    callable: {callable_}"])
        lines.extend([f"  {kind}fanin:", "    type: python", f"    callable: {callable_}",
                      f"    needs: [{', '.join(fans)}]"])
    (root / "tasks.d" / "bench.yaml").write_text("\n".join(lines) + "\n")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reference_ms() -> float:
    """Milliseconds of a fixed piece of pure Python (a loop of 1,000,000 additions): how fast the
    machine runs the interpreter just now, taken beside each round of the CLI figures."""
    started = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i
    return (time.perf_counter() - started) * 1e3


@dataclass
class CliFigures:
    rates: dict[str, tuple[float, float]]  # per kind: medians of (runs/s, CPU ms per run)
    rounds: list[tuple[float, float, float]]  # per round: the reference's ms, def and async def runs/s


def cli_figures(scratch: Path, width: int, repeat: int) -> CliFigures:
    """Per kind (``def``, ``async def``): medians of (runs/s, CPU ms per run) of the fan-in
    through ``runner run``, less ``runner run`` of one task, each from a fresh copy of one store;
    and each round's figures with the machine's speed just before it (``reference_ms``)."""
    root = scratch / "cli-project"
    write_cli_project(root, width)
    template = scratch / "cli-template.db"
    base = [sys.executable, "-m", "runner", "--project", str(root)]
    subprocess.run([*base, "--db", str(template), "sync"], check=True, capture_output=True, cwd=scratch)
    counter = iter(range(1_000_000))

    def timed(target: str) -> tuple[float, float]:
        db = fresh_copy(template, scratch / f"cli{next(counter)}.db")
        wall, cpu = time.perf_counter(), children_cpu()
        # Not from the checkout: `python -m` puts the working directory first on sys.path.
        subprocess.run([*base, "--db", str(db), "run", target], check=True, capture_output=True, cwd=scratch)
        return time.perf_counter() - wall, children_cpu() - cpu

    figures = {}
    for kind in "da":
        timed(f"{kind}one")  # untimed: the bytecode of the project's plugin written, caches warm
    samples: dict[str, list[tuple[float, float]]] = {"def": [], "async def": []}
    rounds = []
    for _ in range(repeat):  # interleaved, so that a burst of load hits every figure
        reference = reference_ms()
        for kind, label in (("d", "def"), ("a", "async def")):
            before = timed(f"{kind}one")
            fan_wall, fan_cpu = timed(f"{kind}fanin")
            after = timed(f"{kind}one")
            # The lesser of the one-task runs on either side: a hiccup of the machine in one of
            # them (a one-task run slower than the fan-in, once) would make the rate absurd.
            one_wall, one_cpu = min(before[0], after[0]), min(before[1], after[1])
            samples[label].append(((width + 1) / (fan_wall - one_wall), (fan_cpu - one_cpu) / width * 1e3))
        rounds.append((reference, samples["def"][-1][0], samples["async def"][-1][0]))
    for label, pairs in samples.items():
        figures[label] = (statistics.median(r for r, _ in pairs), statistics.median(c for _, c in pairs))
    return CliFigures(figures, rounds)


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


def print_cli(figures: CliFigures, width: int) -> None:
    print(f"{'`runner run` of a fan-in of ' + str(width) + ', less one run':44} {'runs/s':>8} {'cpu ms/run':>11}  target")
    for label, target in (("def", 5000), ("async def", 6000)):
        rate, cpu_ms = figures.rates[label]
        met = "met" if rate >= target else "NOT met"
        print(f"{'  ' + label + ' no-op tasks':44} {rate:8.0f} {cpu_ms:11.3f}  >= {target}/s: {met}")
    print("  each round: the machine's reference (ms), then def and async def runs/s: " + "; ".join(
        f"{reference:.0f} ms {rate_def:.0f} {rate_async:.0f}" for reference, rate_def, rate_async in figures.rounds
    ))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=2000, help="fan-in width (default 2000)")
    parser.add_argument("--chain", type=int, default=1000, help="chain length (default 1000)")
    parser.add_argument("--diamond", type=int, default=100, help="diamond width (default 100; 0: skip)")
    parser.add_argument("--single", type=int, default=200, help="sequential single runs (default 200)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--profile", type=Path, help="also write cProfile output into this directory")
    parser.add_argument("--cli", type=int, default=5, help="repeats of the CLI fan-ins (default 5; 0: skip)")
    parser.add_argument("--only-cli", action="store_true", help="measure the CLI fan-ins only")
    args = parser.parse_args()
    compile_runner()
    import runner

    if args.only_cli:
        with tempfile.TemporaryDirectory(prefix="runner-bench-") as scratch:
            load_before = load()
            print_cli(cli_figures(Path(scratch), args.width, args.cli or 5), args.width)
        print(f"(medians of {args.cli or 5}; python {platform.python_version()}; nproc {os.cpu_count()}; "
              f"runner from {Path(runner.__file__).parent})")
        print(f"(load average before: {load_before}; after: {load()})")
        return

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
        cli = cli_figures(Path(scratch), width, args.cli) if args.cli else None
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
    if cli is not None:
        print()
        print_cli(cli, width)
    print(f"(medians of {args.repeat}; single run: median of {len(singles)}; concurrency {args.concurrency}; "
          f"python {platform.python_version()}; nproc {os.cpu_count()}; runner from {Path(runner.__file__).parent})")
    print(f"(load average before: {load_before}; after: {load_after})")
    if args.profile:
        print(f"(profiles in {args.profile}: fanin.prof, chain.prof, single.prof)")


if __name__ == "__main__":
    sys.exit(main())
