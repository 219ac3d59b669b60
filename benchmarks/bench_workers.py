"""Benchmark ``runner worker``: runs per second with 1, 2 and 4 workers on one PostgreSQL store,
the latency from enqueue to start, and what each run costs the database.

Everything runs against a PostgreSQL server given by ``--db-admin`` (a role that may create
databases); each part gets a database of its own (``bench_workers_<pid>_<part>``), dropped at the
end. The project is bench_runs.py's: ``--runs`` async no-op python tasks ``py0``... (one run of
each per batch, as bench_runs.py runs them), written into a temporary directory.

1. **References, in this process**: the single-process engine on SQLite (bench_runs.py's
   ``engine_rate``: ``engine.run`` of every task at once, ``max_concurrency=16``), the same engine
   on a PostgreSQL store (no workers), and the enqueue rate alone (no workers running):
   ``Engine.workflow(name).send()`` for every task, ``--enqueue-batch`` at a time (each batch
   gathered into one transaction by the recorder's group commit), as the daemon sends runs.
   Also the wall time of one ``runner trigger --remote`` process (``--cli-triggers`` of them),
   and *one run at a time*: runner's side of a worker without the queue (``Worker.execute`` on
   each job's arguments as the queue holds them: claim, then the engine records start and end),
   sequentially in this process, so no holder of the write lock waits for a CPU.
2. **For each of ``--workers``** (W ``runner worker --concurrency C`` processes, started and ready
   before anything is timed):

   a. *idle latency*: ``--latency-runs`` runs one at a time (sent, waited for until final, then
      a 20 ms pause): ``started_at - queued_at`` from the store (``queued_at`` is taken before
      the enqueue transaction, so it includes the commit; with lock timing, also the part after
      that commit);
   b. *throughput*, ``--repeat`` times: from just before the first ``send`` of ``--runs`` runs
      (sent in batches as above, while the workers take them) until the last ``finished_at`` in
      the store; every run must end ``succeeded``. Beside it: when the enqueue finished; CPU
      time per run of the workers, of the server processes connected to the benchmark's
      database, and of this process (enqueuer and pollers); how many cores other work on the
      machine kept busy meanwhile (``/proc/stat`` less all of that); the most connections to
      the database; and, sampled from ``pg_locks`` every 10 ms, the share of the time the
      store's write lock was held and how many transactions waited for it;
   c. *latency under load*: runs sent at ``--load-fraction`` of the rate measured in b, evenly
      spaced, for ``--load-seconds``: ``started_at - queued_at``;
   d. *database work per run* (when the server has ``pg_stat_statements`` loaded): the
      top-level statements of the throughput window by kind, per run; and the workers'
      background work while idle (``--idle-seconds`` with nothing queued), per worker per second.

**Lock timing** (on unless ``--no-lock-timing``): every store write transaction on PostgreSQL
first takes one advisory lock (``pg_advisory_xact_lock``), so all writers go one at a time. The
workers (started through this script, which wraps ``Store._write`` and then calls runner's CLI)
and this process record, for each write transaction, what it was (``write_runs`` by content,
``claim_runs``, ...), how long it waited for the lock (from before BEGIN to the lock held, so
a pool checkout and a round trip are in it) and how long it held it as the client sees it
(from then until COMMIT returned: every statement, round trip and event-loop turn in between,
and the pool check-in). Summed over the throughput window they can exceed the window, since
each client sees the lock a little after the server grants and releases it: the ``pg_locks``
samples are the server's view. The workers also count the database connections they open
(SQLAlchemy's pool, procrastinate's pool and its listener).

Usage::

    .venv/bin/python benchmarks/bench_workers.py --db-admin postgresql://postgres@127.0.0.1:5432/postgres
        [--runs 2000] [--workers 1,2,4] [--concurrency 8] [--repeat 3] [--enqueue-batch 100]
        [--latency-runs 200] [--load-seconds 10] [--load-fraction 0.5] [--idle-seconds 6]
        [--cli-triggers 5] [--no-reference] [--no-lock-timing] [--profile DIR]
        [--json PATH] [--keep]
    .venv/bin/python benchmarks/bench_workers.py --db-admin URL --fan 100 --sleep 1 --workers 1,2 --concurrency 8

**A workflow spread over workers** (``--fan N``, instead of all of the above): a project of N
shell tasks ``sleep --sleep`` (``f0``...) and a task ``fan`` that needs them all; for each of
``--workers``, W workers of ``--concurrency`` C are started and ready, then ``runner run
--remote fan`` (the CLI, as a user types it) is timed from its start to its exit, beside the
ideal N x sleep / (W x C) and the span the store recorded (the first nap's start to ``fan``'s
end), and the wall time of ``runner run --remote f0`` (one task alone: the CLI's own cost
around the runs). ``--repeat`` runs each.

``--profile DIR`` runs the first worker of each round under cProfile (``DIR/worker-of-r0w1.prof``).
Prints markdown tables; ``--json PATH`` also writes every figure (and the raw lock timings'
summaries). Worker processes are started in sessions of their own and stopped with SIGTERM
(SIGKILL after 30 s); the databases are dropped ``WITH (FORCE)`` and the temporary directory
removed, also on an error or Ctrl-C (``--keep`` keeps both).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import contextvars
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

PYTHON = sys.executable
HERE = Path(__file__).resolve()
TICKS = os.sysconf("SC_CLK_TCK")
FINAL_WAIT = 300.0  # seconds a batch may take before the benchmark gives up
IDLE_GAP = 0.020  # between the runs of the idle-latency measurement
POLL = 0.005  # how often the idle-latency loop looks at its run's status

# -- lock timing (runs in the workers too: see `shim`) --------------------------------------------

_op: contextvars.ContextVar[tuple[str, int]] = contextvars.ContextVar("bench_op", default=("other", 0))
# (label, runs in it, wall time the lock was taken, wait for it s, held s)
LOCK_RECORDS: list[tuple[str, int, float, float, float]] = []
# Wall times at which the process opened a database connection (any pool, or none).
CONNECTS: list[float] = []
_WRAPPED = (
    "claim_runs", "finish_queued", "mark_interrupted", "recover_job", "cancel_workflow", "sync_tasks",
    "ensure_queue", "migrate", "save_schedule_states", "acquire_lease", "renew_lease", "prune_runs",
)


def install_lock_timing() -> None:
    """Wrap ``Store._write`` to time each write transaction, labelled by the method it serves."""
    import psycopg

    from runner.store import Store

    # Every connection the process opens (SQLAlchemy's pool, procrastinate's pool and listener)
    # goes through psycopg's AsyncConnection.connect.
    connect = psycopg.AsyncConnection.connect.__func__  # type: ignore[attr-defined]

    async def counted_connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
        CONNECTS.append(time.time())
        return await connect(cls, *args, **kwargs)

    psycopg.AsyncConnection.connect = classmethod(counted_connect)  # type: ignore[assignment, method-assign]
    original_write = Store._write

    @contextlib.asynccontextmanager
    async def timed_write(self: Any, **kwargs: Any) -> AsyncIterator[Any]:
        # kwargs: ``lock=False`` from runner's own writes that skip the advisory lock.
        started, held = time.perf_counter(), None
        try:
            async with original_write(self, **kwargs) as conn:
                held = time.perf_counter()
                yield conn
        finally:
            if held is not None:
                done = time.perf_counter()
                label, size = _op.get()
                if kwargs.get("lock") is False:
                    label += " (no lock)"
                LOCK_RECORDS.append((label, size, time.time() - (done - held), held - started, done - held))

    def labelled(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if name == "write_runs":
                batch = args[0] if args else kwargs["batch"]
                parts = [
                    k for k in ("claims", "inserts", "jobs", "starts", "finishes", "logs") if getattr(batch, k, None)
                ]
                size = max(len(batch.inserts), len(batch.starts), len(batch.finishes), len(getattr(batch, "claims", ())))
                token = _op.set((f"write_runs[{'+'.join(parts)}]", size))
            else:
                size = len(args[0]) if name == "claim_runs" and args else 1
                token = _op.set((name, size))
            try:
                return await method(self, *args, **kwargs)
            finally:
                _op.reset(token)

        return wrapper

    Store._write = timed_write  # type: ignore[method-assign]
    for name in ("write_runs", *_WRAPPED):
        if hasattr(Store, name):
            setattr(Store, name, labelled(name, getattr(Store, name)))


def shim(out: str, argv: list[str]) -> None:
    """``python bench_workers.py _timed OUT RUNNER-ARGS...``: runner's CLI with lock timing,
    the records written to OUT as JSON when the process exits."""
    install_lock_timing()

    def dump() -> None:
        Path(out).write_text(json.dumps({"locks": LOCK_RECORDS, "connects": CONNECTS}))

    atexit.register(dump)
    from runner.cli import main

    main(args=argv, prog_name="runner")


# -- small helpers --------------------------------------------------------------------------------


def quantiles(values: list[float]) -> dict[str, float]:
    """Median, p95 and max (and count) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "median": float("nan"), "p95": float("nan"), "max": float("nan")}
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return {"n": len(ordered), "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds == seconds else "-"


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy() -> float:
    """CPU seconds all cores of the machine have been busy so far (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Server:
    """The PostgreSQL server: creates and drops the benchmark's databases, reads its settings and
    the CPU time of its processes (when they are visible in /proc, as on the same machine)."""

    def __init__(self, admin_url: str, settings: list[str] | None = None) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        self.url = make_url(admin_url)
        self.conn = psycopg.connect(self.libpq(self.url.database or "postgres"), autocommit=True)
        self.created: list[str] = []
        self.db_settings = [s.split("=", 1) for s in settings or []]
        names = ("server_version", "fsync", "synchronous_commit", "max_connections", "shared_buffers",
                 "shared_preload_libraries", "wal_sync_method")
        self.settings = {n: self.conn.execute(f"SHOW {n}").fetchone()[0] for n in names}  # type: ignore[index]
        self.statements = "pg_stat_statements" in self.settings["shared_preload_libraries"]
        backend = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        try:
            self.postmaster: int | None = int(Path(f"/proc/{backend}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            self.postmaster = None

    def libpq(self, database: str) -> str:
        """A libpq URL of ``database`` on this server (for psycopg)."""
        return self.url.set(drivername="postgresql", database=database).render_as_string(hide_password=False)

    def store_url(self, database: str) -> str:
        """The store URL of ``database`` on this server (for runner)."""
        return self.url.set(drivername="postgresql+psycopg", database=database).render_as_string(hide_password=False)

    def create(self, part: str) -> str:
        from psycopg import sql

        name = f"bench_workers_{os.getpid()}_{part}"
        self.conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        for key, value in self.db_settings:
            self.conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(name), sql.Identifier(*key.split(".")), sql.Literal(value)))
        return name

    def drop(self, name: str) -> None:
        from psycopg import sql

        self.conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.created:
            self.created.remove(name)

    def cpu(self) -> float | None:
        """CPU seconds of the postmaster and its children so far (other databases' work included)."""
        if self.postmaster is None:
            return None
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(entry.name) == self.postmaster or int(fields[1]) == self.postmaster:
                total += (int(fields[11]) + int(fields[12])) / TICKS
        return total

    async def backends(self, conn: Any) -> dict[int, float]:
        """CPU seconds so far of each server process connected to ``conn``'s database."""
        rows = await (await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).fetchall()
        return {pid: proc_cpu(pid) for (pid,) in rows}

    def close(self, keep: bool) -> None:
        if not keep:
            for name in list(self.created):
                self.drop(name)
        self.conn.close()


class Workers:
    """W ``runner worker`` processes on one store, each in a session of its own."""

    def __init__(
        self, count: int, root: Path, url: str, concurrency: int, scratch: Path, timed: bool, profile: Path | None,
    ) -> None:
        self.logs = [scratch / f"worker{i}.log" for i in range(count)]
        self.timings = [scratch / f"worker{i}.locks.json" for i in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self._start(root, url, concurrency, scratch, timed, profile)
        except BaseException:
            self.stop()
            raise

    def _start(
        self, root: Path, url: str, concurrency: int, scratch: Path, timed: bool, profile: Path | None,
    ) -> None:
        for log_path, timing in zip(self.logs, self.timings, strict=True):
            runner_args = ["--project", str(root), "--db", url, "--log-format", "json", "worker",
                           "--concurrency", str(concurrency)]
            first = not self.procs
            python = [PYTHON, "-m", "cProfile", "-o", str(profile)] if profile is not None and first else [PYTHON]
            argv = [*python, str(HERE), "_timed", str(timing), *runner_args] if timed else [*python, "-m", "runner", *runner_args]
            with log_path.open("wb") as log_file:
                self.procs.append(subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file,
                    cwd=scratch, start_new_session=True,
                ))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu(self) -> float:
        return sum(proc_cpu(pid) for pid in self.pids())

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-1500:]}" for p in self.logs if p.exists())

    async def wait_ready(self, conn: Any, within: float = 90.0) -> None:
        """Until every worker logged ``worker_started`` and registered with the queue."""
        deadline = time.monotonic() + within
        while True:
            started = sum('"worker_started"' in p.read_text(errors="replace") for p in self.logs)
            registered = (await (await conn.execute("SELECT count(*) FROM procrastinate_workers")).fetchone())[0]
            if started == len(self.procs) and registered >= len(self.procs):
                return
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                raise SystemExit(f"workers did not start ({started} started, {registered} registered):\n{self.tail()}")
            await anyio.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def lock_records(self) -> tuple[list[tuple[str, int, float, float, float]], list[float]]:
        """The workers' write transactions and the times they opened database connections."""
        locks: list[tuple[str, int, float, float, float]] = []
        connects: list[float] = []
        for path in self.timings:
            if path.exists():
                found = json.loads(path.read_text())
                locks.extend(tuple(r) for r in found["locks"])
                connects.extend(found["connects"])
        return locks, connects


# -- what the database did --------------------------------------------------------------------------

# Statement kinds, by what their text contains (first match wins).
KINDS = (
    ("advisory write lock", "pg_advisory_xact_lock"),
    ("queue: fetch jobs and claim their runs (runner)", "WITH picked AS"),
    ("queue: jobs done (delete, runner)", "DELETE FROM procrastinate_jobs WHERE id = ANY"),
    ("queue: heartbeat (runner)", "UPDATE procrastinate_workers SET last_heartbeat"),
    ("procrastinate: fetch job (SKIP LOCKED)", "procrastinate_fetch_job"),
    ("procrastinate: finish job (delete)", "procrastinate_finish_job"),
    ("procrastinate: defer jobs", "procrastinate_defer_jobs"),
    ("procrastinate: heartbeat", "procrastinate_update_heartbeat"),
    ("procrastinate: jobs to abort", "abort_requested"),
    ("runs: note job ids", "UPDATE runs SET job_id"),
    ("runner: dead-worker checks (recovery loop)", "FROM procrastinate_jobs j"),
    ("runs: insert (queued)", "INSERT INTO runs"),
    ("runs: claim", "SET host="),
    ("runs: start / finish", "UPDATE runs SET status"),
    ("runs: reads (this host's dead runs, tasks)", "FROM runs"),
    ("COMMIT", "COMMIT"),
    ("BEGIN", "BEGIN"),
    ("ROLLBACK", "ROLLBACK"),
)
OWN = ("pg_stat_activity", "pg_stat_statements", "pg_locks", "count(*) FROM runs", "FROM runs WHERE trigger",
       "SELECT status FROM runs")  # this script's own polling: left out


def kind_of(query: str) -> str | None:
    if any(own in query for own in OWN):
        return None
    for kind, needle in KINDS:
        if needle in query:
            return kind
    return "other: " + " ".join(query.split())[:60]


async def reset_statements(conn: Any) -> None:
    await conn.execute(
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)"
    )


async def read_statements(conn: Any) -> dict[str, dict[str, float]]:
    """Top-level statements run in this database since the last reset, by kind: calls, rows,
    server time (ms)."""
    rows = await (await conn.execute(
        "SELECT query, calls, rows, total_exec_time FROM pg_stat_statements s"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND toplevel"
    )).fetchall()
    kinds: dict[str, dict[str, float]] = {}
    for query, calls, n_rows, exec_ms in rows:
        kind = kind_of(query)
        if kind is None:
            continue
        into = kinds.setdefault(kind, {"calls": 0, "rows": 0, "ms": 0.0})
        into["calls"] += calls
        into["rows"] += n_rows
        into["ms"] += exec_ms
    return kinds


def lock_summary(
    records: list[tuple[str, int, float, float, float]], start: float, end: float, runs: int, prefix: str = "",
) -> dict[str, Any]:
    """Write transactions whose lock was taken in [start, end] (and whose label starts with
    ``prefix``), by label; and how busy the lock was."""
    inside = [r for r in records if start <= r[2] <= end and r[0].startswith(prefix)]
    by_label: dict[str, dict[str, Any]] = {}
    for label in sorted({r[0] for r in inside}):
        mine = [r for r in inside if r[0] == label]
        by_label[label] = {
            "transactions": len(mine),
            "per_run": len(mine) / runs if runs else None,
            "runs_per_transaction": statistics.mean(r[1] for r in mine),
            "hold": quantiles([r[4] for r in mine]),
            "wait": quantiles([r[3] for r in mine]),
            "hold_total_s": sum(r[4] for r in mine),
        }
    held = sum(r[4] for r in inside if not r[0].endswith("(no lock)"))  # what held the lock
    return {
        "transactions": len(inside), "held_s": held, "window_s": end - start,
        "busy": held / (end - start) if end > start else None,
        "held_per_run_ms": held / runs * 1e3 if runs else None, "by_label": by_label,
    }


# -- the measurements -------------------------------------------------------------------------------


class Sender:
    """An engine in this process that sends runs to workers, as the daemon does."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url

    async def __aenter__(self) -> Sender:
        from runner.engine import Engine
        from runner.revision import project_revision
        from runner.store import open_store

        self._stack = contextlib.AsyncExitStack()
        self.store = await self._stack.enter_async_context(open_store(self.url))
        await self.store.ensure_queue()
        revision = project_revision(self.root)
        self.engine = await self._stack.enter_async_context(Engine(self.store, self.root, revision=revision))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def send(self, name: str, trigger: str) -> str:
        from runner.workflow import WorkflowOptions

        workflow = self.engine.workflow(name, WorkflowOptions(trigger=trigger))
        await workflow.send()
        return workflow.target_run_id

    async def batch(self, names: list[str], trigger: str, size: int) -> None:
        """Send every name, ``size`` at a time (each group committed together)."""
        for i in range(0, len(names), size):
            async with anyio.create_task_group() as group:
                for name in names[i:i + size]:
                    group.start_soon(self.send, name, trigger)


async def prepare(server: Server, root: Path, database: str, args: argparse.Namespace) -> str:
    """Sync the project into a new database and install the queue; its store URL."""
    from runner.store import open_store
    from runner.sync import sync_project

    url = server.store_url(database)
    async with open_store(url) as store:
        await sync_project(root, store)
        await store.ensure_queue()
    return url


async def connect(server: Server, database: str) -> Any:
    import psycopg

    return await psycopg.AsyncConnection.connect(server.libpq(database), autocommit=True)


async def wait_all_final(conn: Any, within: float = FINAL_WAIT) -> int:
    """Until no run is queued or running; the most connections to the database seen meanwhile."""
    deadline, most = time.monotonic() + within, 0
    while True:
        left = (await (await conn.execute(
            "SELECT count(*) FROM runs WHERE status IN ('queued', 'running')")).fetchone())[0]
        seen = (await (await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")).fetchone())[0]
        most = max(most, seen)
        if not left:
            return most
        if time.monotonic() > deadline:
            raise SystemExit(f"{left} runs still unfinished after {within:.0f} s")
        await anyio.sleep(0.05)


async def runs_of(conn: Any, trigger: str) -> list[tuple[float, float, float, str]]:
    rows = await (await conn.execute(
        "SELECT queued_at, started_at, finished_at, status FROM runs WHERE trigger = %s", (trigger,))).fetchall()
    bad = [r for r in rows if r[3] != "succeeded"]
    if bad:
        raise SystemExit(f"{len(bad)} of {len(rows)} runs of {trigger} did not succeed: {bad[:3]}")
    return [tuple(r) for r in rows]


async def idle_latency(sender: Sender, conn: Any, names: list[str], count: int) -> dict[str, Any]:
    trigger = "bench-idle"
    for i in range(count):
        run_id = await sender.send(names[i % len(names)], trigger)
        while True:
            row = await (await conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,))).fetchone()
            if row[0] not in ("queued", "running"):
                break
            await anyio.sleep(POLL)
        await anyio.sleep(IDLE_GAP)
    rows = sorted(await runs_of(conn, trigger))
    found = {
        "start": quantiles([s - q for q, s, _, _ in rows]),
        "final": quantiles([f - q for q, _, f, _ in rows]),
    }
    # With lock timing, this process's enqueue transactions (one per run here, in order) say
    # when each run's job was committed: the rest of the latency is the worker's.
    commits = sorted(at + held for label, _, at, _, held in LOCK_RECORDS
                     if rows and label == "write_runs[inserts+jobs]" and rows[0][0] <= at <= rows[-1][1])
    if len(commits) == len(rows):
        found["commit_to_start"] = quantiles([s - c for (_, s, _, _), c in zip(rows, commits, strict=True)])
    return found


class LockSampler:
    """Looks at ``pg_locks`` every ``every`` seconds: is the store's write lock (an advisory lock,
    the only kind runner takes) held in this database, and how many transactions wait for it.
    The server's view, where the hold times above are the clients'."""

    QUERY = (
        "SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted) FROM pg_locks"
        " WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )

    def __init__(self, conn: Any, every: float = 0.010) -> None:
        self.conn, self.every = conn, every
        self.samples: list[tuple[float, int, int]] = []
        self.stopping = False

    async def run(self) -> None:
        # Stopped by a flag, not cancelled: psycopg closes a connection whose query is cancelled.
        while not self.stopping:
            held, waiting = await (await self.conn.execute(self.QUERY)).fetchone()
            self.samples.append((time.time(), held, waiting))
            await anyio.sleep(self.every)

    def summary(self, start: float, end: float) -> dict[str, Any]:
        inside = [(held, waiting) for at, held, waiting in self.samples if start <= at <= end]
        if not inside:
            return {"samples": 0}
        return {
            "samples": len(inside), "held": sum(1 for h, _ in inside if h) / len(inside),
            "waiting_mean": statistics.mean(w for _, w in inside), "waiting_max": max(w for _, w in inside),
        }


async def throughput(
    sender: Sender, conn: Any, server: Server, database: str, workers: Workers, names: list[str], batch: int,
    attempt: int,
) -> dict[str, Any]:
    trigger = f"bench-batch{attempt}"
    if server.statements:
        await reset_statements(conn)
    sampler = LockSampler(await connect(server, database))
    cpu_before = (workers.cpu(), server.cpu(), self_cpu(), machine_busy())
    backends_before = await server.backends(conn)
    async with anyio.create_task_group() as group:
        group.start_soon(sampler.run)
        started = time.time()
        await sender.batch(names, trigger, batch)
        enqueued = time.time()
        most = await wait_all_final(conn)
        sampler.stopping = True
    await sampler.conn.close()
    cpu_after = (workers.cpu(), server.cpu(), self_cpu(), machine_busy())
    backends_after = await server.backends(conn)
    # The backends of this database (those that ended meanwhile are missed: pool overflow).
    database_cpu = sum(cpu - backends_before.get(pid, 0.0) for pid, cpu in backends_after.items())
    wall = time.time() - started
    rows = await runs_of(conn, trigger)
    last = max(f for _, _, f, _ in rows)
    n = len(rows)
    found: dict[str, Any] = {
        "runs": n, "seconds": last - started, "rate": n / (last - started),
        "enqueue_s": enqueued - started, "window": (started, last),
        "queue_wait": quantiles([s - q for q, s, _, _ in rows]),
        "cpu_ms_per_run": {
            "workers": (cpu_after[0] - cpu_before[0]) / n * 1e3,
            "postgres": database_cpu / n * 1e3,
            "postgres, whole server": None if cpu_before[1] is None else (cpu_after[1] - cpu_before[1]) / n * 1e3,  # type: ignore[operator]
            "this process": (cpu_after[2] - cpu_before[2]) / n * 1e3,
        },
        # Cores busy with anything else on the machine meanwhile (other databases on the
        # server included): the interference this measurement had.
        "other_cores": ((cpu_after[3] - cpu_before[3]) - (cpu_after[0] - cpu_before[0]) - database_cpu
                        - (cpu_after[2] - cpu_before[2])) / wall,
        "connections_max": most,
        "lock_sampled": sampler.summary(started, last),
    }
    if server.statements:
        found["statements"] = await read_statements(conn)
    return found


async def under_load(sender: Sender, conn: Any, names: list[str], rate: float, seconds: float) -> dict[str, Any]:
    trigger = "bench-load"
    count = max(1, int(rate * seconds))
    begin = anyio.current_time()
    async with anyio.create_task_group() as group:
        for i in range(count):
            await anyio.sleep_until(begin + i / rate)
            group.start_soon(sender.send, names[i % len(names)], trigger)
    await wait_all_final(conn)
    rows = await runs_of(conn, trigger)
    queued = [q for q, _, _, _ in rows]
    return {
        "offered_rate": rate, "runs": len(rows),
        "achieved_rate": (len(rows) - 1) / (max(queued) - min(queued)) if len(rows) > 1 else None,
        "start": quantiles([s - q for q, s, _, _ in rows]),
        "final": quantiles([f - q for q, _, f, _ in rows]),
    }


async def store_floor(server: Server, root: Path, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The runner side of a worker without the queue, one job at a time in this process, nothing
    else running: ``Worker.execute`` (claim, then the engine: start and finish recorded) on each
    job's arguments as the queue holds them. How long a run holds the store's write lock when
    its holder is never kept waiting for a CPU."""
    from runner.records import JobArgs
    from runner.remote import Worker

    database = server.create("floor")
    url = await prepare(server, root, database, args)
    conn = await connect(server, database)
    try:
        async with Sender(root, url) as sender:
            await sender.batch(names, "bench-floor", args.enqueue_batch)
            jobs = [JobArgs.from_json(row[0]) for row in await (await conn.execute(
                "SELECT args FROM procrastinate_jobs ORDER BY id")).fetchall()]
            worker = Worker(root, sender.store, concurrency=1)
            worker._engine = sender.engine
            await worker.execute(jobs.pop())  # warm-up
            LOCK_RECORDS.clear()
            cpu, backends, busy, began = self_cpu(), await server.backends(conn), machine_busy(), time.time()
            for job in jobs:
                await worker.execute(job)
            ended = time.time()
            cpu, busy = self_cpu() - cpu, machine_busy() - busy
            pg_cpu = sum(c - backends.get(pid, 0.0) for pid, c in (await server.backends(conn)).items())
            found: dict[str, Any] = {
                "runs": len(jobs), "rate": len(jobs) / (ended - began), "cpu_ms_per_run": cpu / len(jobs) * 1e3,
                "postgres_cpu_ms_per_run": pg_cpu / len(jobs) * 1e3,
                "other_cores": (busy - cpu - pg_cpu) / (ended - began),
            }
            if args.lock_timing:
                found["lock"] = lock_summary(LOCK_RECORDS, began, ended, len(jobs))
    finally:
        await conn.close()
    if not args.keep:
        server.drop(database)
    return found


async def idle_background(conn: Any, server: Server, workers: Workers, seconds: float) -> dict[str, Any]:
    """What idle workers do to the database: statements by kind, and CPU, per worker per second."""
    await reset_statements(conn)
    cpu_before, backends = workers.cpu(), await server.backends(conn)
    await anyio.sleep(seconds)
    kinds = await read_statements(conn)
    cpu_after = workers.cpu()
    pg_cpu = sum(c - backends.get(pid, 0.0) for pid, c in (await server.backends(conn)).items())
    per = len(workers.procs) * seconds
    return {
        "statements_per_worker_s": {k: v["calls"] / per for k, v in kinds.items()},
        "worker_cpu_pct": (cpu_after - cpu_before) / per * 100,
        "postgres_cpu_pct": pg_cpu / per * 100,
    }


async def worker_round(
    server: Server, root: Path, scratch: Path, names: list[str], count: int, args: argparse.Namespace,
    index: int = 0,
) -> dict[str, Any]:
    part = f"r{index}w{count}"
    database = server.create(part)
    url = await prepare(server, root, database, args)
    conn = await connect(server, database)
    if server.statements:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    profile = args.profile / f"worker-of-{part}.prof" if args.profile else None
    (scratch / part).mkdir()
    workers = Workers(count, root, url, args.concurrency, scratch / part, args.lock_timing, profile)
    result: dict[str, Any] = {
        "workers": count, "concurrency": args.concurrency, "load_before": load(),
    }
    LOCK_RECORDS.clear()
    try:
        await workers.wait_ready(conn)
        async with Sender(root, url) as sender:
            await sender.send(names[0], "bench-warm-up")  # first statements prepared, pools filled
            await wait_all_final(conn)
            if server.statements and args.idle_seconds:
                result["idle"] = await idle_background(conn, server, workers, args.idle_seconds)
            result["idle_latency"] = await idle_latency(sender, conn, names, args.latency_runs)
            result["batches"] = [
                await throughput(sender, conn, server, database, workers, names, args.enqueue_batch, attempt)
                for attempt in range(args.repeat)
            ]
            rate = statistics.median(b["rate"] for b in result["batches"])
            if args.load_seconds:
                result["load"] = await under_load(sender, conn, names, rate * args.load_fraction, args.load_seconds)
            result["connections_idle"] = (await (await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")).fetchone())[0]
    finally:
        workers.stop()
        await conn.close()
    result["load_after"] = load()
    if args.lock_timing:
        records, connects = workers.lock_records()
        records += LOCK_RECORDS
        for batch in result["batches"]:
            batch["lock"] = lock_summary(records, *batch["window"], batch["runs"])
            start, end = batch["window"]
            batch["worker_pool_connects"] = sum(start <= at <= end for at in connects)
    if not args.keep:
        server.drop(database)
    return result


async def references(server: Server, root: Path, scratch: Path, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from bench_runs import engine_rate

    found: dict[str, Any] = {"load_before": load()}
    sqlite, local = [], []
    for attempt in range(args.repeat):
        sqlite.append(await engine_rate(root, scratch / f"sqlite{attempt}.db", names))
        database = server.create(f"local{attempt}")
        LOCK_RECORDS.clear()
        began = time.time()
        rate, cpu = await engine_rate(root, server.store_url(database), names)  # type: ignore[arg-type]
        ended = time.time()
        entry: dict[str, Any] = {"rate": rate, "cpu_ms_per_run": cpu * 1e3}
        if args.lock_timing:
            entry["lock"] = lock_summary(LOCK_RECORDS, began, ended, len(names), "write_runs")  # not the sync
        local.append(entry)
        if not args.keep:
            server.drop(database)
    found["sqlite"] = [{"rate": r, "cpu_ms_per_run": c * 1e3} for r, c in sqlite]
    found["postgres_local"] = local

    database = server.create("enqueue")
    url = await prepare(server, root, database, args)
    enqueue = []
    async with Sender(root, url) as sender:
        await sender.send(names[0], "bench-warm-up")
        for attempt in range(args.repeat):
            LOCK_RECORDS.clear()
            began, cpu = time.time(), self_cpu()
            await sender.batch(names, f"bench-enqueue{attempt}", args.enqueue_batch)
            ended = time.time()
            entry = {"rate": len(names) / (ended - began), "cpu_ms_per_run": (self_cpu() - cpu) / len(names) * 1e3}
            if args.lock_timing:
                entry["lock"] = lock_summary(LOCK_RECORDS, began, ended, len(names))
            enqueue.append(entry)
    found["enqueue"] = enqueue
    found["floor"] = await store_floor(server, root, names, args)
    if args.cli_triggers:
        cmd = [PYTHON, "-m", "runner", "--project", str(root), "--db", url, "trigger", "--remote", names[0]]
        walls = []
        for _ in range(args.cli_triggers + 1):
            began = time.perf_counter()
            await anyio.run_process(cmd, cwd=scratch)
            walls.append(time.perf_counter() - began)
        found["cli_trigger_s"] = quantiles(walls[1:])
    if not args.keep:
        server.drop(database)
    found["load_after"] = load()
    return found


# -- output -----------------------------------------------------------------------------------------


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def name_of(rnd: dict[str, Any]) -> str:
    return f"{rnd['workers']} worker{'s' if rnd['workers'] > 1 else ''} x concurrency {rnd['concurrency']}"


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    server = results["server"]
    print(f"\n{results['machine']}; runner: {results['runner']}")
    print(f"PostgreSQL {server['server_version']}: fsync={server['fsync']}, synchronous_commit="
          f"{server['synchronous_commit']}, max_connections={server['max_connections']}, shared_buffers="
          f"{server['shared_buffers']}; {args.runs} no-op python runs per batch, batches of {args.enqueue_batch} "
          f"sent together; medians of {args.repeat} (min-max)\n")
    print("| configuration | load before | runs/s end to end | enqueue done after | CPU ms per run: workers / postgres / enqueuer "
          "| write lock held (pg_locks sampled) | waiting for it, mean | connections (max; opened by the workers per batch) "
          "| other work on the machine (cores) |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    ref = results.get("references")
    if ref:
        print(f"| single process, SQLite (bench_runs.py's engine, 16 at a time) | {ref['load_before']} | "
              f"{spread([r['rate'] for r in ref['sqlite']])} | | {spread([r['cpu_ms_per_run'] for r in ref['sqlite']], '{:.2f}')} (one process) | | | | |")
        local = ref["postgres_local"]
        print(f"| single process, PostgreSQL store, no workers | | {spread([r['rate'] for r in local])} | | "
              f"{spread([r['cpu_ms_per_run'] for r in local], '{:.2f}')} (one process) | | | | |")
        enqueue = ref["enqueue"]
        print(f"| enqueue alone (`Workflow.send`, no workers) | | {spread([r['rate'] for r in enqueue])} sent/s | | "
              f"- / - / {spread([r['cpu_ms_per_run'] for r in enqueue], '{:.2f}')} | | | | |")
        floor = ref["floor"]
        print(f"| one run at a time in one process: a worker's runner side (claim, start, finish), no queue "
              f"| | {floor['rate']:,.0f} | | {floor['cpu_ms_per_run']:.2f} (one process) / "
              f"{floor['postgres_cpu_ms_per_run']:.2f} | | | | {floor['other_cores']:.2f} |")
        if "cli_trigger_s" in ref:
            q = ref["cli_trigger_s"]
            print(f"| one `runner trigger --remote` process per run | | {1 / q['median']:.1f} sent/s per process "
                  f"({ms(q['median'])} each) | | | | | | |")
    for rnd in results["rounds"]:
        batches = rnd["batches"]
        cpu = [b["cpu_ms_per_run"] for b in batches]
        pg = [c["postgres"] for c in cpu if c["postgres"] is not None]
        print(f"| {name_of(rnd)} | "
              f"{rnd['load_before']} | {spread([b['rate'] for b in batches])} | "
              f"{spread([b['enqueue_s'] for b in batches], '{:.2f}')} s of {spread([b['seconds'] for b in batches], '{:.2f}')} s | "
              f"{spread([c['workers'] for c in cpu], '{:.2f}')} / {spread(pg, '{:.2f}')} / "
              f"{spread([c['this process'] for c in cpu], '{:.2f}')} | "
              f"{spread([b['lock_sampled']['held'] * 100 for b in batches], '{:.0f}')}% | "
              f"{spread([b['lock_sampled']['waiting_mean'] for b in batches], '{:.1f}')} | "
              f"{max(b['connections_max'] for b in batches)}"
              f"{'; ' + spread([b['worker_pool_connects'] for b in batches]) if 'worker_pool_connects' in batches[0] else ''} | "
              f"{spread([b['other_cores'] for b in batches], '{:.2f}')} |")

    print("\nLatency, enqueue to start (`started_at - queued_at`):\n")
    print("| workers | idle, one at a time: median / p95 / max | of which after the enqueue's commit: median / p95 "
          "| enqueue to final, idle: median | under load: runs/s sent | under load: median / p95 / max "
          f"| in a batch of {args.runs} (queue wait): median / max |")
    print("|---|---|---|---:|---:|---|---|")
    for rnd in results["rounds"]:
        idle = rnd["idle_latency"]["start"]
        after = rnd["idle_latency"].get("commit_to_start")
        line = f"| {name_of(rnd)} | {ms(idle['median'])} / {ms(idle['p95'])} / {ms(idle['max'])} ({idle['n']} runs) | " \
               f"{ms(after['median']) + ' / ' + ms(after['p95']) if after else '-'} | " \
               f"{ms(rnd['idle_latency']['final']['median'])} | "
        if "load" in rnd:
            ld = rnd["load"]
            line += f"{ld['achieved_rate']:,.0f} ({ld['runs']} runs) | {ms(ld['start']['median'])} / {ms(ld['start']['p95'])} / {ms(ld['start']['max'])} | "
        else:
            line += "- | - | "
        waits = rnd["batches"][0]["queue_wait"]
        print(line + f"{ms(waits['median'])} / {ms(waits['max'])} |")

    if args.lock_timing:
        print("\nStore write transactions (each holds the advisory write lock unless marked 'no lock'), in the throughput batches "
              "(the middle one); hold and wait as the client sees them; lock busy: the holds summed over the "
              "batch's wall time (the clients' view, which can pass 100%: see pg_locks above):\n")
        print("| configuration | transaction | per run | runs in one | hold: median / p95 / max | wait: median / p95 | lock busy |")
        print("|---|---|---:|---:|---|---|---:|")
        rows: list[tuple[str, dict[str, Any]]] = []
        if ref:
            rows += [("local engine, PostgreSQL", ref["postgres_local"][0]["lock"]),
                     ("enqueue alone", ref["enqueue"][0]["lock"]),
                     ("one run at a time, no queue", ref["floor"]["lock"])]
        rows += [(name_of(r), r["batches"][len(r["batches"]) // 2]["lock"])
                 for r in results["rounds"] if "lock" in r["batches"][0]]
        for name, lock in rows:
            for label, s in lock["by_label"].items():
                print(f"| {name} | {label} | {s['per_run']:.3f} | {s['runs_per_transaction']:.1f} | "
                      f"{ms(s['hold']['median'])} / {ms(s['hold']['p95'])} / {ms(s['hold']['max'])} | "
                      f"{ms(s['wait']['median'])} / {ms(s['wait']['p95'])} | |")
            print(f"| {name} | all: {lock['held_per_run_ms']:.3f} ms per run | | | | | {lock['busy']:.0%} |")

    stated = [r for r in results["rounds"] if "statements" in r["batches"][0]]
    if stated:
        print("\nStatements per run (pg_stat_statements, top level; an executemany counts each row), "
              "throughput batches; server time per call:\n")
        kinds = sorted({k for r in stated for k in r["batches"][0]["statements"]})
        print("| kind | " + " | ".join(f"{name_of(r)}: per run, ms per call" for r in stated) + " |")
        print("|---|" + "---:|" * len(stated))
        for kind in kinds:
            cells = []
            for r in stated:
                s = r["batches"][len(r["batches"]) // 2]["statements"].get(kind)
                n = r["batches"][len(r["batches"]) // 2]["runs"]
                cells.append(f"{s['calls'] / n:.2f}, {s['ms'] / s['calls']:.3f}" if s and s["calls"] else "-")
            print(f"| {kind} | " + " | ".join(cells) + " |")
        idle = [r for r in stated if "idle" in r]
        if idle:
            print("\nIdle workers, per worker per second: " + "; ".join(
                f"{name_of(r)}: {sum(r['idle']['statements_per_worker_s'].values()):.1f} statements, "
                f"worker CPU {r['idle']['worker_cpu_pct']:.1f}%, postgres CPU "
                f"{r['idle']['postgres_cpu_pct']:.1f}%" for r in idle))
    print(f"\n(load average at the end: {load()})")


# -- a workflow spread over workers (--fan) ---------------------------------------------------------


def write_fan(root: Path, count: int, sleep: float) -> None:
    (root / "tasks.d").mkdir(parents=True)
    naps = "".join(f"  f{i}:\n    command: sleep {sleep:g}\n" for i in range(count))
    needs = ", ".join(f"f{i}" for i in range(count))
    (root / "tasks.d" / "fan.yaml").write_text(f"version: 1\ntasks:\n{naps}  fan:\n    command: echo fanned\n    needs: [{needs}]\n")


async def fan_round(server: Server, root: Path, scratch: Path, count: int, args: argparse.Namespace) -> dict[str, Any]:
    part = f"fan{count}"
    database = server.create(part)
    url = await prepare(server, root, database, args)
    conn = await connect(server, database)
    (scratch / part).mkdir()
    workers = Workers(count, root, url, args.concurrency, scratch / part, False, None)
    slots = count * args.concurrency
    result: dict[str, Any] = {
        "workers": count, "concurrency": args.concurrency, "slots": slots,
        "ideal_s": args.fan * args.sleep / slots, "load_before": load(), "runs": [],
    }

    async def timed(task: str) -> float:
        argv = [PYTHON, "-m", "runner", "--project", str(root), "--db", url, "run", "--remote", task]
        began = time.perf_counter()
        done = await anyio.run_process(argv, check=False)
        wall = time.perf_counter() - began
        if done.returncode != 0:
            raise SystemExit(f"runner run --remote {task} exited {done.returncode}:\n{done.stderr.decode()[-2000:]}")
        return wall

    try:
        await workers.wait_ready(conn)
        # One task alone: what the CLI costs around its runs (start, sync, send, wait, print).
        result["one_s"] = await timed("f0")
        for _ in range(args.repeat):
            wall = await timed("fan")
            row = await (await conn.execute(
                "SELECT min(started_at) FILTER (WHERE task <> 'fan'), max(finished_at) FILTER (WHERE task = 'fan'),"
                " count(DISTINCT pid) FILTER (WHERE task <> 'fan'), count(*) FILTER (WHERE status = 'succeeded')"
                " FROM runs WHERE invocation = (SELECT invocation FROM runs WHERE task = 'fan'"
                " ORDER BY queued_at DESC LIMIT 1)")).fetchone()
            first, last, pids, succeeded = row
            result["runs"].append({
                "wall_s": wall, "span_s": last - first, "workers_used": pids, "succeeded": succeeded,
            })
    finally:
        workers.stop()
        await conn.close()
    result["load_after"] = load()
    if not args.keep:
        server.drop(database)
    return result


def fan_report(rounds: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"### A fan of {args.fan} tasks that sleep {args.sleep:g} s, `runner run --remote fan`\n")
    print("| workers x concurrency | ideal N x sleep / slots | wall time of the CLI | first start to fan's end | one task alone | workers used | load before / after |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for rnd in rounds:
        walls = spread([r["wall_s"] for r in rnd["runs"]], "{:.2f} s")
        spans = spread([r["span_s"] for r in rnd["runs"]], "{:.2f} s")
        used = ", ".join(str(r["workers_used"]) for r in rnd["runs"])
        print(f"| {rnd['workers']} x {rnd['concurrency']} | {rnd['ideal_s']:.2f} s | {walls} | {spans} | {rnd['one_s']:.2f} s | {used} | "
              f"{rnd['load_before']} / {rnd['load_after']} |")


def fan_main(args: argparse.Namespace, server: Server, counts: list[int]) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="runner-bench-fan-"))
    rounds: list[dict[str, Any]] = []
    try:
        root = scratch / "project"
        write_fan(root, args.fan, args.sleep)
        for count in counts:
            print(f"fan on {count} worker(s) (load {load()}) ...", file=sys.stderr)
            rounds.append(anyio.run(fan_round, server, root, scratch, count, args))
    finally:
        server.close(args.keep)
        if not args.keep:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    fan_report(rounds, args)
    return {"fan": rounds}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_timed":
        shim(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-admin", required=True, metavar="URL",
                        help="a PostgreSQL URL of a role that may create databases")
    parser.add_argument("--runs", type=int, default=2000, help="runs per throughput batch (and tasks in the project)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure, comma-separated")
    parser.add_argument("--concurrency", type=int, default=8, help="runner worker --concurrency")
    parser.add_argument("--repeat", type=int, default=3, help="throughput batches per configuration")
    parser.add_argument("--enqueue-batch", type=int, default=100, help="runs sent together")
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--load-seconds", type=float, default=10.0, help="0: no latency under load")
    parser.add_argument("--load-fraction", type=float, default=0.5, help="of the measured throughput")
    parser.add_argument("--idle-seconds", type=float, default=6.0, help="idle workers watched (pg_stat_statements)")
    parser.add_argument("--cli-triggers", type=int, default=5, help="runner trigger --remote processes timed")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="measure SQLite, a local engine on PostgreSQL, the enqueue alone")
    parser.add_argument("--lock-timing", action=argparse.BooleanOptionalAction, default=True,
                        help="time the store's write transactions (workers run through this script)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run the first worker of each round under cProfile: DIR/worker-of-r0w1.prof, ...")
    parser.add_argument("--db-set", action="append", default=[], metavar="NAME=VALUE",
                        help="ALTER DATABASE ... SET for each database made (e.g. jit=off); repeatable")
    parser.add_argument("--fan", type=int, default=0, metavar="N",
                        help="measure only a workflow spread over workers: N tasks that sleep, and one that needs them")
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each task of --fan sleeps")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the temporary directory")
    args = parser.parse_args()

    from bench_definitions import compile_runner, machine, runner_source
    from bench_runs import write_project

    compile_runner()
    import runner.engine  # noqa: F401  (imported before anything is timed)

    if args.lock_timing and not args.fan:
        install_lock_timing()
    server = Server(args.db_admin, args.db_set)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.workers.split(",") if c]
    if args.fan:
        fanned = fan_main(args, server, counts)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "args": vars(args) | {"json": str(args.json)}, **fanned}, indent=2, default=str))
        return
    results: dict[str, Any] = {
        "machine": machine(), "runner": runner_source(), "server": server.settings, "args": vars(args) | {"json": str(args.json)},
        "rounds": [],
    }
    scratch = Path(tempfile.mkdtemp(prefix="runner-bench-workers-"))
    try:
        root = scratch / "project"
        write_project(root, args.runs, 0)
        names = [f"py{i}" for i in range(args.runs)]
        if args.reference:
            print(f"references (load {load()}) ...", file=sys.stderr)
            results["references"] = anyio.run(references, server, root, scratch, names, args)
        for index, count in enumerate(counts):
            print(f"{count} worker(s) (load {load()}) ...", file=sys.stderr)
            results["rounds"].append(anyio.run(worker_round, server, root, scratch, names, count, args, index))
    finally:
        server.close(args.keep)
        if args.keep:
            print(f"kept {scratch} and databases bench_workers_{os.getpid()}_*", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    report(results, args)
    if args.json:
        for rnd in results["rounds"]:
            for batch in rnd["batches"]:
                batch["window"] = list(batch["window"])
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
