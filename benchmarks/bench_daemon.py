"""Benchmark ``runner daemon``: fire-time accuracy, reload latency and memory (issue 5).

Every figure comes from a real ``runner --log-format json daemon`` process on a project in a
temporary directory, its JSON log written to a file, its store read with ``sqlite3``:

1. **Fire accuracy.** One task ``schedule: {every: 1s}`` (a shell ``true``, then, in a daemon of
   its own, an async no-op python task) fires for ``--seconds``; then SIGTERM. For every
   scheduled run: ``started_at - scheduled_for`` and ``queued_at - scheduled_for`` (median, p95,
   worst), and the fires against the grid ``anchor + k * every`` (none dropped, none doubled).
   Beside it: the daemon's CPU time over the run.
2. **Reload latency** (target: median <= 300 ms). With the daemon running, ``tasks.d/zz-probe.yaml``
   is replaced (written next to it, then renamed over it, as editors save) with a new command for
   its task, ``--repeat`` times. Measured from ``time.time()`` just before the write until (a) the
   store's ``tasks`` row holds the new command (polled every 5 ms with ``sqlite3``) and (b) the
   daemon's ``reloaded`` log line exists (its own ``at`` time; also the "reloaded in X s" the
   daemon reports, which starts when the file watcher yields). Projects: the repository's
   example project, and ``gen_tasks.py`` projects of ``--sizes`` tasks (their schedules
   removed, so no fire disturbs the measurement).
3. **Memory.** ``VmRSS`` and ``VmHWM`` (``/proc/PID/status``) of a daemon with ``--memory-tasks``
   tasks defined (``gen_tasks.py``, schedules removed, plus ``--scheduled`` shell ``true`` tasks
   ``schedule: {every: --every}`` in a file of their own): after start-up, after firing for
   ``--fire-for`` seconds, then after five one-file reloads. Target: <= 150 MB RSS. Beside it:
   an idle daemon on a one-task project (and its CPU time while idle), and the interpreter with
   the daemon's imports alone. Also printed: how late the fires were that fell due together.

Usage::

    .venv/bin/python benchmarks/bench_daemon.py [--seconds 60] [--repeat 20]
        [--sizes 1000,10000] [--memory-tasks 10000] [--scheduled 100] [--every 10s]
        [--fire-for 35] [--kinds shell,python] [--only fire,reload,memory] [--phases]
        [--profile DIR] [--keep]

``--phases`` also times the steps of a one-file reload of the largest ``--sizes`` project in this
process (``Reloader.sync`` called directly, no watcher; runner's functions wrapped with a timer).
``--profile DIR`` writes cProfile output of those reloads (``DIR/reload-phases-N.prof``) and
runs one more daemon on that project under cProfile for five reloads
(``python -m cProfile -o DIR/reload-N.prof -m runner ... daemon``; its file-reading thread is not
profiled); read them with ``python -m pstats``. Everything is written into a temporary directory
that is removed at the end (``--keep`` keeps it). The runner measured is the one this
interpreter imports: ``PYTHONPATH=/path/to/checkout`` measures another (run from outside the
repository).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_definitions import compile_runner, load_average, machine, runner_command, runner_source
from gen_tasks import generate

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")
PROBE = "bench-probe"
RELOAD_TARGET = 0.300
RSS_TARGET_MB = 150.0
POLL = 0.005
IDLE_SECONDS = 10.0
RELOADS_FOR_MEMORY = 5
# What the daemon imports once it runs, for the memory floor (measured in a bare interpreter).
DAEMON_IMPORTS = (
    "import sqlalchemy.ext.asyncio, aiosqlite, anyio, watchfiles, yaml, click, cronsim; "
    "import runner.daemon, runner.cli, runner.sync, runner.spec, runner.store"
)

NOOP_PLUGIN = "async def noop() -> None:\n    return None\n"


# -- the daemon process ---------------------------------------------------------------------------


class DaemonProcess:
    """One ``runner --log-format json daemon`` process, its log file, and its /proc figures."""

    def __init__(self, cmd: list[str], project: Path, db: Path, log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self._offset = 0
        self._partial = ""
        self.lines: list[dict[str, Any]] = []
        self.launched = time.time()
        self.process = subprocess.Popen(
            [*cmd, "--project", str(project), "--db", str(db), "--log-format", "json", "daemon"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log, cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def read_log(self) -> list[dict[str, Any]]:
        """Every complete JSON line the daemon has written so far (read incrementally)."""
        with self.log_path.open(encoding="utf-8") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
            self._offset = fh.tell()
        text = self._partial + chunk
        *complete, self._partial = text.split("\n")
        for line in complete:
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                self.lines.append({"event": "unparsed", "message": line})
        return self.lines

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.read_log() if line.get("event") == event]

    def wait_for(self, event: str, *, count: int = 1, within: float = 120.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while True:
            found = self.events(event)
            if len(found) >= count:
                return found
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(encoding="utf-8")[-3000:]
                raise SystemExit(f"daemon: no {count} {event!r} (exit {self.process.poll()}); its log:\n{tail}")
            time.sleep(0.02)

    def memory(self) -> dict[str, float]:
        """VmRSS and VmHWM (peak RSS) in MB."""
        found = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon process itself (not its children)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self, within: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        if code != 0:
            tail = self.log_path.read_text(encoding="utf-8")[-3000:]
            raise SystemExit(f"daemon exited {code} after SIGTERM; its log:\n{tail}")
        return code


# -- projects -------------------------------------------------------------------------------------


def strip_schedules(root: Path) -> int:
    """Remove every ``schedule`` from a generated project's files; how many were removed."""
    removed = 0
    for path in sorted((root / "tasks.d").rglob("*.yaml")):
        out: list[str] = []
        in_schedule = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("    schedule:"):
                removed += 1
                in_schedule = line.rstrip() == "    schedule:"  # a block: cron/timezone follow
                continue
            if in_schedule and line.startswith("      "):
                continue
            in_schedule = False
            out.append(line)
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return removed


def generated_project(root: Path, tasks: int, files: int) -> Path:
    generate(root, tasks=tasks, files=files, python=min(20, tasks))
    strip_schedules(root)
    return root


def example_project(root: Path) -> Path:
    """A copy of the repository's example project (task files, plugins, secrets)."""
    for part in ("tasks.d", "plugins", "secrets"):
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def probe_text(version: int) -> str:
    return f'version: 1\ntasks:\n  {PROBE}:\n    command: "echo probe-{version}"\n'


def write_probe(root: Path, version: int) -> None:
    """Write the probe file beside its place, then rename it over the old one (one event)."""
    tmp = root / "zz-probe.yaml.tmp"  # outside tasks.d: the watcher never sees it
    tmp.write_text(probe_text(version), encoding="utf-8")
    os.replace(tmp, root / "tasks.d" / "zz-probe.yaml")


def tick_project(root: Path, kind: str) -> Path:
    (root / "tasks.d").mkdir(parents=True)
    if kind == "python":
        (root / "plugins").mkdir()
        (root / "plugins" / "__init__.py").write_text("")
        (root / "plugins" / "noop.py").write_text(NOOP_PLUGIN)
        body = "    type: python\n    callable: plugins.noop:noop\n"
    else:
        body = '    command: "true"\n'
    (root / "tasks.d" / "tick.yaml").write_text(
        f"version: 1\ntasks:\n  tick:\n{body}    schedule: {{every: 1s}}\n", encoding="utf-8"
    )
    return root


def scheduled_file(root: Path, count: int, every: str) -> None:
    lines = ["version: 1", "tasks:"]
    for i in range(count):
        lines += [f"  sched-{i:03d}:", '    command: "true"', f"    schedule: {{every: {every}}}"]
    (root / "tasks.d" / "scheduled.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- statistics -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 0.1 else f"{seconds * 1000:,.0f} ms"


def spread(values: list[float]) -> str:
    """median / p95 / max, in ms."""
    return f"{ms(statistics.median(values))} | {ms(percentile(values, 95))} | {ms(max(values))}"


def log_time(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["at"]).timestamp()


# -- 1. fire accuracy -----------------------------------------------------------------------------


@dataclass
class FireResult:
    kind: str
    seconds: float
    runs: int
    expected: int
    dropped: list[int]
    after_stop: list[int]
    doubled: list[int]
    off_grid: int
    not_succeeded: list[tuple[int, str, str | None]]  # (slot, status, error)
    started_late: list[float]
    queued_late: list[float]
    finished_late: list[float]
    cpu: float
    memory: dict[str, float] = field(default_factory=dict)


def measure_fires(runner: list[str], tmp: Path, kind: str, seconds: float) -> FireResult:
    root = tick_project(tmp / f"tick-{kind}", kind)
    db = root / "store.db"
    daemon = DaemonProcess(runner, root, db, root / "daemon.log", tmp)
    daemon.wait_for("daemon_started", within=60)
    cpu_start = daemon.cpu_seconds()
    time.sleep(seconds)
    cpu = daemon.cpu_seconds() - cpu_start
    memory = daemon.memory()
    stopped_at = time.time()
    daemon.stop()

    with closing(sqlite3.connect(db)) as conn:
        anchor, schedule = conn.execute("SELECT anchor, schedule FROM schedules WHERE task = 'tick'").fetchone()
        rows = conn.execute(
            "SELECT scheduled_for, queued_at, started_at, finished_at, status, error FROM runs "
            "WHERE task = 'tick' AND trigger = 'schedule' ORDER BY scheduled_for"
        ).fetchall()
    every = float(json.loads(schedule)["every"])
    slots = [round((row[0] - anchor) / every) for row in rows]
    expected = math.floor((stopped_at - anchor) / every)  # fires due before SIGTERM
    present = set(slots)
    return FireResult(
        kind=kind,
        seconds=seconds,
        runs=len(rows),
        expected=expected,
        # A fire due in the last 100 ms before SIGTERM may not have been taken yet: not dropped.
        dropped=[k for k in range(1, expected + 1) if k not in present and anchor + k * every < stopped_at - 0.1],
        after_stop=[k for k in slots if k > expected],
        doubled=sorted({k for k in slots if slots.count(k) > 1}),
        off_grid=sum(1 for row, k in zip(rows, slots, strict=True) if abs(row[0] - (anchor + k * every)) > 1e-3),
        not_succeeded=[(round(row[0] - anchor), row[4], row[5]) for row in rows if row[4] != "succeeded"],
        started_late=[row[2] - row[0] for row in rows if row[2] is not None],
        queued_late=[row[1] - row[0] for row in rows],
        finished_late=[row[3] - row[0] for row in rows if row[3] is not None],
        cpu=cpu,
        memory=memory,
    )


# -- 2. reload latency ----------------------------------------------------------------------------


@dataclass
class ReloadResult:
    label: str
    tasks: int
    startup: float
    to_store: list[float]
    to_log: list[float]
    own: list[float]
    failed: int
    memory_start: dict[str, float]
    memory_end: dict[str, float]


def measure_reloads(
    runner: list[str], root: Path, label: str, repeat: int, cmd: list[str] | None = None
) -> ReloadResult:
    write_probe(root, 0)
    db = root / "store.db"
    daemon = DaemonProcess(cmd or runner, root, db, root / f"daemon-{label}.log", root.parent)
    started = daemon.wait_for("daemon_started", within=600)[0]
    startup = log_time(started) - daemon.launched
    tasks = int(re.search(r"(\d+) tasks", started["message"]).group(1))  # type: ignore[union-attr]
    time.sleep(1.0)  # let the start-up settle (first sweep, lease)
    memory_start = daemon.memory()
    to_store: list[float] = []
    to_log: list[float] = []
    own: list[float] = []
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        for version in range(1, repeat + 1):
            seen = len(daemon.events("reloaded"))
            marker = f"probe-{version}"
            written = time.time()
            write_probe(root, version)
            store_at = log_line = None
            deadline = time.monotonic() + 120
            while store_at is None or log_line is None:
                if store_at is None:
                    row = conn.execute("SELECT definition FROM tasks WHERE name = ?", (PROBE,)).fetchone()
                    if row and marker in row[0]:
                        store_at = time.time()
                if log_line is None:
                    fresh = daemon.events("reloaded")[seen:]
                    log_line = next((line for line in fresh if PROBE in line.get("updated", ())), None)
                if time.monotonic() > deadline or daemon.process.poll() is not None:
                    raise SystemExit(f"{label}: reload {version} not seen; log in {daemon.log_path}")
                time.sleep(POLL)
            to_store.append(store_at - written)
            to_log.append(log_time(log_line) - written)
            took = re.search(r"reloaded in ([\d.]+)s", log_line["message"])
            own.append(float(took.group(1)) if took else math.nan)
            time.sleep(0.3)  # a quiet gap, so that the next write is a batch of its own
    memory_end = daemon.memory()
    failed = len(daemon.events("reload_failed"))
    daemon.stop()
    return ReloadResult(label, tasks, startup, to_store, to_log, own, failed, memory_start, memory_end)


# -- where a reload's time goes (in process) ------------------------------------------------------

# Runner's functions on the reload path, wrapped with a timer (those that exist are timed).
# Each is wrapped where its caller looks it up (sync_project calls `runner.sync.load_project`).
PHASES = [
    ("runner.daemon.reload", "Reloader", "sync", "the whole reload (Reloader.sync)"),
    ("runner.daemon.reload", None, "load_tasks", "  load_tasks (in a thread; changed files parsed, the rest from the cache)"),
    ("runner.daemon.reload", None, "sync_project", "  sync_project"),
    ("runner.store", "Store", "task_files", "    Store.task_files"),
    ("runner.store", "Store", "_tasks", "    Store._tasks (a full read of the tasks table)"),
    ("runner.sync", None, "load_project", "    load_project (plugins, callables)"),
    ("runner.sync", None, "plan", "    sync.plan"),
    ("runner.store", "Store", "sync_tasks", "    Store.sync_tasks (write lock: read, plan, apply)"),
    ("runner.store", "Store", "_apply", "      Store._apply"),
    ("runner.engine", "Engine", "reload", "  Engine.reload (takes the tasks as the sync left them)"),
    ("runner.daemon.scheduler", "Scheduler", "reschedule", "  Scheduler.reschedule"),
]


def reload_phases(root: Path, repeat: int, profile: Path | None) -> tuple[list[float], list[tuple[str, float, float]]]:
    """Time the steps of ``Reloader.sync`` for a one-file edit, in this process (no file watcher).

    Returns the wall time of each reload and, per step: its label, calls per reload and the
    median over reloads of the time spent in it. Nested steps are counted in their parents too.
    """
    import cProfile
    import functools
    import gc
    import importlib
    import inspect

    import anyio

    spent: dict[str, list[float]] = {}
    current: dict[str, float] = {}
    calls: dict[str, int] = {}
    undo = []

    def timed(fn: Any, label: str) -> Any:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    current[label] = current.get(label, 0.0) + time.perf_counter() - start
                    calls[label] = calls.get(label, 0) + 1
        else:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    current[label] = current.get(label, 0.0) + time.perf_counter() - start
                    calls[label] = calls.get(label, 0) + 1
        return wrapper

    for module_name, cls, attr, label in PHASES:
        owner: Any = importlib.import_module(module_name)
        if cls is not None:
            owner = getattr(owner, cls, None)
        if owner is None or not hasattr(owner, attr):
            continue
        original = getattr(owner, attr)
        setattr(owner, attr, timed(original, label))
        undo.append((owner, attr, original))

    from runner.daemon.reload import Reloader
    from runner.daemon.runs import Runs
    from runner.daemon.scheduler import Scheduler, SystemClock
    from runner.engine import Engine
    from runner.store import open_store

    walls: list[float] = []
    profiler = cProfile.Profile() if profile else None
    write_probe(root, 0)

    resolved = root.resolve()

    async def run() -> None:
        async with open_store(root / "phases.db") as store:
            reloader = Reloader(resolved, store, anyio.Event())
            await reloader.sync(None)
            async with Engine(store, root) as engine, anyio.create_task_group() as group:
                # The scheduler is never run here (nothing fires): only its reschedule is timed.
                scheduler = Scheduler(store, engine, Runs(engine, group, remote=False), started_at=time.time(), clock=SystemClock())
                await scheduler.start()

                async def apply(revision: Any, tasks: Any) -> None:
                    engine.revision = revision
                    await engine.reload(tasks)
                    await scheduler.reschedule()

                reloader.apply = apply
                for version in range(1, repeat + 2):
                    write_probe(root, version)
                    current.clear()
                    gc.collect()
                    if profiler:
                        profiler.enable()
                    start = time.perf_counter()
                    await reloader.sync({root / "tasks.d" / "zz-probe.yaml"})
                    wall = time.perf_counter() - start
                    if profiler:
                        profiler.disable()
                    if version == 1:
                        calls.clear()
                        continue  # the first reload after start-up fills the caches: not counted
                    walls.append(wall)
                    for label, seconds in current.items():
                        spent.setdefault(label, []).append(seconds)

    try:
        anyio.run(run)
    finally:
        for owner, attr, original in undo:
            setattr(owner, attr, original)
    if profiler and profile:
        profiler.dump_stats(str(profile))
    steps = [
        (label, calls.get(label, 0) / repeat, statistics.median(spent[label]))
        for *_, label in PHASES if label in spent
    ]
    return walls, steps


# -- 3. memory ------------------------------------------------------------------------------------


@dataclass
class MemoryRow:
    label: str
    tasks: int
    scheduled: int
    when: str
    rss: float
    hwm: float
    note: str = ""


def measure_memory(
    runner: list[str], tmp: Path, tasks: int, scheduled: int, every: str, fire_for: float
) -> tuple[list[MemoryRow], str]:
    rows: list[MemoryRow] = []
    # The floor: an interpreter that imported what the daemon imports, and nothing else.
    probe = subprocess.run(
        [PYTHON, "-c", f"{DAEMON_IMPORTS}\nprint(open('/proc/self/status').read())"],
        capture_output=True, text=True, check=True, cwd=tmp,
    ).stdout
    floor = {k: int(v.split()[0]) / 1024 for k, _, v in (line.partition(":") for line in probe.splitlines())
             if k in ("VmRSS", "VmHWM")}
    rows.append(MemoryRow("python with the daemon's imports, nothing run", 0, 0, "", floor["VmRSS"], floor["VmHWM"]))

    tiny = tmp / "tiny"
    (tiny / "tasks.d").mkdir(parents=True)
    (tiny / "tasks.d" / "hello.yaml").write_text('version: 1\ntasks:\n  hello:\n    command: "echo hello"\n')
    daemon = DaemonProcess(runner, tiny, tiny / "store.db", tiny / "daemon.log", tmp)
    daemon.wait_for("daemon_started")
    time.sleep(1)
    cpu = daemon.cpu_seconds()
    time.sleep(IDLE_SECONDS)
    cpu = daemon.cpu_seconds() - cpu
    mem = daemon.memory()
    daemon.stop()
    rows.append(MemoryRow("idle daemon, one-task project", 1, 0, f"{1 + IDLE_SECONDS:g} s after start-up",
                          mem["VmRSS"], mem["VmHWM"],
                          f"CPU while idle: {cpu:.2f} s in {IDLE_SECONDS:g} s ({100 * cpu / IDLE_SECONDS:.1f}%)"))

    big = tmp / "memory"
    generate(big, tasks=tasks - scheduled, files=max(1, (tasks - scheduled) // 100), python=20)
    strip_schedules(big)
    scheduled_file(big, scheduled, every)
    write_probe(big, 0)
    db = big / "store.db"
    daemon = DaemonProcess(runner, big, db, big / "daemon.log", tmp)
    started = daemon.wait_for("daemon_started", within=600)[0]
    startup = log_time(started) - daemon.launched
    time.sleep(2)
    mem = daemon.memory()
    rows.append(MemoryRow(f"daemon, {tasks:,} tasks", tasks, scheduled, "2 s after start-up", mem["VmRSS"], mem["VmHWM"],
                          f"start-up {startup:.1f} s"))
    peak = mem["VmRSS"]
    began = log_time(started)
    while time.time() - began < fire_for:
        time.sleep(0.5)
        peak = max(peak, daemon.memory()["VmRSS"])
    mem_fired = daemon.memory()
    fired = bursts(db)
    own = []
    for version in range(1, RELOADS_FOR_MEMORY + 1):
        seen = len(daemon.events("reloaded"))
        write_probe(big, version)
        line = daemon.wait_for("reloaded", count=seen + 1, within=60)[seen]
        took = re.search(r"reloaded in ([\d.]+)s", line["message"])
        own.append(float(took.group(1)) if took else math.nan)
        time.sleep(0.3)
    time.sleep(1)
    mem_reloaded = daemon.memory()
    daemon.stop()
    rows.append(MemoryRow(f"daemon, {tasks:,} tasks", tasks, scheduled, f"after firing for {fire_for:g} s",
                          mem_fired["VmRSS"], mem_fired["VmHWM"], f"RSS sampled every 0.5 s peaked at {peak:.0f} MB"))
    rows.append(MemoryRow(f"daemon, {tasks:,} tasks", tasks, scheduled,
                          f"then after {RELOADS_FOR_MEMORY} reloads (one-file edits)",
                          mem_reloaded["VmRSS"], mem_reloaded["VmHWM"],
                          "reloaded in " + ", ".join(f"{1000 * x:.0f}" for x in own) + " ms (daemon's own)"))
    return rows, fired


def bursts(db: Path) -> str:
    """How late the fires were that fell due at the same moment (every: of one anchor)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT scheduled_for, queued_at - scheduled_for, started_at - scheduled_for FROM runs "
            "WHERE trigger = 'schedule' ORDER BY scheduled_for, queued_at"
        ).fetchall()
    groups: dict[float, list[tuple[float, float | None]]] = {}
    for due, queued, started in rows:
        groups.setdefault(round(due, 3), []).append((queued, started))
    done = [g for g in groups.values() if len(g) > 1]
    if not done:
        return f"{len(rows)} scheduled runs"
    last = [max(q for q, _ in g) for g in done]
    step = [(max(q for q, _ in g) - min(q for q, _ in g)) / (len(g) - 1) for g in done]
    started = [s for g in done for _, s in g if s is not None]
    return (
        f"{len(rows)} scheduled runs in {len(done)} bursts of {', '.join(str(len(g)) for g in done)} fires due at "
        f"the same moment; queued - fire time of the last fire of a burst: median {ms(statistics.median(last))}, "
        f"max {ms(max(last))} ({ms(statistics.median(step))} per fire); started - fire time over all: median "
        f"{ms(statistics.median(started))}, max {ms(max(started))}"
    )


# -- main -----------------------------------------------------------------------------------------


def duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 10s, 1m)")
    return float(match.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long each every: 1s daemon fires")
    parser.add_argument("--repeat", type=int, default=20, help="reloads per project")
    parser.add_argument("--sizes", default="1000,10000", help="generated projects for the reload latency")
    parser.add_argument("--memory-tasks", type=int, default=10_000)
    parser.add_argument("--scheduled", type=int, default=100, help="scheduled tasks among --memory-tasks")
    parser.add_argument("--every", default="10s", help="their schedule: every: EVERY")
    parser.add_argument("--fire-for", type=float, default=35, help="seconds the memory daemon fires")
    parser.add_argument("--kinds", default="shell,python", help="tasks for the fire accuracy")
    parser.add_argument("--only", default="fire,reload,memory", help="which parts to run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--phases", action="store_true",
                        help="also time the steps of a reload of the largest project, in process")
    parser.add_argument("--profile", type=Path, help="also profile reloads of the largest project here")
    args = parser.parse_args()
    duration(args.every)
    only = set(args.only.split(","))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    compile_runner()
    runner = runner_command()
    tmp = Path(tempfile.mkdtemp(prefix="runner-bench-daemon-"))
    loads = [load_average()]
    try:
        print(f"machine: {machine()}")
        print(f"load average at start: {loads[0]}")
        print(f"runner:  {' '.join(runner)} ({runner_source()}); temp dir {tmp}")
        print(f"daemon:  {' '.join(runner)} --project P --db P/store.db --log-format json daemon")

        if "fire" in only:
            print(f"runner for this part: {runner_source()}")
            fires = []
            for kind in args.kinds.split(","):
                print(f"\n[fire] {kind}: one task every: 1s for {args.seconds:g} s ...", flush=True)
                fires.append(measure_fires(runner, tmp, kind, args.seconds))
                loads.append(load_average())
            print(f"\nload average: {loads[-1]}")
            print("\n| task (every: 1s) | fires / due before SIGTERM | dropped | doubled | started - fire time: "
                  "median | p95 | worst | queued - fire time: median | p95 | worst | finished - fire "
                  "time: median | daemon CPU | daemon RSS |")
            print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for f in fires:
                print(
                    f"| {f.kind} no-op | {f.runs} / {f.expected} | {len(f.dropped) or 'none'} | "
                    f"{len(f.doubled) or 'none'} | {spread(f.started_late)} | {spread(f.queued_late)} | "
                    f"{ms(statistics.median(f.finished_late))} | {f.cpu:.2f} s in {f.seconds:g} s "
                    f"({100 * f.cpu / f.seconds:.1f}%) | {f.memory.get('VmRSS', 0):.0f} MB |"
                )
                if f.dropped or f.doubled or f.after_stop or f.off_grid or f.not_succeeded:
                    print(f"  {f.kind}: dropped slots {f.dropped}, doubled {f.doubled}, fired after "
                          f"SIGTERM {f.after_stop}, off the grid {f.off_grid}; not succeeded (slot, status, error): "
                          f"{f.not_succeeded}")

        if "reload" in only:
            print(f"\nrunner for this part: {runner_source()}")
            results = []
            example = example_project(tmp / "example")
            print(f"\n[reload] example project, {args.repeat} reloads ...", flush=True)
            results.append(measure_reloads(runner, example, "example", args.repeat))
            loads.append(load_average())
            for size in sizes:
                root = generated_project(tmp / f"gen-{size}", size, max(1, size // 100))
                print(f"[reload] {size:,} generated tasks, {args.repeat} reloads ...", flush=True)
                results.append(measure_reloads(runner, root, f"{size}", args.repeat))
                loads.append(load_average())
            print(f"\nload average: {loads[-1]}")
            print("\n| project | tasks | daemon start-up | reloads | write -> store row: median | p95 | max "
                  "| write -> `reloaded` log line: median | p95 | max | daemon's own \"reloaded in\": "
                  "median | max | RSS before -> after the reloads | target (median) | met |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
            for r in results:
                met = statistics.median(r.to_log) <= RELOAD_TARGET
                print(
                    f"| {r.label} | {r.tasks:,} | {r.startup:.2f} s | {len(r.to_log)}"
                    f"{f' ({r.failed} failed)' if r.failed else ''} | {spread(r.to_store)} | "
                    f"{spread(r.to_log)} | {ms(statistics.median(r.own))} | {ms(max(r.own))} | "
                    f"{r.memory_start['VmRSS']:.0f} -> {r.memory_end['VmRSS']:.0f} MB | <= 300 ms | "
                    f"{'yes' if met else '**no**'} |"
                )
            if len(results) > 2:
                a, b = results[1], results[-1]
                per = (statistics.median(b.to_log) - statistics.median(a.to_log)) / max(1, b.tasks - a.tasks)
                print(f"\nscaling: {1e6 * per:.0f} us of reload per extra task ({a.tasks:,} -> {b.tasks:,} tasks)")
            if args.phases and sizes:
                root = tmp / f"gen-{sizes[-1]}"
                prof = args.profile.resolve() / f"reload-phases-{sizes[-1]}.prof" if args.profile else None
                if prof:
                    prof.parent.mkdir(parents=True, exist_ok=True)
                print(f"\n[reload] where the time goes: {args.repeat} reloads of {sizes[-1]:,} tasks in this "
                      "process (Reloader.sync called directly; no watcher) ...", flush=True)
                walls, steps = reload_phases(root, args.repeat, prof)
                loads.append(load_average())
                print(f"load average: {loads[-1]}")
                print(f"\n| step of one reload, {sizes[-1]:,} tasks | calls per reload | ms per reload (median) |")
                print("|---|---:|---:|")
                for label, per, seconds in steps:
                    depth = len(label) - len(label.lstrip())
                    print(f"| {'&nbsp;' * depth}{label.strip()} | {per:g} | {seconds * 1000:.1f} |")
                print(f"\nreload wall time in process: median {ms(statistics.median(walls))}, "
                      f"min {ms(min(walls))}, max {ms(max(walls))}" + (f"; profile: {prof}" if prof else ""))
            if args.profile and sizes:
                args.profile.mkdir(parents=True, exist_ok=True)
                prof = args.profile.resolve() / f"reload-{sizes[-1]}.prof"
                cmd = [PYTHON, "-m", "cProfile", "-o", str(prof), "-m", "runner"]
                root = tmp / f"gen-{sizes[-1]}"
                (root / "store.db").unlink(missing_ok=True)
                measure_reloads(runner, root, "profile", 5, cmd=cmd)
                print(f"profile of start-up + 5 reloads: {prof}")

        if "memory" in only:
            print(f"\nrunner for this part: {runner_source()}")
            print(f"\n[memory] {args.memory_tasks:,} tasks, {args.scheduled} every: {args.every}, "
                  f"firing {args.fire_for:g} s ...", flush=True)
            rows, fired = measure_memory(runner, tmp, args.memory_tasks, args.scheduled, args.every, args.fire_for)
            loads.append(load_average())
            print(f"\nload average: {loads[-1]}")
            print("\n| process | tasks | scheduled | when | VmRSS | VmHWM (peak) | target | met | note |")
            print("|---|---:|---:|---|---:|---:|---|---|---|")
            for row in rows:
                judged = row.tasks >= args.memory_tasks
                met = ("yes" if row.rss <= RSS_TARGET_MB else "**no**") if judged else ""
                print(f"| {row.label} | {row.tasks:,} | {row.scheduled} | {row.when} | {row.rss:.0f} MB | "
                      f"{row.hwm:.0f} MB | {'<= 150 MB RSS' if judged else ''} | {met} | {row.note} |")
            print(f"\nfiring: {fired}")
        print(f"\nload averages (1/5/15 min) at start and after each part: {' ; '.join(loads)}")
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
