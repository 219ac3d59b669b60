"""Runs on workers: ``runner worker`` takes runs off a queue kept in the PostgreSQL store; the
daemon (``--remote``), ``runner run --remote`` and ``runner trigger --remote`` put workflows
there, spread over the workers.

The queue is procrastinate's (docs/distributed.md says why): jobs are rows that workers take
with ``SELECT ... FOR UPDATE SKIP LOCKED``, woken by LISTEN/NOTIFY. A job carries one run of a
workflow (a task, or one of the needs it runs after), so the runs of one workflow go to
whichever workers are free. The runs are written ``queued`` in the transaction that defers the
jobs of those without needs, so neither exists without the other; the job of a run with needs
is held by the store, and put on the queue (or its run skipped, as the engine skips one) in
the transaction that writes the final end of the last of its needs' runs (``store/jobs.py``).
A worker takes a job's run up with a compare-and-set before it runs anything (a job delivered
twice runs once), then runs it with the same engine as ``runner run``: timeouts, retries,
output, cancellation, and the results of its needs read from the store.

A worker that dies is noticed by whoever runs beside it: on its host at once (its pid is
gone), from anywhere when its heartbeat is older than ``stale_after()``. Its job is then taken
off the queue, its unfinished runs are marked interrupted, and each that had started is
retried if its task has retries left, all in one transaction (``Store.recover_job``).
"""

from __future__ import annotations

import functools
import os
import time
import weakref
from collections.abc import Awaitable, Callable
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
from runner.revision import project_revision
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
"""Seconds an idle worker waits, at most, before it looks for jobs again without a wake-up."""


CHECK_IDLE = 1.0
"""Seconds a queue connection may have been idle before the pool checks it is still alive."""


def store_connections(concurrency: int) -> int:
    """The store connections a worker keeps open: one for each run it may be running, one each
    for its recorder's writer, its recovery loop and its cancel watcher. (With the advisory
    lock contended, SQLAlchemy's default pool of 5 opened and closed 140-250 connections per
    2,000 runs on 4 workers.)"""
    return concurrency + 3


def _app(store: Store, concurrency: int) -> Any:
    import procrastinate  # the postgres extra, imported only by the processes that use the queue
    import psycopg_pool

    returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def note_return(conn: Any) -> None:
        returned[conn] = time.monotonic()

    async def check_if_idle(conn: Any) -> None:
        # procrastinate checks every connection it takes from the pool (an empty query: a
        # round trip per fetch and per finish); one used within the last second is as good
        # as checked. A connection that broke meanwhile fails that one call, as one that
        # breaks during the call does.
        if time.monotonic() - returned.get(conn, 0.0) > CHECK_IDLE:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)

    async def autocommit(conn: Any) -> None:
        # Each of procrastinate's queries is one statement (its fetch, its finish: a function
        # call each), so in autocommit it is the same transaction without BEGIN and COMMIT:
        # two round trips fewer per call.
        await conn.set_autocommit(True)

    def pool(**options: Any) -> Any:
        return psycopg_pool.AsyncConnectionPool(**{**options, "check": check_if_idle})

    connector = procrastinate.PsycopgConnector(
        conninfo=store.conninfo(), min_size=1, max_size=concurrency + 1, pool_factory=pool,
        configure=autocommit, reset=note_return,
    )
    return procrastinate.App(connector=connector)


class Worker:
    """``runner worker``: ``await Worker(root, store, queues=..., concurrency=...).run()``."""

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
        self._scopes: set[anyio.CancelScope] = set()
        self._stopping = False

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    async def run(self, *, handle_signals: bool = True) -> None:
        """Take jobs until SIGTERM/SIGINT; then running workflows get the grace period, and are
        cancelled after it (or at a second signal)."""
        from procrastinate.worker import Worker as QueueWorker  # the postgres extra, as in _app

        await self.store.ensure_queue()
        registry.import_plugins(self.root)
        await recover_stalled(self.store, sweep=True)  # as every runner process does at start
        app = _app(self.store, self.concurrency)
        app.task(name=JOB_TASK, pass_context=False)(self._job)
        async with Engine(self.store, self.root, max_concurrency=self.concurrency, revision=self.revision) as engine:
            self._engine = engine
            async with app.open_async(), anyio.create_task_group() as group:
                worker = QueueWorker(
                    app, queues=self.queues, name=f"runner@{HOST}:{this_process().pid}", concurrency=self.concurrency,
                    install_signal_handlers=False, delete_jobs="always", shutdown_graceful_timeout=self.grace,
                    update_heartbeat_interval=HEARTBEAT, stalled_worker_timeout=stale_after(),
                    # A job committed while a fetch finds nothing wakes no one (procrastinate
                    # 3.10 clears its wake-up after the fetch): look again at least this often.
                    fetch_job_polling_interval=FETCH_POLL,
                )
                if handle_signals:
                    await group.start(on_stop_signals, functools.partial(self._on_signal, worker))
                group.start_soon(self._recover)
                log.logger.info(
                    f"worker started: pid {this_process().pid}, queues {', '.join(self.queues or ['(all)'])}, "
                    f"concurrency {self.concurrency}, revision {self.revision}",
                    extra={"event": "worker_started", "pid": this_process().pid, "revision": self.revision.digest},
                )
                await worker.run()  # type: ignore[no-untyped-call]
                group.cancel_scope.cancel()

    def _on_signal(self, worker: Any, signum: int) -> None:
        """The first SIGTERM/SIGINT stops taking jobs; a second one cancels the running ones."""
        if self._stopping:
            for scope in list(self._scopes):
                scope.cancel()
            return
        self._stopping = True
        log.logger.info(
            f"stopping on {signal_name(signum)}: no new jobs; running ones get "
            f"{self.grace:g}s to finish (a second signal cancels them now)",
            extra={"event": "worker_stopping", "signal": signum},
        )
        worker.stop()

    async def _job(self, **args: Any) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                await self.execute(JobArgs.from_json(args))
            finally:
                self._scopes.discard(scope)

    async def execute(self, args: JobArgs) -> None:
        """Run the run a job carries (or the whole workflow, a job from before workflows were
        spread), unless it was taken up or ended meanwhile."""
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
        now = time.time()
        notes_rows = [LogChunk(workflow.target_run_id, now, "log", "warning", note) for note in notes]
        claim = Claim(tuple(run_ids), self.revision.digest, self.revision.commit)
        if not await self.engine.recorder.claim(claim, notes_rows):
            log.logger.info(
                f"{args.task}: run {workflow.target_run_id} was taken up or ended elsewhere; skipped",
                extra={"event": "job_skipped", "task": args.task, "run_id": workflow.target_run_id},
            )
            return
        workflow.on_run = log.run_finished
        try:
            await workflow.execute(queued=True)
        except RunnerError as exc:
            log.logger.error(f"{workflow.target}: {exc}", extra={"event": "run_error", "task": workflow.target})

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
