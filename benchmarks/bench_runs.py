"""Benchmark: recorded runs per second, shell spawn overhead, and `runner run` start-up.

Each figure is printed beside the floor it is judged against, measured in the same process:

1. 2,000 independent no-op python tasks through the engine (every run recorded queued,
   running, succeeded) vs one SQLAlchemy async commit per state change (the rate a runner
   without group commit is capped at). Target: >= 3,000 recorded runs/s. The same no-op
   written as a plain ``def`` (run in one of the engine's reused threads) is printed below it,
   with the CPU time per run of both.
2. 200 shell ``true`` runs through the engine vs spawning ``true`` with plain asyncio
   subprocesses at the same concurrency. Target: >= 70% of the plain rate.
3. ``runner run`` of a single task (a fresh process) vs
   ``python -c "import sqlalchemy.ext.asyncio, aiosqlite, yaml, jsonschema, click, anyio"``.
   Target: <= 1.5x.

Where the shell rate goes, printed below the table (same process, same concurrency): the rate
of ``runner.executors.shell.run_shell`` alone (with the environment and working directory the
engine gives a child), and the CPU time of this process per run (``getrusage``, all its threads;
the children's own time not included) for plain asyncio, ``run_shell`` alone and the engine.
The CPU time per run moves much less with the machine's load than the rates do.
``--what-if`` also measures two prototypes patched in here (not runner's behaviour): the engine
with its per-run scratch directory replaced by one shared directory, and that plus ``run_shell``
replaced by a bare asyncio ``SubprocessProtocol`` (no timeout, no output cap, no drain grace:
enough for ``true``, to show what a leaner executor would cost).

Usage: python benchmarks/bench_runs.py [--python-tasks 2000] [--shell-tasks 200] [--repeat 3]
    [--what-if] [--profile DIR] [--only-python]

``--profile DIR`` writes cProfile output of one engine run of the python tasks
(``DIR/python.prof``), of the shell tasks (``DIR/shell.prof``) and of ``run_shell`` alone
(``DIR/run_shell.prof``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import platform
import resource
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
    (root / "plugins" / "noop.py").write_text(
        "async def noop() -> None:\n    return None\n\n\ndef noop_def() -> None:\n    return None\n"
    )
    lines = ["version: 1", "tasks:"]
    for i in range(python_tasks):
        lines += [f"  py{i}:", "    type: python", "    callable: plugins.noop:noop"]
        lines += [f"  pd{i}:", "    type: python", "    callable: plugins.noop:noop_def"]
    for i in range(shell_tasks):
        lines += [f"  sh{i}:", "    command: [\"true\"]"]
    lines += ["  hello:", "    command: echo hello"]
    (root / "tasks.d" / "bench.yaml").write_text("\n".join(lines) + "\n")


def cpu_seconds() -> float:
    """CPU time of this process so far (every thread; not its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timed:
    """Wall and CPU seconds of a block, optionally under a profiler."""

    def __init__(self, profile: cProfile.Profile | None = None) -> None:
        self.profile = profile
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Timed:
        if self.profile is not None:
            self.profile.enable()
        self._wall, self._cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, cpu_seconds() - self._cpu
        if self.profile is not None:
            self.profile.disable()


async def engine_rate(
    root: Path, db: Path, names: list[str], profile: cProfile.Profile | None = None
) -> tuple[float, float]:
    """Runs per second through the engine, and this process's CPU seconds per run."""
    from runner.engine import Engine
    from runner.store import open_store
    from runner.sync import sync_project

    async with open_store(db) as store:
        await sync_project(root, store)
        async with Engine(store, root, max_concurrency=CONCURRENCY) as engine:
            with Timed(profile) as timed:
                async with anyio.create_task_group() as group:
                    for name in names:
                        group.start_soon(engine.run, name)
        finished = await store.runs(status="succeeded", limit=None)
    assert len(finished) >= len(names), "not every run was recorded succeeded"
    return len(names) / timed.wall, timed.cpu / len(names)


@contextlib.contextmanager
def shared_scratch(directory: Path):
    """Prototype (not runner's behaviour): the engine's per-run scratch directory, which only a
    shell task with needs writes into, replaced by one directory made once."""
    import runner.execution

    class Shared:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> str:
            return str(directory)

        def __exit__(self, *exc_info: object) -> None:
            pass

    directory.mkdir(exist_ok=True)
    real = runner.execution.tempfile
    runner.execution.tempfile = type("tempfile", (), {"TemporaryDirectory": Shared})  # type: ignore[assignment]
    try:
        yield
    finally:
        runner.execution.tempfile = real


class _Collect(asyncio.SubprocessProtocol):
    """Keeps a child's output; ``done`` once both pipes are closed and the child has exited."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.out, self.err = bytearray(), bytearray()
        self.done, self.open = done, 3

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        (self.out if fd == 1 else self.err).extend(data)

    def _closed(self) -> None:
        self.open -= 1
        if not self.open and not self.done.done():
            self.done.set_result(None)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._closed()

    def process_exited(self) -> None:
        self._closed()


async def protocol_run_shell(command: str | list[str], *, env: dict[str, str], cwd: Path, **_: object) -> object:
    """Prototype of a leaner ``run_shell`` (see --what-if): one protocol, no reader tasks."""
    import signal

    from runner.executors.shell import ShellOutcome

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    transport, collected = await loop.subprocess_exec(
        lambda: _Collect(done), *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=cwd, env=env, start_new_session=True,
    )
    try:
        await done
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(transport.get_pid(), signal.SIGKILL)
        transport.close()
    out, err = collected.out.decode(errors="replace"), collected.err.decode(errors="replace")
    return ShellOutcome(transport.get_returncode(), out, err, False, False, False)


@contextlib.contextmanager
def lean_executor():
    """Prototype (not runner's behaviour): the engine calls ``protocol_run_shell``."""
    import runner.execution

    real = runner.execution.run_shell
    runner.execution.run_shell = protocol_run_shell  # type: ignore[assignment]
    try:
        yield
    finally:
        runner.execution.run_shell = real


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


@contextlib.contextmanager
def child_watcher(kind: str):  # type: ignore[no-untyped-def]
    """On Python 3.11, plain asyncio with its default child watcher (a thread per child), or
    with pidfds (3.12's default, which runner's ``run_shell`` sets up on 3.11); elsewhere as is."""
    if sys.version_info >= (3, 12):
        yield
        return
    before = asyncio.get_child_watcher()
    watcher = asyncio.ThreadedChildWatcher() if kind == "thread" else asyncio.PidfdChildWatcher()
    asyncio.set_child_watcher(watcher)
    try:
        yield
    finally:
        asyncio.set_child_watcher(before)


async def plain_spawn_rate(count: int, watcher: str = "thread") -> tuple[float, float]:
    with child_watcher(watcher):
        if sys.version_info < (3, 12):
            asyncio.get_child_watcher().attach_loop(asyncio.get_running_loop())
        return await _plain_spawn_rate(count)


async def _plain_spawn_rate(count: int) -> tuple[float, float]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with limit:
            proc = await asyncio.create_subprocess_exec(
                "true", stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
            await proc.communicate()

    with Timed() as timed:
        await asyncio.gather(*(one() for _ in range(count)))
    return count / timed.wall, timed.cpu / count


async def run_shell_rate(root: Path, count: int, profile: cProfile.Profile | None = None) -> tuple[float, float]:
    """``run_shell`` alone, bounded as the engine bounds it, with the environment and working
    directory the engine gives a child (its copy of os.environ plus the RUNNER_* variables)."""
    from runner.executors.shell import run_shell

    limiter = anyio.CapacityLimiter(CONCURRENCY)
    environ = {os.fsencode(key): os.fsencode(value) for key, value in os.environ.items()}

    async def one(i: int) -> None:
        async with limiter:
            env = {**environ, b"RUNNER_PARAMS": b"{}", b"RUNNER_RUN_ID": f"r{i}".encode(), b"RUNNER_TASK": f"sh{i}".encode()}
            outcome = await run_shell(["true"], env=env, cwd=root)
            assert outcome.exit_code == 0

    with Timed(profile) as timed:
        async with anyio.create_task_group() as group:
            for i in range(count):
                group.start_soon(one, i)
    return count / timed.wall, timed.cpu / count


BASELINE_IMPORTS = "import sqlalchemy.ext.asyncio, aiosqlite, yaml, jsonschema, click, anyio"


def walls(commands: list[list[str]], repeat: int) -> list[list[float]]:
    """Wall seconds of each command, ``repeat`` times, taking turns (after one untimed round)
    so that a burst of load on the machine hits all of them alike."""
    times: list[list[float]] = [[] for _ in commands]
    for round_ in range(repeat + 1):
        for argv, kept in zip(commands, times, strict=True):
            started = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            if round_:
                kept.append(time.perf_counter() - started)
    return times


def compile_runner() -> None:
    """Write runner's bytecode first, as an install does: with PYTHONDONTWRITEBYTECODE set (or an
    editable install that never wrote it) every run would compile runner's sources again."""
    import compileall

    import runner

    compileall.compile_dir(str(Path(runner.__file__).parent), quiet=1)


def print_python(py: list[tuple[float, float]], pd: list[tuple[float, float]], repeat: int) -> None:
    med = statistics.median
    print(f"{'no-op python through the engine':48} {'runs/s':>12} {'cpu ms/run':>11}")
    for label, pairs in (("  async def", py), ("  def", pd)):
        print(f"{label:48} {med(r for r, _ in pairs):12.0f} {med(c for _, c in pairs) * 1e3:11.3f}")
    print(f"(medians of {repeat}; concurrency {CONCURRENCY}; python {platform.python_version()}; nproc {os.cpu_count()})")


Pairs = list[tuple[float, float]]


def print_shell(plain: Pairs, plain_pidfd: Pairs, alone: Pairs, sh: Pairs, shared: Pairs, lean: Pairs) -> None:
    """Where the shell rate goes: each variant's rate, its ratio to plain asyncio in the same
    repeat (median, min-max), and the CPU time of this process per run."""
    med = statistics.median
    print(f"{'shell `true`, where the time goes':48} {'runs/s':>12} {'vs plain':>18} {'cpu ms/run':>11}")
    print(f"{'  plain asyncio subprocesses':48} {med(r for r, _ in plain):12.0f} {'1':>18} "
          f"{med(c for _, c in plain) * 1e3:11.2f}")
    for label, pairs in (
        ("  plain asyncio, pidfd child watcher", plain_pidfd),
        ("  run_shell alone", alone),
        ("  through the engine", sh),
        ("  engine, shared scratch dir (prototype)", shared),
        ("  ... and a protocol-based run_shell (prototype)", lean),
    ):
        if pairs:
            ratios = [r / p for (r, _), (p, _) in zip(pairs, plain, strict=True)]
            versus = f"{med(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            print(f"{label:48} {med(r for r, _ in pairs):12.0f} {versus:>18} {med(c for _, c in pairs) * 1e3:11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-tasks", type=int, default=2000)
    parser.add_argument("--shell-tasks", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--what-if", action="store_true", help="also time two prototypes of a leaner shell path")
    parser.add_argument("--profile", type=Path, help="also write cProfile output into this directory")
    parser.add_argument("--only-python", action="store_true", help="the python no-op runs only (async def, def)")
    parser.add_argument("--only-shell", action="store_true", help="the shell runs and their baselines only")
    args = parser.parse_args()
    compile_runner()
    import runner.engine  # imported before anything is timed, as in a running runner

    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="runner-bench-") as scratch:
        root = Path(scratch) / "project"
        write_project(root, args.python_tasks, args.shell_tasks)
        py_names = [f"py{i}" for i in range(args.python_tasks)]
        pd_names = [f"pd{i}" for i in range(args.python_tasks)]
        sh_names = [f"sh{i}" for i in range(args.shell_tasks)]

        py, pd, floor, sh, plain, plain_pidfd, alone, shared, lean = [], [], [], [], [], [], [], [], []
        for attempt in range(args.repeat):
            if not args.only_shell:
                py.append(asyncio.run(engine_rate(root, Path(scratch) / f"py{attempt}.db", py_names)))
                pd.append(asyncio.run(engine_rate(root, Path(scratch) / f"pd{attempt}.db", pd_names)))
            if args.only_python:
                continue
            if not args.only_shell:
                floor.append(asyncio.run(commit_per_change_rate(Path(scratch) / f"floor{attempt}.db", 2000)))
            plain.append(asyncio.run(plain_spawn_rate(args.shell_tasks)))
            if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
                plain_pidfd.append(asyncio.run(plain_spawn_rate(args.shell_tasks, "pidfd")))
            alone.append(asyncio.run(run_shell_rate(root, args.shell_tasks)))
            sh.append(asyncio.run(engine_rate(root, Path(scratch) / f"sh{attempt}.db", sh_names)))
            if args.what_if:
                with shared_scratch(Path(scratch) / "shared"):
                    shared.append(asyncio.run(engine_rate(root, Path(scratch) / f"shs{attempt}.db", sh_names)))
                    with lean_executor():
                        lean.append(asyncio.run(engine_rate(root, Path(scratch) / f"shl{attempt}.db", sh_names)))

        if args.only_python:
            print_python(py, pd, args.repeat)
            return
        if args.only_shell:
            print_shell(plain, plain_pidfd, alone, sh, shared, lean)
            return
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name, make in (
                ("python", lambda p: engine_rate(root, Path(scratch) / "prof-py.db", py_names, p)),
                ("shell", lambda p: engine_rate(root, Path(scratch) / "prof-sh.db", sh_names, p)),
                ("run_shell", lambda p: run_shell_rate(root, args.shell_tasks, p)),
            ):
                profile = cProfile.Profile()
                asyncio.run(make(profile))
                profile.dump_stats(args.profile / f"{name}.prof")

        db = Path(scratch) / "cli.db"
        runner = [sys.executable, "-m", "runner", "--project", str(root), "--db", str(db)]
        subprocess.run([*runner, "sync"], check=True, capture_output=True)
        cli, baseline = walls(
            [[*runner, "run", "hello"], [sys.executable, "-c", BASELINE_IMPORTS]], args.repeat + 2
        )

    load_after = os.getloadavg()
    med = statistics.median

    def rate(pairs: list[tuple[float, float]]) -> float:
        return med(r for r, _ in pairs)

    def cpu_ms(pairs: list[tuple[float, float]]) -> float:
        return med(c for _, c in pairs) * 1e3

    def vs_plain(pairs: list[tuple[float, float]]) -> str:
        """Median (min-max) of the ratios of each repeat to the plain rate of the same repeat."""
        ratios = [r / p for (r, _), (p, _) in zip(pairs, plain, strict=True)]
        return f"{med(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"

    py_rate, floor_rate = rate(py), med(floor)
    sh_rate, plain_rate = rate(sh), rate(plain)
    sh_ratio = med(r / p for (r, _), (p, _) in zip(sh, plain, strict=True))
    cli_ratio = med(c / b for c, b in zip(cli, baseline, strict=True))
    print(f"{'measure':48} {'value':>12} {'floor/baseline':>15} {'ratio':>8}  target")
    print(f"{'no-op python runs/s (' + str(args.python_tasks) + ')':48} {py_rate:12.0f} {floor_rate:15.0f} "
          f"{py_rate / floor_rate:8.2f}  >= 3000/s ({'met' if py_rate >= 3000 else 'NOT met'})")
    print(f"{'shell `true` runs/s (' + str(args.shell_tasks) + ')':48} {sh_rate:12.0f} {plain_rate:15.0f} "
          f"{sh_ratio:8.2f}  >= 0.70 ({'met' if sh_ratio >= 0.7 else 'NOT met'})")
    print(f"{'`runner run hello` wall s':48} {med(cli):12.3f} {med(baseline):15.3f} {cli_ratio:8.2f}  "
          f"<= 1.50 ({'met' if cli_ratio <= 1.5 else 'NOT met'}; ratio of the fastest: {min(cli) / min(baseline):.2f})")
    print("(ratios: median of the ratios of each repeat, whose two sides ran one after the other)")
    print()
    print_shell(plain, plain_pidfd, alone, sh, shared, lean)
    print(f"{'  (python no-op through the engine)':48} {py_rate:12.0f} {'':18} {cpu_ms(py):11.2f}")
    print()
    print_python(py, pd, args.repeat)
    print(f"(medians of {args.repeat}; concurrency {CONCURRENCY}; python {platform.python_version()}; nproc {os.cpu_count()})")
    print("(load average before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f})".format(*load_before, *load_after))


if __name__ == "__main__":
    main()
