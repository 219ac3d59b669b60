"""Shared pytest configuration: async tests run on anyio's asyncio backend.

``project`` is a temporary project directory that tests write task files and plugins into;
``runner_cli`` runs the real ``runner`` command in it, as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import forkserver
import pg
import pytest

if TYPE_CHECKING:
    from runner.recorder import Recorder
    from runner.store import Store


TESTS = Path(__file__).resolve().parent
CORES = len(os.sched_getaffinity(0))


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: `-p no:xdist` still works
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many processes ``-n auto`` (pyproject.toml's addopts) starts: one per core and one
    more. Since the ``runner`` commands are forked from a fork server (``forkserver.py``), the
    tests spend more of their time waiting on other processes than computing: on two cores,
    loaded by other work, the suite took 204 s with two processes, 154 s with three and 153 s
    with four, which leaves the timing checks less room. None besides this one for the unit
    tests alone, which never wait: each further process would spend ~1.5 s of CPU starting and
    collecting, more than the ~5 s of all their work shared out; and at most one per test module
    named (``--dist loadfile`` gives a module to one process)."""
    paths = {Path(arg.split("::")[0]).resolve() for arg in config.args} or {TESTS}
    if all(path.is_relative_to(TESTS / "unit") for path in paths):
        return 0
    if all(path.is_file() for path in paths):
        return 0 if len(paths) == 1 else min(len(paths), CORES + 1)
    return CORES + 1


_PG_ROOT = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Once per session, in the controlling process only (pytest-xdist's workers have
    ``workerinput``): make the directory of the session's PostgreSQL cluster (see pg.py), and
    compile runner's own modules to bytecode before any test starts a ``runner`` process.

    The suite starts hundreds of them, with ``PYTHONDONTWRITEBYTECODE=1`` (see ``cli_env``), and
    in an environment that also sets it for pytest nothing else writes ``runner/__pycache__``:
    each process would compile runner's ~12,000 lines afresh (3-6% of the CPU time of a module of
    CLI tests, measured interleaved).
    A module already compiled and unchanged is left alone, an edited one is compiled again.
    """
    if hasattr(config, "workerinput"):
        return
    import compileall

    import runner

    compileall.compile_dir(Path(runner.__file__).parent, quiet=1)
    if not os.environ.get("RUNNER_TEST_PG_URL"):
        config.stash[_PG_ROOT] = pg.session_root()  # one PostgreSQL cluster for every worker


def pytest_unconfigure(config: pytest.Config) -> None:
    forkserver.SERVER.stop()
    if (root := config.stash.get(_PG_ROOT, None)) is not None:
        pg.stop_session_cluster(root)


# The longest test modules, longest first (summed test time of each in a full run). pytest-xdist
# (``--dist loadfile``) hands modules to its processes in the order collected: one of these
# started last would keep one process busy for a minute after the others ran out of work.
LONGEST_FIRST = (
    "acceptance/test_workers.py",
    "acceptance/test_docs_examples.py",
    "acceptance/test_http_openapi.py",
    "acceptance/test_cli_definitions.py",
    "acceptance/test_daemon.py",
    "contract/test_store_contract.py",
    "acceptance/test_store_faults.py",
    "acceptance/test_task_sessions.py",
    "contract/test_store_remote.py",
    "browser/test_web.py",
    "fuzz/test_fuzz_parameters.py",
    "fuzz/test_fuzz_precheck.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        return next((n for n, name in enumerate(LONGEST_FIRST) if path.endswith(f"tests/{name}")), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: within a module, and for every other module, the order stays


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ProjectDir:
    """A project on disk: ``tasks.d/`` and ``plugins/`` under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tasks.d").mkdir(parents=True, exist_ok=True)

    def write(self, rel: str, text: str) -> Path:
        """Write ``text`` (dedented) to ``root/rel``, creating directories."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    def tasks(self, rel: str, text: str) -> Path:
        """Write a task file under ``tasks.d/``."""
        return self.write(f"tasks.d/{rel}", text)

    def plugin(self, module: str, text: str) -> Path:
        """Write ``plugins/<module>.py`` (and ``plugins/__init__.py``)."""
        init = self.root / "plugins" / "__init__.py"
        if not init.exists():
            self.write("plugins/__init__.py", "")
        return self.write(f"plugins/{module}.py", text)

    @property
    def db(self) -> Path:
        """The default store location."""
        return self.root / ".runner" / "runner.db"


@pytest.fixture
def project(tmp_path: Path) -> ProjectDir:
    return ProjectDir(tmp_path / "project")


RunnerCli = Callable[..., subprocess.CompletedProcess[str]]


def cli_env() -> dict[str, str]:
    """The environment for a ``runner`` subprocess: ours, minus settings that would leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture
def runner_cli(project: ProjectDir) -> RunnerCli:
    """Run ``python -m runner --project <project> ARGS...`` and return the finished process."""

    def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return forkserver.run(
            [sys.executable, "-m", "runner", "--project", str(project.root), *args],
            cwd=project.root,
            env=cli_env(),
            timeout=timeout,
        )

    return run


# -- helpers shared by the test modules ------------------------------------------------------------

T = TypeVar("T")


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@contextlib.asynccontextmanager
async def recording(store: Store) -> AsyncIterator[Recorder]:
    """A recorder writing to ``store`` (its writer running), closed on the way out."""
    import anyio

    from runner.recorder import Recorder

    recorder = Recorder(store)
    async with anyio.create_task_group() as group:
        await group.start(recorder.run)
        try:
            yield recorder
        finally:
            recorder.close()


def poll(condition: Callable[[], T | None], *, within: float = 5.0, what: str = "it") -> T:
    """Wait until ``condition()`` is truthy and return it; nothing signals another process's work."""
    deadline = time.monotonic() + within
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {within}s")
        time.sleep(0.01)
    return value


def logged_events(log_path: Path, event: str | None = None, **fields: Any) -> list[dict[str, Any]]:
    """The JSON lines a runner process logged to ``log_path`` (``--log-format json``) with this
    ``event`` and these field values, oldest first."""
    found = []
    for line in log_path.read_text().splitlines():
        try:
            body = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written, or not runner's
        if (event is None or body.get("event") == event) and all(body.get(k) == v for k, v in fields.items()):
            found.append(body)
    return found


def wait_for_event(log_path: Path, event: str, *, count: int = 1, within: float, **fields: Any) -> list[dict[str, Any]]:
    """The first ``count`` or more such lines, once they are there (AssertionError showing the log
    if they are not within ``within`` seconds)."""
    return poll(
        lambda: (found := logged_events(log_path, event, **fields)) and len(found) >= count and found,
        within=within,
        what=f"{count} {event} {fields or ''} in {log_path.name}:\n{log_path.read_text()}",
    )


def live_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (init here may not reap them at once)."""
    live = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state not in "ZX":
            live.append(int(entry.name))
    return live


# -- in-process runs: a store, and plugins that do not leak from one test into the next ----------


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """Every test's project brings its own ``plugins`` package; forget the previous test's."""
    from runner import inject, registry

    def drop() -> None:
        for name in [m for m in sys.modules if m == "plugins" or m.startswith("plugins.")]:
            del sys.modules[name]
        registry.forget()

    path = list(sys.path)
    entries, by_name = dict(inject._entries), dict(inject._by_name)
    drop()
    yield
    drop()
    sys.path[:] = path
    inject._entries.clear()
    inject._entries.update(entries)
    inject._by_name.clear()
    inject._by_name.update(by_name)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store" / "runner.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[Store]:
    from runner.store import open_store

    async with open_store(db) as opened:
        yield opened


# -- the real command, in a temporary project --------------------------------------------------

Result = subprocess.CompletedProcess[str]


class Cli:
    """Starts ``runner`` processes in the project; kills whatever a test left running."""

    def __init__(self, project: ProjectDir) -> None:
        self.project = project
        self.started: list[subprocess.Popen[str]] = []
        self.groups: list[int] = []
        self.files: list[Any] = []  # files a process writes to (a daemon's log): closed at the end

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "runner", "--project", str(self.project.root), *args]

    def start(self, *args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[str]:
        options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
        process = forkserver.popen(
            self.argv(*args),
            cwd=self.project.root,
            env={**cli_env(), **(env or {})},
            text=True,
            **options,
        )
        self.started.append(process)
        self.files.extend(f for f in (popen.get("stdout"), popen.get("stderr")) if hasattr(f, "close"))
        return process

    def finish(self, process: subprocess.Popen[str], *, within: float = 10) -> Result:
        try:
            stdout, stderr = process.communicate(timeout=within)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            raise AssertionError(f"runner did not exit within {within}s:\n{stdout}{stderr}") from None
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return self.finish(self.start(*args, env=env))

    def side_by_side(self, *commands: tuple[str, ...]) -> list[Result]:
        """Run independent commands at once; their results in the same order."""
        return [self.finish(p) for p in [self.start(*args) for args in commands]]

    def runs(self, *args: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(ok(self("runs", "--json", *args)).stdout)
        return found

    def task_started(self) -> tuple[int, str]:
        """Wait for a task that writes "PGID RUN_ID" to ./started; its group is killed at the end."""
        marker = self.project.root / "started"
        pgid, run_id = poll(lambda: marker.exists() and marker.read_text().split(), what="the task")
        self.groups.append(int(pgid))
        return int(pgid), run_id

    def group_recorded(self, run_id: str) -> None:
        """Wait until the store holds ``run_id``'s process group: only then can a runner that
        finds the run's process dead kill what it left (a kill -9 before that commit leaves the
        group running; that window is not what these tests are about)."""
        def recorded() -> bool:
            with contextlib.closing(sqlite3.connect(self.project.db)) as conn:
                row = conn.execute("SELECT pgid FROM runs WHERE id = ?", (run_id,)).fetchone()
            return row is not None and row[0] is not None

        poll(recorded, what=f"run {run_id}'s process group to be recorded")

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            process.wait()
        for pgid in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for file in self.files:  # a test that failed before stopping its daemon left it open
            file.close()


@pytest.fixture
def cli(project: ProjectDir) -> Iterator[Cli]:
    runner = Cli(project)
    yield runner
    runner.cleanup()
