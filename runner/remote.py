"""Runs on workers: ``runner worker`` takes runs off a queue kept in the PostgreSQL store; the
daemon (``--remote``), ``runner run --remote`` and ``runner trigger --remote`` put workflows
there, spread over the workers.

The queue is procrastinate's tables (docs/distributed.md says why), taken from by a loop of
runner's own (``_Queue``): a worker takes as many jobs as it has free slots in one statement
(``SELECT ... FOR UPDATE SKIP LOCKED``), woken by LISTEN/NOTIFY. A job carries one run of a
workflow (a task, or one of the needs it runs after), so the runs of one workflow go to
whichever workers are free. The runs are written ``queued`` in the transaction that defers the
jobs of those without needs, so neither exists without the other; the job of a run with needs
is held by the store, and put on the queue (or its run skipped, as the engine skips one) in
the transaction that writes the final end of the last of its needs' runs (``store/jobs.py``).
A worker takes a job's run up with a compare-and-set before it runs anything, most often in
the statement that fetched the job (a job delivered twice runs once), then runs it with the
same engine as ``runner run``: timeouts, retries, output, cancellation, and the results of its
needs read from the store.

A worker that dies is noticed by whoever runs beside it: on its host at once (its pid is
gone), from anywhere when its heartbeat is older than ``stale_after()``. Its job is then taken
off the queue, its unfinished runs are marked interrupted, and each that had started is
retried if its task has retries left, all in one transaction (``Store.recover_job``).
"""

from __future__ import annotations

import json
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from runner import log, registry
from runner.engine import Engine
from runner.errors import ParameterError, RunnerError, StoreError, TaskNotRunnable
from runner.follow import wait_for
from runner.inputs import check_parameters
from runner.models import RunStatus
from runner.processes import HOST, kill_orphaned_groups, process_is_alive, this_process
from runner.records import Claim, JobArgs, LogChunk, RunError
from runner.revision import Revision, project_revision
from runner.shutdown import on_stop_signals, signal_name
from runner.store import JOB_TASK, Store
from runner.workflow import Workflow, WorkflowOptions

HEARTBEAT = 2.0
"""Seconds between a worker's heartbeats (procrastinate's worker table)."""

def stale_after() -> float:
    """A worker whose heartbeat is older than this (seconds) is taken for dead, and its runs
    recovered: ``RUNNER_WORKER_STALE_AFTER``, 15 by default."""
    return float(os.environ.get("RUNNER_WORKER_STALE_AFTER", "15"))

RECOVER_EVERY = 2.0
"""Seconds between looks for the jobs of dead workers."""

FETCH_POLL = 1.0
"""Seconds an idle worker waits, at most, before it looks for jobs again without a wake-up
(a notification can be lost while the listening connection is replaced)."""

RETRY_AFTER = 1.0
"""Seconds before a fetch or heartbeat that failed (the database unreachable) is tried again."""

LISTEN_CHECK = 30.0
"""Seconds without a notification after which the listening connection is checked alive."""

CHECK_IDLE = 1.0
"""Seconds a queue connection may have been idle before the pool checks it is still alive."""


def store_connections(concurrency: int) -> int:
    """The store connections a worker keeps open: one for each run it may be running, one each
    for its recorder's writer, its recovery loop and its cancel watcher. (With the advisory
    lock contended, SQLAlchemy's default pool of 5 opened and closed 140-250 connections per
    2,000 runs on 4 workers.)"""
    return concurrency + 3


_FETCH = """
WITH picked AS (
    SELECT id FROM procrastinate_jobs
    WHERE status = 'todo' AND task_name = %(task)s AND (%(queues)s::varchar[] IS NULL OR queue_name = ANY(%(queues)s::varchar[]))
        AND (scheduled_at IS NULL OR scheduled_at <= now())
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE procrastinate_jobs AS j SET status = 'doing', worker_id = %(worker)s
    FROM picked WHERE j.id = picked.id
    RETURNING j.id, j.queue_name, j.args,
        (j.args->'runs') - (j.args->>'task') = '{}'::jsonb
        AND coalesce(j.args->>'revision', %(revision)s) = %(revision)s AS claimable
), claimed AS (
    UPDATE runs SET host = %(host)s, pid = %(pid)s, pid_started = %(pid_started)s, revision = %(revision)s,
        git_commit = %(commit)s
    FROM taken
    WHERE taken.claimable AND runs.id = taken.args->'runs'->>(taken.args->>'task')
        AND runs.status || '' = 'queued' AND runs.host = ''  -- no index on status: see claim()
    RETURNING taken.id
)
SELECT taken.id, taken.queue_name, taken.args, taken.claimable, claimed.id IS NOT NULL AS claimed
FROM taken LEFT JOIN claimed ON claimed.id = taken.id
"""
"""Take up to ``limit`` jobs in one statement, in the order procrastinate's own fetch takes
them (``procrastinate_fetch_job_v2`` takes one a call; its check of job locks is left out:
runner defers no job with a ``lock``), and claim the run of each that carries one run queued
at this worker's revision (or none), as ``store.queue.claim`` would: the one round trip
replaces a transaction of four (BEGIN, two statements, COMMIT). The others (a whole workflow
queued before the upgrade, another revision: its notes go with the claim) are claimed
through the recorder."""

_BEAT = "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = %(worker)s RETURNING id"


class _Trouble:
    """Says when calls of one kind to the queue start failing (the database unreachable), and
    when they work again, once each however often they are tried meanwhile."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failing = False

    def failed(self, exc: Exception) -> None:
        if not self.failing:
            self.failing = True
            # procrastinate wraps the driver's error in one that says only "Database error".
            why = str(exc.__cause__ or exc).strip()
            log.logger.error(f"cannot {self.what}: {why}; trying again every {RETRY_AFTER:g}s", extra={"event": "store_error"})

    def worked(self) -> None:
        if self.failing:
            self.failing = False
            log.logger.info(f"can {self.what} again", extra={"event": "store_back"})


@dataclass(frozen=True, slots=True)
class _Job:
    id: int
    queue: str
    args: dict[str, Any]
    claimed: bool | None  # whether the fetch took its runs up; None: it did not try


class _Queue:
    """A worker's side of procrastinate's tables: its row in the workers' table (registered,
    beating, removed), the jobs it takes, and the wake-ups of new jobs, on a pool of two
    connections in autocommit (each call is one statement) plus one that listens."""

    def __init__(self, store: Store, queues: list[str] | None) -> None:
        import procrastinate  # the postgres extra, imported only by the processes that use the queue
        import psycopg_pool

        returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

        async def note_return(conn: Any) -> None:
            returned[conn] = time.monotonic()

        async def check_if_idle(conn: Any) -> None:
            # The pool would check every connection it hands out (an empty query: a round trip
            # per fetch); one used within the last second is as good as checked. A connection
            # that broke meanwhile fails that one call, as one that breaks during it does.
            if time.monotonic() - returned.get(conn, 0.0) > CHECK_IDLE:
                await psycopg_pool.AsyncConnectionPool.check_connection(conn)

        async def configure(conn: Any) -> None:
            await conn.set_autocommit(True)
            # The fetch's plan must not depend on statistics taken while the queue was near
            # empty: one cached then read the whole table for each job once a burst came
            # (19-34 runs/s for a minute, measured); one made with them walked every queued
            # job to sort them (0.6 ms at 2,000) and every queued run to claim a few. Planned
            # afresh, with sorts and sequential scans ruled out, it walks the queue's index in
            # order and finds runs by primary key, however stale the statistics. These
            # connections run nothing else but the worker's row in the workers' table.
            await conn.execute(
                "SET plan_cache_mode = force_custom_plan; SET enable_sort = off; SET enable_seqscan = off"
            )

        def pool(**options: Any) -> Any:
            return psycopg_pool.AsyncConnectionPool(**{**options, "check": check_if_idle})

        self.conninfo = store.conninfo()
        connector = procrastinate.PsycopgConnector(
            conninfo=self.conninfo, min_size=1, max_size=2, pool_factory=pool, configure=configure, reset=note_return
        )
        self.app = procrastinate.App(connector=connector)
        self.queues = queues
        self.worker_id = 0
        self.on_job: Callable[[], None] = lambda: None
        self.on_abort: Callable[[int], None] = lambda job_id: None

    async def register(self) -> None:
        await self.app.job_manager.prune_stalled_workers(stale_after())
        self.worker_id = await self.app.job_manager.register_worker()

    async def unregister(self) -> None:
        await self.app.job_manager.unregister_worker(self.worker_id)

    async def fetch(self, limit: int, revision: Revision) -> list[_Job]:
        me = this_process()
        rows = await self.app.connector.execute_query_all_async(
            _FETCH, task=JOB_TASK, queues=self.queues, limit=limit, worker=self.worker_id, host=me.host, pid=me.pid,
            pid_started=me.pid_started, revision=revision.digest, commit=revision.commit,
        )
        jobs = (
            _Job(row["id"], row["queue_name"], row["args"], row["claimed"] if row["claimable"] else None) for row in rows
        )
        return sorted(jobs, key=lambda job: job.id)

    async def beat(self) -> None:
        """Keep this worker's heartbeat fresh. A worker taken for dead meanwhile (paused for
        longer than ``stale_after()``: its row was pruned, its runs recovered) registers again."""
        trouble = _Trouble("update the worker's heartbeat")
        while True:
            await anyio.sleep(HEARTBEAT)
            try:
                if not await self.app.connector.execute_query_all_async(_BEAT, worker=self.worker_id):
                    gone = self.worker_id
                    self.worker_id = await self.app.job_manager.register_worker()
                    log.logger.warning(
                        f"this worker (id {gone}) was taken for dead; registered again as worker {self.worker_id}",
                        extra={"event": "worker_registered_again", "worker_id": self.worker_id},
                    )
            except Exception as exc:  # the database unreachable: beat again later
                trouble.failed(exc)
            else:
                trouble.worked()

    async def listen(self) -> None:
        """Call ``on_job`` when jobs are queued, and ``on_abort`` when one is asked to stop
        (the NOTIFY of procrastinate's triggers; ``runner cancel`` asks), for as long as it
        runs; and once each time it starts listening, for the jobs queued before.

        Every worker is told of every job queued, its own or not, one notification each, so
        their cost is per job times the workers: procrastinate's listener spent a task
        (``asyncio.wait_for``), a JSON parse and a log call on each, 7% of each worker's CPU
        with 4 workers. Here the notifications that came together are read off the
        connection in one go, each looked at as bytes, and ``on_job`` is called once for
        them."""
        import psycopg

        trouble = _Trouble("listen for new jobs")
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                try:
                    await self._listen_on(conn, trouble)
                finally:
                    # Not ``async with``: its exit awaits a rollback first, which a cancel
                    # (the worker stopping) could interrupt, leaving the connection open.
                    with anyio.CancelScope(shield=True):
                        await conn.close()
            except Exception as exc:  # cannot connect, or the connection broke: the fetches poll meanwhile
                trouble.failed(exc)
            await anyio.sleep(RETRY_AFTER)

    async def _listen_on(self, conn: Any, trouble: _Trouble) -> None:
        """``listen`` on one connection, until it breaks."""
        from procrastinate.manager import get_channel_for_queues
        from psycopg import sql

        for channel in get_channel_for_queues(self.queues):
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        trouble.worked()
        self.on_job()
        pgconn = conn.pgconn
        while True:
            with anyio.move_on_after(LISTEN_CHECK) as quiet:
                await anyio.wait_readable(pgconn.socket)
            if quiet.cancelled_caught:
                await conn.execute("SELECT 1")  # a connection dropped without a word
                continue
            pgconn.consume_input()
            queued = False
            while (notify := pgconn.notifies()) is not None:
                if b"abort_job_requested" in notify.extra:
                    self.on_abort(int(json.loads(notify.extra)["job_id"]))
                else:
                    queued = True
            if queued:
                self.on_job()


class Worker:
    """``runner worker``: ``await Worker(root, store, queues=..., concurrency=...).run()``.

    It takes as many jobs as it has free slots, in one statement, and each job's runs are
    claimed, run and recorded by its engine; a job is taken off the queue in the recorder's
    next batch once its runs' ends are committed."""

    def __init__(
        self, root: Path, store: Store, *, queues: list[str] | None = None, concurrency: int = 4,
        grace: float = 30.0,
    ) -> None:
        self.root = root.resolve()
        self.store = store
        self.queues = queues
        self.concurrency = concurrency
        self.grace = grace
        self.revision = project_revision(self.root)
        self._seen_revision = self.revision.digest  # the last revision a job came with
        self._warned: set[tuple[str, str]] = set()
        self._engine: Engine | None = None
        self._scopes: dict[int, anyio.CancelScope] = {}  # by job id
        self._stopping = False
        self._running = 0
        self._drained = False  # the last fetch found fewer jobs than it asked for
        self._notified = 0  # wake-ups of new jobs so far
        self._nudge = anyio.Event()
        self._idle = anyio.Event()  # set when no job is running

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    async def run(self, *, handle_signals: bool = True) -> None:
        """Take jobs until SIGTERM/SIGINT; then running workflows get the grace period, and are
        cancelled after it (or at a second signal)."""
        await self.store.ensure_queue()
        registry.import_plugins(self.root)
        await recover_stalled(self.store, sweep=True)  # as every runner process does at start
        queue = _Queue(self.store, self.queues)
        queue.on_job = self._job_queued
        queue.on_abort = self._abort
        async with Engine(self.store, self.root, max_concurrency=self.concurrency, revision=self.revision) as engine:
            self._engine = engine
            async with queue.app.open_async():
                await queue.register()
                try:
                    async with anyio.create_task_group() as group:
                        if handle_signals:
                            await group.start(on_stop_signals, self._on_signal)
                        group.start_soon(self._recover)
                        group.start_soon(queue.beat)
                        group.start_soon(queue.listen)
                        log.logger.info(
                            f"worker started: pid {this_process().pid}, queues {', '.join(self.queues or ['(all)'])}, "
                            f"concurrency {self.concurrency}, revision {self.revision}",
                            extra={"event": "worker_started", "pid": this_process().pid, "revision": self.revision.digest},
                        )
                        await self._take_jobs(queue)
                        group.cancel_scope.cancel()
                finally:
                    with anyio.CancelScope(shield=True):
                        try:
                            await queue.unregister()
                        except Exception as exc:  # left for the others to prune
                            log.logger.error(
                                f"cannot remove this worker from the workers' table: {exc.__cause__ or exc}",
                                extra={"event": "store_error"},
                            )

    async def _take_jobs(self, queue: _Queue) -> None:
        """Fetch jobs into free slots until stopped; then wait for the running ones (the grace
        period, then cancelled)."""
        trouble = _Trouble("take jobs off the queue")
        async with anyio.create_task_group() as jobs:
            while not self._stopping:
                free = self.concurrency - self._running
                if free and not self._drained:
                    notified = self._notified
                    try:
                        found = await queue.fetch(free, self.revision)
                    except Exception as exc:  # the database unreachable: look again later
                        trouble.failed(exc)
                        await anyio.sleep(RETRY_AFTER)
                        continue
                    trouble.worked()
                    for job in found:
                        self._running += 1
                        jobs.start_soon(self._job, job)
                    self._drained = len(found) < free and self._notified == notified
                    continue
                self._nudge = anyio.Event()
                with anyio.move_on_after(FETCH_POLL) as waited:
                    await self._nudge.wait()
                if waited.cancelled_caught:
                    self._drained = False
            if self._running:
                self._idle = anyio.Event()
                with anyio.move_on_after(self.grace):
                    await self._idle.wait()
                for scope in list(self._scopes.values()):
                    scope.cancel()

    def _abort(self, job_id: int) -> None:
        """Stop a job's runs now: they are recorded cancelled, as the cancel watcher would
        within ``cancels.CANCEL_POLL``."""
        scope = self._scopes.get(job_id)
        if scope is not None:
            scope.cancel()

    def _job_queued(self) -> None:
        self._notified += 1
        self._drained = False
        self._nudge.set()

    def _on_signal(self, signum: int) -> None:
        """The first SIGTERM/SIGINT stops taking jobs; a second one cancels the running ones."""
        if self._stopping:
            for scope in list(self._scopes.values()):
                scope.cancel()
            return
        self._stopping = True
        self._nudge.set()
        log.logger.info(
            f"stopping on {signal_name(signum)}: no new jobs; running ones get "
            f"{self.grace:g}s to finish (a second signal cancels them now)",
            extra={"event": "worker_stopping", "signal": signum},
        )

    async def _job(self, job: _Job) -> None:
        try:
            args = JobArgs.from_json(job.args, queue=job.queue)
        except (KeyError, TypeError, ValueError) as exc:  # written by something else than runner
            log.logger.error(
                f"job {job.id}: its arguments are not a run's ({type(exc).__name__}: {exc}); taken off the queue",
                extra={"event": "job_error", "job_id": job.id},
            )
            self._done(job)
            return
        try:
            with anyio.CancelScope() as self._scopes[job.id]:
                await self.execute(args, claimed=job.claimed)
        except Exception as exc:  # one job's failure stays in it
            log.logger.exception(f"job {job.id}: {exc}", extra={"event": "job_error", "job_id": job.id})
        finally:
            del self._scopes[job.id]
            self._done(job)

    def _done(self, job: _Job) -> None:
        self.engine.recorder.job_done(job.id)
        self._running -= 1
        if not self._running:
            self._idle.set()
        if not self._drained:
            self._nudge.set()

    async def execute(self, args: JobArgs, *, claimed: bool | None = None) -> None:
        """Run the run a job carries (or the whole workflow, a job from before workflows were
        spread), unless it was taken up or ended meanwhile. ``claimed``: whether the fetch took
        its runs up already (None: they are claimed here)."""
        if claimed is False:
            self._skipped(args)
            return
        run_ids = list(args.runs.values())
        notes = await self._check_revision(args)
        try:
            # Checked here too: the job was written by another process, maybe another host.
            check_parameters(args.parameters)
            workflow = await self._workflow(args)
        except (TaskNotRunnable, ParameterError) as exc:
            if await self.store.finish_queued(run_ids, RunStatus.FAILED, RunError.of(exc), release_of=args.invocation):
                log.logger.error(
                    f"{args.task}: run {args.target_run_id} cannot run here: {exc}",
                    extra={"event": "job_refused", "task": args.task, "run_id": args.target_run_id},
                )
            return
        if args.awaited:
            workflow.nodes[args.task].attempt.releases = args.invocation
        if claimed is None:
            now = time.time()
            notes_rows = [LogChunk(workflow.target_run_id, now, "log", "warning", note) for note in notes]
            claim = Claim(tuple(run_ids), self.revision.digest, self.revision.commit)
            if not await self.engine.recorder.claim(claim, notes_rows):
                self._skipped(args)
                return
        workflow.on_run = log.run_finished
        try:
            await workflow.execute(queued=True)
        except RunnerError as exc:
            log.logger.error(f"{workflow.target}: {exc}", extra={"event": "run_error", "task": workflow.target})

    @staticmethod
    def _skipped(args: JobArgs) -> None:
        log.logger.info(
            f"{args.task}: run {args.target_run_id} was taken up or ended elsewhere; skipped",
            extra={"event": "job_skipped", "task": args.task, "run_id": args.target_run_id},
        )

    async def _workflow(self, args: JobArgs) -> Workflow:
        def make() -> Workflow:
            return self.engine.workflow(args.task, WorkflowOptions.of_job(args))

        try:
            return make()
        except TaskNotRunnable:
            await self.engine.reload()  # synced since this worker last read the tasks?
            return make()

    async def _check_revision(self, args: JobArgs) -> list[str]:
        """Notice a job queued at another revision of the files: read the tasks again, and the
        plugins if this worker's files changed too; say so when the revisions still differ."""
        theirs = args.revision
        if theirs is None or theirs == self.revision.digest:
            return []
        if theirs != self._seen_revision:
            self._seen_revision = theirs
            await self.engine.reload()
            mine = await anyio.to_thread.run_sync(project_revision, self.root)
            if mine.digest != self.revision.digest:
                registry.reload_plugins()
                registry.import_plugins(self.root)
                log.logger.info(
                    f"this worker's files changed: revision {self.revision} -> {mine}; plugins reloaded",
                    extra={"event": "worker_reloaded", "revision": mine.digest},
                )
                self.revision = self.engine.revision = mine
        if theirs == self.revision.digest:
            return []
        message = (
            f"this worker runs revision {self.revision} of the task files and plugins, but the run was "
            f"queued at revision {theirs}; deploy the same revision to the workers and the daemon"
        )
        if (theirs, self.revision.digest) not in self._warned:
            self._warned.add((theirs, self.revision.digest))
            log.logger.warning(message, extra={"event": "revision_mismatch", "theirs": theirs, "ours": self.revision.digest})
        return [message]

    async def _recover(self) -> None:
        while True:
            await anyio.sleep(RECOVER_EVERY)
            await recover_stalled(self.store, sweep=True)


async def recover_stalled(store: Store, *, sweep: bool = False) -> None:
    """Settle the jobs of dead workers (see the module's doc); with ``sweep``, also mark the
    runs of other dead processes on this host interrupted (``mark_interrupted`` leaves the runs
    sent to workers to ``recover_job``). Problems with the store are logged, not raised.

    The retries come from the store's tasks as they are now: a worker reads the tasks only
    when a job needs it, and may not have read them since they were synced."""
    try:
        stalled = await store.stalled_jobs(stale_after(), process_is_alive)
        tasks = await store.tasks() if stalled else {}

        def retries(task: str) -> int | None:
            stored = tasks.get(task)
            return stored.spec.retries.count if stored is not None else None

        for job_id in stalled:
            recovery = await store.recover_job(job_id, retries)
            if recovery is None:
                continue
            kill_orphaned_groups(recovery.groups)
            if recovery.requeued:
                log.logger.warning(
                    f"job {job_id}: its worker died before taking its runs up; queued again",
                    extra={"event": "job_requeued", "job_id": job_id},
                )
            for run_id in recovery.interrupted:
                log.logger.warning(
                    f"run {run_id} interrupted: the worker running it died",
                    extra={"event": "run_interrupted", "run_id": run_id},
                )
            for run_id, retry_id in recovery.retried:
                log.logger.info(
                    f"retrying interrupted run {run_id} as {retry_id}",
                    extra={"event": "retry_interrupted", "run_id": retry_id, "parent_id": run_id},
                )
        if sweep:
            kill_orphaned_groups((await store.mark_interrupted(HOST, process_is_alive)).groups)
    except StoreError as exc:
        log.logger.error(f"{exc}", extra={"event": "store_error"})


async def send(
    root: Path, store: Store, name: str, *, parameters: dict[str, Any], with_needs: bool, trigger: str
) -> str:
    """Queue ``name`` (after its needs) for a worker; its run id. Raises TaskNotRunnable or
    ParameterError before anything is recorded."""
    await store.ensure_queue()
    if parameters:
        registry.import_plugins(root)  # to check them against the callable's hints
    async with Engine(store, root, revision=project_revision(root)) as engine:
        workflow = engine.workflow(name, WorkflowOptions(parameters=parameters, with_needs=with_needs, trigger=trigger))
        await workflow.send()
        return workflow.target_run_id


async def send_and_wait(store: Store, send: Callable[[], Awaitable[str]]) -> tuple[list[Any], int | None]:
    """``send()`` a workflow to the workers; then every run of its invocation once the target
    is final (the target's last), and the signal that stopped it, if one did. SIGINT/SIGTERM
    cancel the workflow, each run on its worker or before one takes it up, and the wait goes on
    until it ends; one that comes while it is being sent cancels it once it is queued."""
    stopped_by: int | None = None
    run_id: str | None = None

    async def cancel() -> None:
        assert run_id is not None
        await store.cancel_workflow(run_id)

    async with anyio.create_task_group() as group:

        def on_signal(signum: int) -> None:
            # The first cancels; later ones change nothing, the wait goes on until it ends.
            nonlocal stopped_by
            if stopped_by is None:
                stopped_by = signum
                if run_id is not None:
                    group.start_soon(cancel)

        await group.start(on_stop_signals, on_signal)
        with anyio.CancelScope(shield=True):
            run_id = sent = await send()
        if stopped_by is not None:
            await cancel()
        runs = await wait_for(store, sent)
        group.cancel_scope.cancel()
    return runs, stopped_by
