"""Benchmark the task-definitions path: start-up, validate, cold sync and no-change re-sync.

Every number is the median wall time of ``--repeat`` fresh subprocesses (``time.perf_counter``
around ``subprocess.run``, interpreter start included), after one untimed warm-up run of the same
command. Measured:

1. ``runner --help`` and ``runner validate`` on the repository's example project (``tasks.d/`` at
   the repository root; a small generated project when that holds no task file) against
   ``python -c "import yaml, jsonschema, click, anyio"``. Target: validate <= 1.5x that baseline.
   Also checked with ``python -X importtime``: neither command imports sqlalchemy.
2. ``--tasks`` tasks in ``--files`` files (``gen_tasks.py``): cold ``runner sync`` (a fresh
   ``--db`` each run) against a fresh ``python -c`` that parses the same files with
   ``yaml.load(..., Loader=yaml.CSafeLoader)``. Target: cold sync <= 3x that baseline. The parse
   alone, in process, is reported too.
3. ``runner sync`` again on an up-to-date store (prints "nothing to change"). Target: well under
   half of the cold sync.

Usage::

    .venv/bin/python benchmarks/bench_definitions.py [--tasks 10000] [--files 100] [--repeat 5]
        [--python 20] [--keep] [--profile DIR]

Everything is written into a temporary directory that is removed at the end (``--keep`` keeps
it). The runner measured is the one this interpreter imports; to measure another checkout, put
its directory first: ``PYTHONPATH=/path/to/checkout .venv/bin/python benchmarks/...``. ``--profile DIR`` also runs the cold and the no-change sync once each under cProfile and
writes ``DIR/sync-cold.prof`` and ``DIR/sync-nochange.prof`` (read them with ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_tasks import generate

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Subprocesses run in the temporary directory, so that the current directory (first on sys.path
# of `python -c` and `python -m`) never shadows the runner being measured (PYTHONPATH picks it).
CWD: Path | None = None

BASELINE_IMPORTS = "import yaml, jsonschema, click, anyio"
# What the parse baseline runs: the same files, in the same order, parsed by libyaml.
PARSE_SNIPPET = """\
import os, sys, yaml
root = sys.argv[1]
paths = sorted(
    os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(('.yaml', '.yml'))
)
tasks = 0
for p in paths:
    with open(p, encoding='utf-8') as fh:
        tasks += len(yaml.load(fh.read(), Loader=yaml.CSafeLoader)['tasks'])
print(tasks)
"""


@dataclass
class Row:
    label: str
    times: list[float]
    target: str = ""
    ref: Row | None = None  # what the ratio is taken against
    limit: float | None = None  # the target, as a highest ratio of medians

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ratio(self) -> float | None:
        return self.median / self.ref.median if self.ref else None

    @property
    def ratio_of_mins(self) -> float | None:
        """Less sensitive to other load on the machine than the ratio of medians."""
        return min(self.times) / min(self.ref.times) if self.ref else None

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        return None if self.limit is None or ratio is None else ratio <= self.limit

    def compare(self, ref: Row, target: str, limit: float | None = None) -> Row:
        self.ref, self.target, self.limit = ref, target, limit
        return self


def runner_command() -> list[str]:
    """The installed ``runner`` script next to this interpreter, else ``python -m runner``."""
    script = Path(PYTHON).with_name("runner")
    if script.is_file():
        return [str(script)]
    found = shutil.which("runner")
    return [found] if found else [PYTHON, "-m", "runner"]


def run_once(cmd: list[str], expect: str | None = None) -> float:
    """Wall time of one fresh subprocess; fails loudly on a non-zero exit or unexpected output."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=CWD)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    if expect is not None and not re.search(expect, proc.stdout):
        raise SystemExit(f"{' '.join(cmd)}: expected /{expect}/ in the output, got:\n{proc.stdout[:500]}")
    return elapsed


def measure(cmd: list[str], repeat: int, expect: str | None = None, *, warm_up: bool = True) -> list[float]:
    if warm_up:
        run_once(cmd, expect)
    return [run_once(cmd, expect) for _ in range(repeat)]


def imported_modules(cmd_args: list[str]) -> tuple[set[str], dict[str, int]]:
    """Top-level modules a ``python -m runner ...`` imports, and the cumulative import time (us)
    of each root module (``yaml``, ``click``...; ``runner`` holds everything it imports)."""
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "runner", *cmd_args],
        capture_output=True, text=True, check=False, cwd=CWD,
    )
    tops: set[str] = set()
    cumulative: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not match:
            continue
        module = match.group(4)
        tops.add(module.split(".")[0])
        if "." not in module:  # a package or module root: its cumulative time is its own import
            cumulative[module] = int(match.group(2))
    return tops, cumulative


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.system()} {platform.release()}, {nproc} cores (nproc){', ' + cpu if cpu else ''}"
        f"; Python {platform.python_version()} ({PYTHON})"
    )


def load_average() -> str:
    """The 1/5/15-minute load average: other work on the machine skews every number."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def runner_source() -> str:
    """Which runner is measured: its directory, and the commit (plus local changes) if in git."""
    proc = subprocess.run(
        [PYTHON, "-c", "import runner, os; print(os.path.dirname(runner.__file__))"],
        capture_output=True, text=True, check=True, cwd=CWD,
    )
    src = Path(proc.stdout.strip())
    git = ["git", "-C", str(src.parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode != 0:
        return str(src)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "runner", "schemas"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"{src} at commit {head.stdout.strip()}" + (" + uncommitted changes" if dirty else "")


def parse_in_process(tasks_dir: Path, repeat: int) -> list[float]:
    import yaml

    paths = sorted(p for p in tasks_dir.rglob("*") if p.suffix in (".yaml", ".yml"))
    times = []
    for _ in range(repeat + 1):
        gc.collect()
        start = time.perf_counter()
        for path in paths:
            yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
        times.append(time.perf_counter() - start)
    return times[1:]


def load_tasks_in_process(project: Path, repeat: int) -> list[float]:
    from runner.spec import load_tasks

    times = []
    for _ in range(repeat + 1):
        gc.collect()
        start = time.perf_counter()
        declared = load_tasks(project)
        times.append(time.perf_counter() - start)
        if declared.problems:
            raise SystemExit(f"the generated project is invalid: {declared.problems[0]}")
        del declared  # not alive during the next run, where it would slow the collector down
    return times[1:]


def print_table(rows: list[Row]) -> None:
    print()
    print("| measurement | median | min | max | runs | target | ratio (medians) | ratio (mins) | met |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---|")
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        ratio_min = f"{row.ratio_of_mins:.2f}x" if row.ratio_of_mins is not None else ""
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        print(
            f"| {row.label} | {row.median * 1000:,.0f} ms | {min(row.times) * 1000:,.0f} ms "
            f"| {max(row.times) * 1000:,.0f} ms | {len(row.times)} | {row.target} | {ratio} "
            f"| {ratio_min} | {met} |"
        )


def compile_runner() -> None:
    """Write runner's bytecode first, as an install does: with PYTHONDONTWRITEBYTECODE set (or an
    editable install that never wrote it) every run would compile runner's sources again."""
    import compileall

    import runner

    compileall.compile_dir(str(Path(runner.__file__).parent), quiet=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the large project")
    parser.add_argument("--files", type=int, default=100, help="files in the large project")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--python", type=int, default=20, help="python tasks in the large project")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--profile", type=Path, help="also write cProfile output of both syncs here")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    compile_runner()

    global CWD
    runner = runner_command()
    tmp = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    CWD = tmp
    rows: list[Row] = []
    try:
        print(f"machine: {machine()}")
        print(f"load average at start: {load_average()}")
        print(f"runner:  {' '.join(runner)} ({runner_source()}); temp dir {tmp}")

        # -- 1. start-up: --help and validate on the example project --------------------------
        has_example = any(
            p.suffix in (".yaml", ".yml") for p in (REPO / "tasks.d").rglob("*") if p.is_file()
        )
        example_check = subprocess.run(
            [*runner, "--project", str(REPO), "validate"],
            capture_output=True, text=True, check=False, cwd=CWD,
        )
        if has_example and example_check.returncode == 0:
            example = REPO
            print(f"example project: {REPO} (the repository's tasks.d/: "
                  f"{example_check.stdout.strip()})")
        else:
            example = tmp / "example"
            generate(example, tasks=30, files=3, python=2, seed=7)
            why = "holds no task file" if not has_example else "does not validate"
            print(f"example project: the repository's tasks.d/ {why}; "
                  f"using a generated one (30 tasks in 3 files) at {example}")
        bare = Row("`python -c pass` (interpreter only)", measure([PYTHON, "-c", "pass"], args.repeat))
        base = Row(f'baseline: `python -c "{BASELINE_IMPORTS}"`',
                   measure([PYTHON, "-c", BASELINE_IMPORTS], args.repeat))
        helped = Row("`runner --help`", measure([*runner, "--help"], args.repeat, r"Usage:"))
        helped.compare(base, "(info: vs baseline)")
        valid = Row("`runner validate` (example project)",
                    measure([*runner, "--project", str(example), "validate"], args.repeat, r"^ok: "))
        valid.compare(base, "<= 1.5x baseline", 1.5)
        rows += [bare, base, helped, valid]

        sqlalchemy_free = True
        for what in (["--help"], ["--project", str(example), "validate"]):
            tops, cumulative = imported_modules(what)
            heavy = sorted(cumulative.items(), key=lambda kv: -kv[1])[:6]
            has = "sqlalchemy" in tops
            sqlalchemy_free &= not has
            print(f"runner {what[-1]}: imports sqlalchemy: {'YES' if has else 'no'}; "
                  f"aiosqlite: {'YES' if 'aiosqlite' in tops else 'no'}; largest imports: "
                  + ", ".join(f"{m} {us / 1000:.0f} ms" for m, us in heavy))

        # -- 2. cold sync of a large project vs parsing its files ------------------------------
        big = tmp / "big"
        start = time.perf_counter()
        generate(big, tasks=args.tasks, files=args.files, python=args.python)
        size = sum(p.stat().st_size for p in (big / "tasks.d").rglob("*.yaml"))
        print(f"large project: {args.tasks} tasks in {args.files} files ({size / 1e6:.1f} MB, "
              f"{args.python} python tasks) written in {time.perf_counter() - start:.1f} s")

        parse = Row(f"baseline: fresh `python -c` yaml.load CSafeLoader, {args.files} files",
                    measure([PYTHON, "-c", PARSE_SNIPPET, str(big / "tasks.d")], args.repeat,
                            rf"^{args.tasks}$"))
        parse_only = Row("  the same parse alone, in process", parse_in_process(big / "tasks.d", args.repeat))
        load_only = Row("  `runner.spec.load_tasks`, in process (info)", load_tasks_in_process(big, args.repeat))

        counter = iter(range(1_000_000))

        def cold_once() -> float:
            db = tmp / f"cold-{next(counter)}.db"
            return run_once([*runner, "--project", str(big), "--db", str(db), "sync"], r"^added: ")

        cold_once()  # warm-up
        cold = Row(f"cold `runner sync`, {args.tasks} tasks (fresh --db)", [cold_once() for _ in range(args.repeat)])
        cold.compare(parse, "<= 3x parse baseline", 3.0)

        # -- 3. no-change re-sync -------------------------------------------------------------
        warm_db = tmp / "warm.db"
        run_once([*runner, "--project", str(big), "--db", str(warm_db), "sync"], r"^added: ")
        resync = Row("no-change `runner sync` (same store)",
                     measure([*runner, "--project", str(big), "--db", str(warm_db), "sync"],
                             args.repeat, r"^nothing to change$"))
        resync.compare(cold, "well under 0.5x cold sync", 0.5)
        big_validate = Row(f"`runner validate`, {args.tasks} tasks (info)",
                           measure([*runner, "--project", str(big), "validate"], args.repeat, r"^ok: "))
        big_validate.compare(parse, "(info: vs parse baseline)")
        rows += [parse, parse_only, load_only, cold, resync, big_validate]

        print(f"load average at end: {load_average()}")
        print_table(rows)
        print(f"\nsqlalchemy imported by --help/validate: {'YES' if not sqlalchemy_free else 'no'}")

        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            base_cmd = [PYTHON, "-m", "cProfile", "-o"]
            cold_prof, warm_prof = args.profile / "sync-cold.prof", args.profile / "sync-nochange.prof"
            run_once([*base_cmd, str(cold_prof), "-m", "runner", "--project", str(big),
                      "--db", str(tmp / "profile.db"), "sync"], r"^added: ")
            run_once([*base_cmd, str(warm_prof), "-m", "runner", "--project", str(big),
                      "--db", str(tmp / "profile.db"), "sync"], r"^nothing to change$")
            print(f"profiles: {cold_prof}, {warm_prof}")
        failed = [row.label for row in rows if row.met is False]
        if failed or not sqlalchemy_free:
            print("targets missed: " + "; ".join(failed + ([] if sqlalchemy_free else ["sqlalchemy-free start"])))
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
