"""Runs on workers, as operators run them: a real PostgreSQL store, real ``runner worker``
processes, ``runner run/trigger/daemon --remote``, signals and ``kill -9``.

Workers and the daemon log JSON lines (``--log-format json``) to files the tests read, and the
tests read the store through psycopg, so they wait for what happened (with a deadline) instead
of for time to pass. Every worker a test starts is stopped when it ends (SIGTERM, a second
SIGTERM that cancels what still runs, then SIGKILL), whether it passed or not.

Run by hand with ``RUNNER_TEST_PG_URL`` pointing at a running server (see tests/pg.py), or let
the tests start a throwaway one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import (
    Cli,
    ProjectDir,
    cli_env,
    json_lines,
    live_members,
    logged_events,
    ok,
    wait_for_event,
)
from pg import pg_server, pg_url  # noqa: F401

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def poll(condition: Callable[[], T | None], *, within: float = 20.0, what: str = "it", every: float = 0.02) -> T:
    """Wait until ``condition()`` is truthy and return it, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {within}s")
        time.sleep(every)
    return value


class PatientCli(Cli):
    """conftest's Cli, with more time for each command: here several runner processes and
    workers start at once, on two cores that may be busy with other work."""

    def finish(self, process: subprocess.Popen[str], *, within: float = 30) -> subprocess.CompletedProcess[str]:
        return super().finish(process, within=within)


@pytest.fixture
def cli(project: ProjectDir) -> Iterator[Cli]:
    runner = PatientCli(project)
    yield runner
    runner.cleanup()


# -- the store, read as an operator would with psql --------------------------------------------


class Database:
    """One autocommit psycopg connection to the test's store."""

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self.conn: Any = psycopg.connect(
            url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, row_factory=dict_row
        )

    def rows(self, query: str, *params: Any) -> list[dict[str, Any]]:
        return list(self.conn.execute(query, params).fetchall())

    def value(self, query: str, *params: Any) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else next(iter(row.values()))

    def run(self, run_id: str) -> dict[str, Any]:
        (row,) = self.rows("SELECT * FROM runs WHERE id = %s", run_id)
        return row

    def runs_of(self, task: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM runs WHERE task = %s ORDER BY queued_at, id", task)

    def final(self, run_id: str) -> dict[str, Any] | None:
        """The run once it has a final status (None before)."""
        rows = self.rows("SELECT * FROM runs WHERE id = %s AND status NOT IN ('queued', 'running')", run_id)
        return rows[0] if rows else None

    def jobs(self) -> int:
        return int(self.value("SELECT count(*) FROM procrastinate_jobs"))


@pytest.fixture
def pg(pg_url: str) -> Iterator[Database]:  # noqa: F811
    database = Database(pg_url)
    yield database
    database.conn.close()


# -- long-running runner processes ------------------------------------------------------------


class Logged:
    """A `runner worker` or `runner daemon` process and the JSON lines it logged."""

    def __init__(self, cli: Cli, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.log_file = log_path.open("w")
        self.process = cli.start(
            "--log-format", "json", *args, env=env, stdout=subprocess.DEVNULL, stderr=self.log_file
        )
        self.pid = self.process.pid
        self.paused = False

    def events(self, event: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        return logged_events(self.log_path, event, **fields)

    def wait_for(self, event: str, *, count: int = 1, within: float = 20, **fields: Any) -> list[dict[str, Any]]:
        return wait_for_event(self.log_path, event, count=count, within=within, **fields)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)
        if signum == signal.SIGSTOP:
            self.paused = True
        elif signum in (signal.SIGCONT, signal.SIGKILL):
            self.paused = False

    def stop(self, signum: int = signal.SIGTERM, *, within: float = 20) -> int:
        """Signal it, wait for it to exit and return its exit code (fail if it does not exit)."""
        if self.process.poll() is None:
            if self.paused:
                self.send(signal.SIGCONT)
            self.send(signum)
        try:
            return self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.log_path.name}: did not exit within {within}s:\n{self.log_path.read_text()}"
            ) from None
        finally:
            self.log_file.close()

    def kill(self) -> None:
        self.send(signal.SIGKILL)
        self.process.wait()
        self.log_file.close()


class Workers:
    """Starts `runner worker` processes on the test's store; stops every one of them at the end."""

    def __init__(self, cli: Cli, db: str, logs: Path) -> None:
        self.cli = cli
        self.db = db
        self.logs = logs
        self.all: list[Logged] = []

    def start(self, *args: str, env: dict[str, str] | None = None, project: Path | None = None) -> Logged:
        where = ("--project", str(project)) if project is not None else ()
        log_path = self.logs / f"worker-{len(self.all)}.log"
        worker = Logged(self.cli, log_path, *where, "--db", self.db, "worker", *args, env=env)
        self.all.append(worker)
        return worker

    def started(self, count: int, *args: str, env: dict[str, str] | None = None) -> list[Logged]:
        """``count`` workers started at once, each ready (it logged ``worker_started``)."""
        crew = [self.start(*args, env=env) for _ in range(count)]
        for worker in crew:
            worker.wait_for("worker_started")
        return crew

    def by_pid(self, pid: int) -> Logged:
        (worker,) = [w for w in self.all if w.pid == pid]
        return worker

    def finished_runs(self) -> Counter[str]:
        """How many times each run id was logged finished, over every worker's log."""
        return Counter(e["run_id"] for w in self.all for e in w.events("run_finished"))

    def cleanup(self) -> None:
        """Stop every worker still running: SIGTERM, then (runs still going) SIGTERM again,
        which cancels them, then SIGKILL."""
        running = [w for w in self.all if w.process.poll() is None]
        for worker in running:
            if worker.paused:
                worker.send(signal.SIGCONT)
        for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            for worker in running:
                if worker.process.poll() is None:
                    worker.process.send_signal(signum)
            deadline = time.monotonic() + 5
            for worker in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
        for worker in self.all:
            worker.log_file.close()


@pytest.fixture
def workers(cli: Cli, pg_url: str, tmp_path: Path) -> Iterator[Workers]:  # noqa: F811
    logs = tmp_path / "logs"
    logs.mkdir()
    crew = Workers(cli, pg_url, logs)
    yield crew
    crew.cleanup()


# -- what tasks leave behind ------------------------------------------------------------------------


def task_started(cli: Cli, name: str) -> tuple[int, str]:
    """Wait for a task that wrote "PGID RUN_ID" to ./started-NAME (see ``marked``); its process
    group is SIGKILLed when the test ends."""
    marker = cli.project.root / f"started-{name}"
    pgid, run_id = poll(lambda: marker.exists() and marker.read_text().split(), what=f"{name} to start")
    cli.groups.append(int(pgid))
    marker.unlink()
    return int(pgid), run_id


def marked(name: str, then: str) -> str:
    """A shell command that notes its process group and run id for ``task_started``, then runs ``then``."""
    return f'echo "$(ps -o pgid= $$) $RUNNER_RUN_ID" > started-{name}; {then}'


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker`` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited while we looked
        if marker in command:
            found.append(int(entry.name))
    return found


def signal_handler_installed(pid: int, signum: int) -> bool:
    """Whether process ``pid`` catches ``signum`` (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    (caught,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")]
    return bool(int(caught, 16) >> (signum - 1) & 1)


def waiting_for_signals(process: subprocess.Popen[str]) -> None:
    """Wait until a `runner run --remote` waits with its signal handling in place: Python
    catches SIGINT from the start, SIGTERM only once runner listens for both."""
    poll(lambda: signal_handler_installed(process.pid, signal.SIGTERM), what="runner to handle signals")


def runs_json(cli: Cli, db: str, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(ok(cli("--db", db, "runs", "--json", "--limit", "1000", *args)).stdout)
    return found


def show(cli: Cli, db: str, run_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(ok(cli("--db", db, "show", run_id, "--json")).stdout)
    return shown


CALC = """
import time


def add(a: int, b: int) -> dict:
    time.sleep(0.05)
    return {"sum": a + b}
"""


# -- 1. a burst of triggers ---------------------------------------------------------------------------

BURST = """
import sys

from runner.cli import main

project, db, count, *names = sys.argv[1:]
for i in range(int(count)):
    # The `runner trigger --remote NAME` command, without paying for a new interpreter each time.
    main(["--project", project, "--db", db, "trigger", "--remote", names[i % len(names)]], standalone_mode=False)
"""


def test_a_burst_of_triggers_from_several_processes_runs_each_once_spread_over_the_workers(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          add:
            type: python
            callable: plugins.calc:add
            parameters: {a: 40, b: 2}
          shout:
            command: sleep 0.5; echo "shell $RUNNER_RUN_ID"
        """,
    )
    project.plugin("calc", CALC)
    ok(cli("--db", pg_url, "sync"))  # trigger --remote takes the store's definitions, as the daemon synced them
    crew = workers.started(3)

    senders = [
        subprocess.Popen(
            [sys.executable, "-c", BURST, str(project.root), pg_url, "10", *(["add", "shout"] if i % 2 else ["shout", "add"])],
            cwd=project.root, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(4)
    ]
    cli.started.extend(senders)
    run_ids = [line for sender in senders for line in ok(cli.finish(sender)).stdout.split()]
    assert len(run_ids) == 40 == len(set(run_ids))

    poll(
        lambda: pg.value("SELECT count(*) FROM runs WHERE status NOT IN ('queued', 'running')") == 40,
        within=30, what="40 runs to end",
    )
    history = runs_json(cli, pg_url)
    assert sorted(r["id"] for r in history) == sorted(run_ids), "a run is missing or was made twice"
    assert {(r["status"], r["attempt"], r["trigger"]) for r in history} == {("succeeded", 1, "trigger")}
    for run in history:
        if run["task"] == "add":
            assert run["result"] == {"sum": 42}
        else:
            assert run["stdout"] == f"shell {run['id']}\n"
    assert Counter(r["task"] for r in history) == {"add": 20, "shout": 20}

    # Each run ran once: one worker logged it finished, once; no job was delivered twice.
    assert workers.finished_runs() == dict.fromkeys(run_ids, 1)
    assert [e for w in crew for e in w.events("job_skipped")] == []
    ran_on = pg.rows("SELECT host, pid, count(*) AS runs FROM runs GROUP BY host, pid")
    assert {r["host"] for r in ran_on} == {socket.gethostname()}
    assert {r["pid"] for r in ran_on} <= {w.pid for w in crew}
    assert len(ran_on) > 1, f"every run went to one worker: {ran_on}"
    poll(lambda: pg.jobs() == 0, what="the finished jobs to be deleted")
    assert [w.stop() for w in crew] == [0, 0, 0]


# -- 2. runner run --remote reports like runner run --------------------------------------------------


def test_run_remote_prints_and_exits_like_run(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          greet:
            command: echo "hello $PARAM_WHO"
            parameters: {who: world}
          add:
            type: python
            callable: plugins.calc:add
            parameters: {a: 1, b: 2}
          broken:
            command: echo "half done"; exit 4
          resting:
            command: echo never
            enabled: false
          fetch:
            command: echo "fetched by $RUNNER_RUN_ID"
          report:
            command: cat "$RUNNER_UPSTREAM_FILE"
            needs: [fetch]
        """,
    )
    project.plugin("calc", CALC)
    (worker,) = workers.started(1)

    # All at once, each syncing first, as several users might.
    greet, add, broken, local, bad, unknown, disabled, report = cli.side_by_side(
        ("--db", pg_url, "run", "--remote", "greet", "-p", "who=workers"),
        ("--db", pg_url, "run", "--remote", "add", "-p", "b=41"),
        ("--db", pg_url, "run", "--remote", "broken"),
        ("--db", pg_url, "run", "broken"),
        ("--db", pg_url, "run", "--remote", "add", "-p", "a=many"),
        ("--db", pg_url, "run", "--remote", "nope"),
        ("--db", pg_url, "run", "--remote", "resting"),
        ("--db", pg_url, "run", "--remote", "report", "--json"),
    )
    assert (greet.returncode, greet.stdout) == (0, "hello workers\n")
    assert (add.returncode, json.loads(add.stdout)) == (0, {"sum": 42})
    assert (broken.returncode, broken.stdout) == (1, "half done\n")
    assert (local.returncode, local.stdout) == (broken.returncode, broken.stdout), "run --remote differs from run"
    assert bad.returncode == 2 and "parameter 'a'" in bad.stderr
    assert unknown.returncode == 3 and "'nope' is not declared" in unknown.stderr
    assert disabled.returncode == 3 and "resting" in disabled.stderr

    both = json_lines(ok(report).stdout)
    assert [(r["task"], r["status"]) for r in both] == [("fetch", "succeeded"), ("report", "succeeded")]
    fetch, reported = both
    assert json.loads(reported["stdout"])["fetch"]["stdout"] == f"fetched by {fetch['id']}\n"
    assert fetch["finished_at"] <= reported["started_at"]
    assert fetch["invocation"] == reported["invocation"]

    # Every run sent ran on the worker; nothing was queued for what could not run.
    sent = pg.rows("SELECT task, host, pid, parameters FROM runs WHERE queue IS NOT NULL ORDER BY task")
    here = socket.gethostname()
    assert [(r["task"], r["host"], r["pid"]) for r in sent] == [
        (task, here, worker.pid) for task in ("add", "broken", "fetch", "greet", "report")
    ]
    assert json.loads(sent[0]["parameters"]) == {"a": 1, "b": 41}
    assert pg.value("SELECT count(*) FROM runs WHERE queue IS NULL") == 1  # the local `runner run broken`
    poll(lambda: pg.jobs() == 0, within=3, what="the jobs to leave the queue")
    assert worker.stop() == 0


# -- 3. kill -9 of a worker mid-run ------------------------------------------------------------------

CRASHY = f"""
    version: 1
    tasks:
      flaky:
        # The first attempt waits to be killed; the retry finds the note it left and succeeds.
        command: |
          if [ -e tried ]; then echo "retried as $RUNNER_RUN_ID"; else touch tried; {marked("flaky", "sleep 29.1")}; fi
        retries: {{count: 1, backoff: 0s}}
      fragile:
        command: {marked("fragile", "sleep 29.2")}
"""


def test_a_worker_killed_with_9_has_its_run_interrupted_and_retried_on_another(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks("a.yaml", CRASHY)
    crew = workers.started(3)

    waiting = cli.start("--db", pg_url, "run", "--remote", "flaky")
    pgid, run_id = task_started(cli, "flaky")
    # Killed once its task's process group is on record: before, nobody could kill what it
    # leaves behind (the task lives on in a session of its own).
    poll(lambda: pg.run(run_id)["pgid"] == pgid, what="the task's process group to be recorded")
    victim = workers.by_pid(pg.run(run_id)["pid"])
    victim.kill()

    result = ok(cli.finish(waiting))
    (retry,) = pg.rows("SELECT * FROM runs WHERE parent_id = %s", run_id)
    assert result.stdout == f"retried as {retry['id']}\n"
    assert pg.run(run_id)["status"] == "interrupted"
    assert (retry["status"], retry["attempt"], retry["trigger"]) == ("succeeded", 2, "retry")
    assert retry["pid"] in {w.pid for w in crew} - {victim.pid}
    poll(lambda: live_members(pgid) == [] and processes_with("sleep 29.1") == [], what="the dead worker's sleep to go")
    assert len(pg.runs_of("flaky")) == 2

    # Without retries, the run stays interrupted and run --remote says it did not succeed.
    waiting = cli.start("--db", pg_url, "run", "--remote", "fragile")
    pgid, run_id = task_started(cli, "fragile")
    poll(lambda: pg.run(run_id)["pgid"] == pgid, what="the task's process group to be recorded")
    workers.by_pid(pg.run(run_id)["pid"]).kill()
    failed = cli.finish(waiting)
    assert failed.returncode == 1, failed.stderr
    assert "Interrupted: " in failed.stderr
    (only,) = pg.runs_of("fragile")
    assert (only["id"], only["status"]) == (run_id, "interrupted")
    poll(lambda: live_members(pgid) == [] and processes_with("sleep 29.2") == [], what="the dead worker's sleep to go")
    poll(lambda: pg.jobs() == 0, what="the dead workers' jobs to be settled")
    (survivor,) = [w for w in crew if w.process.poll() is None]
    assert survivor.stop() == 0


# -- 4. a worker that stops beating its heart ----------------------------------------------------------

THRICE = f"""
    version: 1
    tasks:
      thrice:
        # Attempt 1 fails at once and its worker retries it itself; attempt 2 waits while that
        # worker goes silent; attempt 3, queued by whoever recovers attempt 2, succeeds.
        command: |
          n=$(($(cat tries 2>/dev/null || echo 0) + 1)); echo $n > tries
          case $n in 1) exit 3;; 2) {marked("thrice", "sleep 29.3")};; *) echo "attempt $n as $RUNNER_RUN_ID";; esac
        retries: {{count: 2, backoff: 0s}}
"""


def test_a_silent_worker_has_its_run_recovered_by_the_others(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks("a.yaml", THRICE)
    crew = workers.started(3, env={"RUNNER_WORKER_STALE_AFTER": "3"})

    waiting = cli.start("--db", pg_url, "run", "--remote", "thrice", "--json")
    pgid, second = task_started(cli, "thrice")
    silent = workers.by_pid(pg.run(second)["pid"])
    # Its writes for the start committed first: a worker frozen inside a store write holds the
    # store's write lock, and every other process's writes wait until it goes on or its
    # session ends (not what this test is about).
    poll(lambda: (run := pg.run(second))["status"] == "running" and run["pgid"] == pgid, what="the start to be recorded")
    silent.send(signal.SIGSTOP)  # alive (its pid checks out), but no heartbeat: as if on a lost host

    # Stale 3 s after its last heartbeat (they come every 2 s), looked for every 2 s: ~1-5 s.
    poll(lambda: pg.final(second), within=15, what="the silent worker's run to be recovered")
    result = ok(cli.finish(waiting))
    runs = json_lines(result.stdout)
    assert [(r["attempt"], r["status"]) for r in runs] == [(1, "failed"), (2, "interrupted"), (3, "succeeded")]
    first, _, third = runs
    assert third["stdout"] == f"attempt 3 as {third['id']}\n"
    stored = {r["id"]: r for r in pg.runs_of("thrice")}
    assert len(stored) == 3 and stored[first["id"]]["pid"] == silent.pid
    assert (stored[second]["parent_id"], stored[third["id"]]["parent_id"]) == (first["id"], second)
    assert stored[third["id"]]["pid"] in {w.pid for w in crew} - {silent.pid}
    recovered = [e for w in crew if w is not silent for e in w.events("run_interrupted", run_id=second)]
    assert len(recovered) == 1, recovered

    silent.kill()  # SIGKILL ends it while stopped
    poll(lambda: live_members(pgid) == [] and processes_with("sleep 29.3") == [], what="the silent worker's sleep to go")
    poll(lambda: pg.jobs() == 0, what="the jobs to be settled")
    assert len(pg.runs_of("thrice")) == 3
    assert [w.stop() for w in crew if w is not silent] == [0, 0]


def test_a_silent_worker_that_comes_back_does_not_retry_its_run_again(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks("a.yaml", CRASHY)
    crew = workers.started(2, env={"RUNNER_WORKER_STALE_AFTER": "3"})
    waiting = cli.start("--db", pg_url, "run", "--remote", "flaky")
    pgid, run_id = task_started(cli, "flaky")
    silent = workers.by_pid(pg.run(run_id)["pid"])
    poll(lambda: (run := pg.run(run_id))["status"] == "running" and run["pgid"] == pgid, what="the start to be recorded")
    silent.send(signal.SIGSTOP)
    (retry,) = poll(lambda: pg.rows("SELECT * FROM runs WHERE parent_id = %s", run_id), within=15, what="the retry")
    poll(lambda: pg.final(retry["id"]), what="the retry to end")

    silent.send(signal.SIGCONT)  # its sleep was killed meanwhile (same host): its run "fails"
    silent.wait_for("run_finished", run_id=run_id)
    assert [(r["attempt"], r["status"]) for r in pg.runs_of("flaky")] == [(1, "interrupted"), (2, "succeeded")]
    assert ok(cli.finish(waiting)).stdout == f"retried as {retry['id']}\n"
    assert [w.stop() for w in crew] == [0, 0]


# -- 5. timeouts and cancellation ----------------------------------------------------------------------


def test_timeouts_and_ctrl_c_of_run_remote_behave_as_locally(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks(
        "a.yaml",
        f"""
        version: 1
        tasks:
          hasty:
            command: {marked("hasty", "sleep 28.1 & wait")}
            timeout: 1s
          long:
            command: {marked("long", "sleep 28.2 & wait")}
          unserved:
            command: echo never
            queue: nobody
        """,
    )
    workers.started(1, "--queue", "default")

    timed_out = cli("--db", pg_url, "run", "--remote", "hasty", "--json")
    assert timed_out.returncode == 1
    (hasty,) = json_lines(timed_out.stdout)
    assert hasty["status"] == "timed_out"
    pgid, _ = task_started(cli, "hasty")
    assert live_members(pgid) == [] and processes_with("sleep 28.1") == []

    # Ctrl-C while a worker runs it: the worker kills it and records it cancelled.
    waiting = cli.start("--db", pg_url, "run", "--remote", "long")
    pgid, long = task_started(cli, "long")
    waiting_for_signals(waiting)
    waiting.send_signal(signal.SIGINT)
    stopped = cli.finish(waiting)
    assert stopped.returncode == 130, stopped.stderr
    assert "recorded cancelled" in stopped.stderr
    assert live_members(pgid) == [] and processes_with("sleep 28.2") == []
    poll(lambda: pg.jobs() == 0, within=3, what="its job to leave the queue")

    # Ctrl-C before any worker took it up (no worker serves its queue): cancelled at once.
    waiting = cli.start("--db", pg_url, "run", "--remote", "unserved")
    (queued,) = poll(lambda: pg.runs_of("unserved"), what="the run to be queued")
    waiting_for_signals(waiting)
    assert pg.jobs() == 1
    waiting.send_signal(signal.SIGINT)
    stopped = cli.finish(waiting)
    assert stopped.returncode == 130, stopped.stderr
    assert pg.jobs() == 0, "the job is still queued"

    history = {r["id"]: r for r in runs_json(cli, pg_url)}
    assert history[long]["status"] == "cancelled" and history[long]["started_at"] is not None
    assert (history[queued["id"]]["status"], history[queued["id"]]["started_at"]) == ("cancelled", None)


def test_sigterm_lets_a_worker_finish_within_grace_and_a_second_signal_or_the_grace_cancels(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks(
        "a.yaml",
        f"""
        version: 1
        tasks:
          short:
            command: {marked("short", "sleep 1; echo done")}
            queue: patient
          stubborn:
            command: {marked("stubborn", "sleep 27.1 & wait")}
            queue: hurried
          overdue:
            command: {marked("overdue", "sleep 27.2 & wait")}
            queue: strict
        """,
    )
    patient = workers.start("--queue", "patient", "--grace", "10s")
    hurried = workers.start("--queue", "hurried", "--grace", "60s")
    strict = workers.start("--queue", "strict", "--grace", "0.5s")
    waiting = {name: cli.start("--db", pg_url, "run", "--remote", name) for name in ("short", "stubborn", "overdue")}

    _, short = task_started(cli, "short")
    assert patient.stop() == 0
    (stopping,) = patient.events("worker_stopping")
    assert pg.run(short)["finished_at"] > datetime.fromisoformat(stopping["at"]).timestamp(), "it ended before"
    assert ok(cli.finish(waiting["short"])).stdout == "done\n"

    stubborn_group, stubborn = task_started(cli, "stubborn")
    overdue_group, overdue = task_started(cli, "overdue")

    hurried.send(signal.SIGTERM)
    hurried.wait_for("worker_stopping")
    assert pg.run(stubborn)["status"] == "running"
    assert hurried.stop() == 0, "a second SIGTERM must not wait for the 60 s grace"  # within 20 s
    assert live_members(stubborn_group) == []

    assert strict.stop() == 0
    assert live_members(overdue_group) == [] and processes_with("sleep 27.") == []

    for name in ("stubborn", "overdue"):
        cancelled = cli.finish(waiting[name])
        assert cancelled.returncode == 1 and "Cancelled: stopped on request" in cancelled.stderr
    history = {r["id"]: r["status"] for r in runs_json(cli, pg_url)}
    assert history == {short: "succeeded", stubborn: "cancelled", overdue: "cancelled"}
    assert pg.jobs() == 0


# -- 6. queues -------------------------------------------------------------------------------------------


def test_a_worker_takes_runs_of_its_queues_only(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          special:
            command: echo special
            queue: special
          plain:
            command: echo plain
        """,
    )
    (general,) = workers.started(1, "--queue", "default")
    special = cli.start("--db", pg_url, "run", "--remote", "special")
    (queued,) = poll(lambda: pg.runs_of("special"), what="the special run to be queued")
    assert ok(cli("--db", pg_url, "run", "--remote", "plain")).stdout == "plain\n"
    # The plain run was queued after the special one and is done: the general worker passed it by.
    assert (pg.run(queued["id"])["status"], pg.run(queued["id"])["host"]) == ("queued", "")
    assert general.events("run_finished", task="special") == []

    (dedicated,) = workers.started(1, "--queue", "special")
    assert ok(cli.finish(special)).stdout == "special\n"
    assert pg.run(queued["id"])["pid"] == dedicated.pid
    assert [general.stop(), dedicated.stop()] == [0, 0]


def test_a_worker_whose_database_connections_are_cut_goes_on_taking_runs(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    """A database restarted, a proxy that dropped its connections: each of the worker's
    connections (its store's, its queue's, the one that listens for new jobs) is ended by the
    server; the worker connects again and takes the next run."""
    project.tasks("a.yaml", "version: 1\ntasks:\n  plain:\n    command: echo plain\n")
    (worker,) = workers.started(1)
    assert ok(cli("--db", pg_url, "run", "--remote", "plain")).stdout == "plain\n"
    listening = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
    poll(lambda: pg.value(listening) == 1, what="the worker to listen")
    cut = pg.value(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert cut >= 3
    poll(lambda: pg.value(listening) == 1, what="the worker to listen again")
    assert ok(cli("--db", pg_url, "run", "--remote", "plain")).stdout == "plain\n"
    assert worker.process.poll() is None and worker.stop() == 0


def test_a_job_the_worker_cannot_read_fails_alone(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    """A job written by something else than runner (its arguments not a run's): the worker
    says so, takes it off the queue, and goes on taking runs."""
    project.tasks("a.yaml", "version: 1\ntasks:\n  plain:\n    command: echo plain\n")
    (worker,) = workers.started(1)
    ok(cli("--db", pg_url, "run", "--remote", "plain"))  # the queue installed
    pg.value(
        "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'runner.run', 0, NULL, NULL,"
        " '{\"task\": \"plain\"}'::jsonb, NULL)::procrastinate_job_to_defer_v1])"
    )
    (error,) = worker.wait_for("job_error")
    assert "its arguments are not a run's" in error["message"]
    assert ok(cli("--db", pg_url, "run", "--remote", "plain")).stdout == "plain\n"
    poll(lambda: pg.jobs() == 0, within=3, what="the jobs to leave the queue")
    assert worker.process.poll() is None and worker.stop() == 0


# -- 7. version skew --------------------------------------------------------------------------------------


def test_a_worker_on_another_revision_says_so_and_records_its_own(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          add:
            type: python
            callable: plugins.calc:add
            parameters: {a: 1, b: 2}
        """,
    )
    project.plugin("calc", CALC)
    # The workers' machine has another revision deployed: other plugins, in a git work tree.
    elsewhere = tmp_path / "deployed"
    for part in ("tasks.d", "plugins"):
        shutil.copytree(project.root / part, elsewhere / part)
    (elsewhere / "plugins" / "calc.py").write_text(CALC.replace("a + b", "a + b + 100"))
    git = ["git", "-C", str(elsewhere), "-c", "user.name=ops", "-c", "user.email=ops@example.com"]
    for args in (["init", "-q"], ["add", "tasks.d", "plugins"], ["commit", "-qm", "v2"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    worker = workers.start(project=elsewhere)
    (started,) = worker.wait_for("worker_started")
    deployed = started["revision"]
    from runner.revision import project_revision

    queued_at = project_revision(project.root).digest
    assert deployed != queued_at

    (run,) = json_lines(ok(cli("--db", pg_url, "run", "--remote", "add", "--json")).stdout)
    assert run["result"] == {"sum": 103}, "the worker runs its own plugins"
    (warning,) = worker.wait_for("revision_mismatch")
    assert (warning["level"], warning["theirs"], warning["ours"]) == ("warning", queued_at, deployed)
    shown = show(cli, pg_url, run["id"])
    assert (shown["revision"], shown["git_commit"]) == (deployed, commit), "the run records what it ran with"
    (note,) = shown["logs"]
    assert note["level"] == "warning"
    assert f"this worker runs revision {deployed} (git {commit[:12]})" in note["message"]
    assert f"but the run was queued at revision {queued_at}" in note["message"]
    assert worker.stop() == 0


# -- 8. the daemon sends its fires to the workers ----------------------------------------------------------


def test_daemon_remote_sends_each_fire_to_the_workers_once(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          tick:
            command: echo "tick $RUNNER_RUN_ID"
            schedule: {every: 1s}
        """,
    )
    crew = workers.started(2)
    daemon = Logged(cli, tmp_path / "logs" / "daemon.log", "--db", pg_url, "daemon", "--remote", "--no-watch")
    daemon.wait_for("daemon_started")
    poll(lambda: len([r for r in pg.runs_of("tick") if r["status"] == "succeeded"]) >= 3, what="3 ticks")
    assert daemon.stop() == 0
    assert daemon.events("run_finished") == [], "the daemon ran a tick itself"

    poll(lambda: all(r["status"] not in ("queued", "running") for r in pg.runs_of("tick")), what="the last tick")
    ticks = pg.runs_of("tick")
    assert {(r["status"], r["trigger"]) for r in ticks} == {("succeeded", "schedule")}
    assert {r["pid"] for r in ticks} <= {w.pid for w in crew}
    slots = [r["scheduled_for"] for r in ticks]
    assert len(slots) == len(set(slots)), f"a fire ran twice: {slots}"
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(sorted(slots))]
    assert gaps.count(1.0) >= len(gaps) - 1, f"fires dropped: {slots}"  # one catch-up fire at most
    assert workers.finished_runs() == {r["id"]: 1 for r in ticks}
    assert all(r["stdout"] == f"tick {r['id']}\n" for r in ticks)
    assert [w.stop() for w in crew] == [0, 0]


# -- 9. a worker needs PostgreSQL ------------------------------------------------------------------------------


def test_a_worker_on_a_sqlite_store_exits_2_saying_it_needs_postgresql(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  greet:\n    command: echo hi\n")
    worker, remote = cli.side_by_side(("worker",), ("run", "--remote", "greet"))
    assert worker.returncode == 2
    assert "runner worker needs a PostgreSQL store (--db postgresql://... or RUNNER_DB)" in worker.stderr
    assert remote.returncode == 2 and "runner run --remote needs a PostgreSQL store" in remote.stderr
    assert not project.db.exists(), "nothing was created or run on the SQLite store"


# -- cancel ------------------------------------------------------------------------------------------


def test_runner_cancel_stops_a_workers_run_and_takes_a_waiting_one_off_the_queue(
    project: ProjectDir, cli: Cli, workers: Workers, pg: Database, pg_url: str  # noqa: F811
) -> None:
    project.tasks(
        "a.yaml",
        f"""
        version: 1
        tasks:
          long:
            command: {json.dumps(marked("long", "sleep 29.4"))}
          waiting:
            command: echo never
            queue: nobody
        """,
    )
    ok(cli("--db", pg_url, "sync"))
    (worker,) = workers.started(1, "--queue", "default")
    run_id = ok(cli("--db", pg_url, "trigger", "--remote", "long")).stdout.strip()
    pgid, _ = task_started(cli, "long")

    cancelled = ok(cli("--db", pg_url, "cancel", run_id))
    assert cancelled.stdout == f"run {run_id} (long) cancelled\n"
    run = pg.run(run_id)
    assert (run["status"], run["pid"]) == ("cancelled", worker.pid)
    assert run["finished_at"] - run["cancel_requested_at"] < 1.0
    poll(lambda: live_members(pgid) == [] and processes_with("sleep 29.4") == [], within=3, what="the task to go")
    poll(lambda: pg.jobs() == 0, within=3, what="its job to leave the queue")

    # Queued for a queue no worker takes: cancelled at once, its job gone from the queue.
    queued = ok(cli("--db", pg_url, "trigger", "--remote", "waiting")).stdout.strip()
    assert pg.jobs() == 1
    body = json.loads(ok(cli("--db", pg_url, "cancel", "--json", queued)).stdout)
    assert (body["status"], body["started_at"], body["error"]["message"]) == (
        "cancelled", None, "stopped on request before it started",
    )
    assert pg.jobs() == 0
    assert worker.stop() == 0
