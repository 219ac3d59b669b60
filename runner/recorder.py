"""Group commit for run records: the writes of concurrent runs share transactions.

Committing each state change on its own caps SQLAlchemy async on SQLite near 850 commits/s (8
thread round trips per commit; the same rows in one transaction go at ~95,000/s, measured on 2
cores). Instead every write joins the batch being gathered, and one writer commits that
batch while the next one fills up; a caller returns only once its own write is committed. There
is no timer: a lone run is committed at once, and under load batches grow by themselves. A
run's start (and a shell run's process group) waits in the batch being gathered like any write;
a run that ends before that batch leaves carries them in its end: one row update instead of
three, and the same row.

A run's output and log lines reach the store while it runs, through a ``LiveLog``: each run
buffers what it produced, and every ``FLUSH_INTERVAL`` seconds one flusher moves what all runs
have buffered into the batch being gathered (a run with more than ``livelog.FLUSH_BYTES`` buffered is
moved at once). So a task that prints a line at a time costs a few rows and no commit of its
own per second, and a task that prints nothing writes no rows at all.

One run's records cannot fail the others'. When the store refuses a batch for something other
than an outage (a value it cannot hold: a log line with a lone surrogate, say), the batch is
written again run by run (the rows of one ``queued`` call, a schedule's fire or a job stay
together); the runs whose rows are refused again raise ``RecordRefused`` to whoever waits for
them (the engine then records the run ``failed`` with why), and the rest is written. Likewise a
run whose output cannot be taken for writing (masking it failed). This costs nothing until a
batch is refused.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import anyio
from anyio.abc import TaskStatus
from sqlalchemy.exc import OperationalError

from runner import log
from runner.errors import RecordRefused, StoreError, StoreFileChanged
from runner.livelog import LiveLog
from runner.masking import Masker
from runner.records import Claim, Fire, JobArgs, LogChunk, QueuedRun, RunBatch, RunEnd, Written
from runner.store import Store

FLUSH_INTERVAL = 0.2
"""Seconds a run's new output and log lines wait, at most, before they join a batch."""

class _Pending:
    def __init__(self) -> None:
        self.batch = RunBatch()
        # Starts and shells' process groups, by run, kept out of ``batch`` until the writer
        # takes it: a run that ends before then carries them in its end instead (``finished``).
        self.starts: dict[str, float] = {}
        self.groups: dict[str, tuple[int, float | None]] = {}
        # asyncio's own event: every run waits on one, and anyio's wraps it in a frame more.
        # (Not the writer's wake-up: anyio's, set already, lets the loop turn once before the
        # writer takes the batch, so that the runs woken by the last commit join it.)
        self.committed = asyncio.Event()
        self.error: BaseException | None = None
        self.written = Written()  # what of it was not written after all (Store.write_runs)

    @property
    def empty(self) -> bool:
        return self.batch.empty and not self.starts and not self.groups

    def seal(self) -> None:
        """Add to ``batch`` the starts and groups no end took: it is written as it is now."""
        self.batch.starts.extend(self.starts.items())
        self.batch.groups.extend((run_id, pgid, at) for run_id, (pgid, at) in self.groups.items())
        self.starts, self.groups = {}, {}


@dataclass
class WriteFailure:
    """Run records the store did not take: the first error, and the runs of the batches that
    failed (the first ``NAMED`` of them; ``more`` counts the others, so that a daemon whose
    store fails for hours does not keep a list without end)."""

    NAMED = 20

    error: StoreError
    runs: dict[str, None] = field(default_factory=dict)  # in the order they failed
    more: int = 0

    def add(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            if run_id in self.runs:
                continue
            if len(self.runs) < self.NAMED:
                self.runs[run_id] = None
            else:
                self.more += 1


def _runs_of(batch: RunBatch) -> list[str]:
    ids = [run.id for run in batch.inserts] + [end.run_id for end in batch.finishes]
    ids += [run_id for run_id, _ in batch.starts] + [chunk.run_id for chunk in batch.logs]
    ids += [run_id for claim in batch.claims for run_id in claim.run_ids]
    return list(dict.fromkeys(ids))


class Recorder:
    """Gathers run writes into batches and commits each batch in one transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failure: WriteFailure | None = None  # what the store did not take, if anything
        self.on_failure: Callable[[], None] | None = None  # told when a batch first fails
        self._give_up = anyio.Event()
        self._pending = _Pending()
        self._wake = anyio.Event()
        self._closing = False
        self._ended = False
        self._dirty: dict[int, LiveLog] = {}
        self._dirty_event = anyio.Event()
        # Runs some of whose rows were not written, and why: their end is refused too.
        self._refused: dict[str, BaseException] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer loop; start it with ``task_group.start`` and stop it with ``close``."""
        task_status.started()
        # Shielded as a whole: when the engine's caller is cancelled, the runs it cancels still
        # have to record that they were, so the writer ends only when ``close`` says so.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                group.start_soon(self._flush_periodically)
                await self._write()
                group.cancel_scope.cancel()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            pending, self._pending = self._pending, _Pending()
            if not pending.empty:
                pending.seal()
                try:
                    pending.written = await self._write_through_outages(pending.batch)
                except Exception as exc:
                    if _outage(exc):  # the store as a whole: nothing in this batch can be written
                        pending.error = exc
                        if isinstance(exc, StoreError):
                            self._failed(pending.batch, exc)
                    else:  # something in the batch the store refuses: write the rest
                        pending.written = await self._write_run_by_run(pending.batch, exc)
            pending.committed.set()
            if self._closing and self._pending.empty:
                self._ended = True
                return

    async def _write_through_outages(self, batch: RunBatch) -> Written:
        """Write the batch; while it fails for a reason that can pass (a database restarting,
        a lock held too long, a full disk: ``Store.write_patience``), try again every second for
        as long as that reason is worth waiting for, so that a short outage does not leave runs
        recorded ``running`` that ended meanwhile; and for as long as a task of this process has
        a store session's transaction open. A failure that cannot pass (a dropped table, a
        read-only or replaced file) is raised at once, and so is any after ``give_up``."""
        deadline: float | None = None
        warned = False
        while True:
            try:
                return await self.store.write_runs(batch)
            except StoreError as exc:
                patience = self.store.write_patience(exc)
                holders = self.store.session_holders() if patience else []
                if holders or deadline is None:
                    # The clock starts at the first failure, and again at each while a task of
                    # this process has a session's transaction open: that transaction may hold
                    # the lock, and it ends with the task (done, failed, timed out or cancelled).
                    deadline = time.monotonic() + patience
                if self._give_up.is_set() or time.monotonic() >= deadline:
                    raise
                if not warned:
                    how_long = (
                        f"; tasks with a store session open: {', '.join(holders)}; trying again every second until they end"
                        if holders else f"; trying again every second for up to {patience:g}s"
                    )
                    log.logger.error(f"{exc}{how_long}", extra={"event": "store_error"})
                    warned = True
            with anyio.move_on_after(1.0):
                await self._give_up.wait()

    def _failed(self, batch: RunBatch, exc: StoreError) -> None:
        failure, first = self.failure, self.failure is None
        if failure is None:
            failure = self.failure = WriteFailure(exc)
        failure.add(_runs_of(batch))
        if first and self.on_failure is not None:
            self.on_failure()

    def give_up(self) -> None:
        """Stop waiting for the store: a write being tried again fails now, and any later one
        that fails is not tried again (a stop on SIGTERM must not wait out an outage)."""
        self._give_up.set()

    async def _write_run_by_run(self, batch: RunBatch, error: Exception) -> Written:
        """Write what of a refused batch the store takes, one run (or a set of rows that go
        together) at a time; note the runs it does not take, with why."""
        parts = _apart(batch)
        if len(parts) == 1:
            self._refuse(parts[0][0], error)
            return Written()
        lost: list[str] = []
        dropped: list[str] = []
        unclaimed: list[str] = []
        for run_ids, part in parts:
            try:
                written = await self.store.write_runs(part)
            except Exception as exc:
                self._refuse(run_ids, exc)
                continue
            lost.extend(written.lost_fires)
            dropped.extend(written.dropped_retries)
            unclaimed.extend(written.unclaimed)
        return Written(lost, dropped, unclaimed)

    def _refuse(self, run_ids: list[str], error: BaseException) -> None:
        for run_id in run_ids:
            self._refused.setdefault(run_id, error)
        log.logger.error(
            f"the store refused the records of run(s) {', '.join(sorted(run_ids))}: {error}; "
            "they are recorded failed, the other runs' records are written",
            extra={"event": "record_refused"},
        )

    def _take(self, live: LiveLog) -> list[LogChunk]:
        """What ``live`` has to write; nothing (and its run refused) if that cannot be made."""
        try:
            return live.take()
        except Exception as exc:
            live.close_quietly()
            self._refuse([live.run_id], exc)
            return []

    def _raise_if_refused(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            error = self._refused.pop(run_id, None)
            if error is not None:
                raise RecordRefused(f"cannot record run {run_id}: {error}") from error

    async def _flush_periodically(self) -> None:
        while True:
            await self._dirty_event.wait()
            await anyio.sleep(FLUSH_INTERVAL)
            self._dirty_event = anyio.Event()
            dirty, self._dirty = self._dirty, {}
            for live in dirty.values():
                self._pending.batch.logs.extend(self._take(live))
            if not self._pending.empty:
                self._wake.set()

    def close(self) -> None:
        """Let the writer commit what is pending, then end."""
        self._closing = True
        self._wake.set()

    async def _commit(self, fill: Callable[[RunBatch], None]) -> _Pending:
        if self._ended:
            raise StoreError("cannot record the run: the recorder is closed")
        pending = self._pending
        fill(pending.batch)
        self._wake.set()
        try:
            await pending.committed.wait()
        except anyio.get_cancelled_exc_class():
            # A caller cancelled meanwhile must still learn whether its write was committed,
            # or it would report a run whose record never arrived: the rest of the wait is
            # shielded, bounded by the writer's patience (which ``give_up`` cuts short). Only
            # then: a shielded scope around every wait cost ~5% of a no-op run (callgrind).
            with anyio.CancelScope(shield=True):
                await pending.committed.wait()
            if anyio.current_effective_deadline() != -math.inf:
                raise  # not a cancel scope's (the task itself was cancelled): it goes on now
            # A cancel scope's: it is delivered again at the caller's next checkpoint, as it
            # was when the whole wait was shielded.
        if pending.error is not None:
            raise StoreError(f"cannot record the run: {pending.error}") from pending.error
        return pending

    async def queued(
        self,
        runs: Sequence[QueuedRun],
        *,
        fires: Sequence[Fire] = (),
        claimed: Sequence[str] = (),
        jobs: Sequence[JobArgs] = (),
    ) -> list[str]:
        """Record runs queued; with them, in the same transaction, a schedule's fire, the
        triggers these runs take up, and the jobs that take them to workers. Returns the tasks
        of ``fires`` whose fire was lost (another daemon fired it first): then these runs and
        their jobs were not recorded."""

        def fill(batch: RunBatch) -> None:
            batch.inserts.extend(runs)
            if fires:
                ids = tuple(run.id for run in runs)
                batch.fires.extend(replace(fire, runs=ids) for fire in fires)
            batch.claimed.extend(claimed)
            batch.jobs.extend(jobs)

        pending = await self._commit(fill)
        if self._refused:
            self._raise_if_refused([run.id for run in runs])
        return [fire.task for fire in fires if fire.task in pending.written.lost_fires]

    async def claim(self, claim: Claim, notes: Sequence[LogChunk] = ()) -> bool:
        """Take up a job's queued runs for this worker (``Store.write_runs``), with ``notes`` for
        their logs, in the batch being gathered: the claims of jobs taken at once share one
        transaction, with the starts and ends being written. False if they were not all free
        to take (taken up already, or ended): then nothing of it was written."""

        def fill(batch: RunBatch) -> None:
            batch.claims.append(claim)
            batch.logs.extend(notes)

        pending = await self._commit(fill)
        if self._refused:
            self._raise_if_refused(claim.run_ids)
        return claim.run_ids[0] not in pending.written.unclaimed

    def started(self, run_id: str, at: float) -> None:
        """Record that a run started, without waiting: a run that lasts longer than a commit is
        seen ``running``; one that ends sooner is written with its end, in one row update."""
        self._pending.starts[run_id] = at
        self._wake.set()

    def spawned(self, run_id: str, pgid: int, started: float | None) -> None:
        """Record a shell run's process group, without waiting, so that if this process dies,
        whoever marks the run interrupted can kill what the task left running. (A run that
        ends before this leaves for the store takes it along in its end: its group has been
        killed by then, and the row ends up the same.) ``started``: when the group's first
        process started (``processes.process_start_time``), so that a reused pid is not taken
        for it."""
        self._pending.groups[run_id] = (pgid, started)
        self._wake.set()

    async def finished(self, end: RunEnd, logs: Sequence[LogChunk], retry: QueuedRun | None = None) -> bool:
        """Record a run's end, with the log rows it had not streamed yet and the ``retry`` it
        queues, in one transaction. False if the run had ended already (taken for dead): then
        neither its end nor its retry was written."""

        def fill(batch: RunBatch) -> None:
            pending = self._pending  # whose ``batch`` this is
            # Its start and group, if still here, go with its end instead of on their own.
            started = pending.starts.pop(end.run_id, None)
            group = pending.groups.pop(end.run_id, None)
            if (started is not None and end.started_at is None) or (group is not None and end.pgid is None):
                # An end made without them (the engine's carry them).
                if end.started_at is not None:
                    started = end.started_at
                if end.pgid is not None:
                    group = (end.pgid, end.pgid_started)
                batch.finishes.append(end.with_start(started, group))
            else:
                batch.finishes.append(end)
            batch.logs.extend(logs)
            if retry is not None:
                batch.retries.append(retry)

        if self._refused:  # some of its rows were refused already: so is its end, unwritten
            self._raise_if_refused([end.run_id])
        pending = await self._commit(fill)
        if self._refused:
            self._raise_if_refused([end.run_id])
        return retry is None or retry.id not in pending.written.dropped_retries

    def job_done(self, job_id: int) -> None:
        """Take a worker's job off the queue, without waiting, once its runs' ends are committed
        (the caller has waited for them): with the next batch written, or within
        ``FLUSH_INTERVAL`` if none is. (Written at once, they were a transaction of their own
        for every batch of ends: a third of a busy worker's transactions.)"""
        self._pending.batch.done_jobs.append(job_id)
        self._dirty_event.set()

    def live(self, run_id: str, masker: Masker, *, output_cap: int) -> LiveLog:
        """A buffer for one run's output and log lines, flushed into batches while it runs."""
        return LiveLog(self, run_id, masker, output_cap)

    def mark_dirty(self, live: LiveLog) -> None:
        """``live`` has rows to write: the flusher takes them within ``FLUSH_INTERVAL``."""
        self._dirty[id(live)] = live
        self._dirty_event.set()

    def flush_now(self, live: LiveLog) -> None:
        """``live`` has a full buffer: its rows join the batch being gathered now."""
        self._pending.batch.logs.extend(self._take(live))
        self._wake.set()


def _outage(exc: Exception) -> bool:
    """Whether ``exc`` says the store could not be reached or written at all (an outage, a full
    disk, a dropped table, a read-only or replaced file: nothing can be written) rather than
    that it refused something in the batch."""
    return isinstance(exc, StoreFileChanged) or (
        isinstance(exc, StoreError) and isinstance(exc.__cause__, OperationalError)
    )


def _apart(batch: RunBatch) -> list[tuple[list[str], RunBatch]]:
    """``batch`` cut into the parts that can be written on their own, each with its run ids:
    the rows of one run, with those that must be written in one transaction with them (a
    workflow's queued runs, the fire or job that queued them, a retry and the end it is
    queued by)."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        root = parent.setdefault(key, key)
        while root != parent[root]:
            root = parent[root]
        parent[key] = root
        return root

    def join(keys: Iterable[str]) -> None:
        roots = [find(key) for key in keys]
        for root in roots[1:]:
            parent[root] = roots[0]

    for run in batch.inserts:
        join([run.id, f"invocation:{run.invocation}"])
    for fire in batch.fires:
        join([f"fire:{fire.task}", *fire.runs])
    for job in batch.jobs:
        join(job.runs.values())
    for claim in batch.claims:
        join(claim.run_ids)
    for run in batch.retries:
        assert run.parent_id is not None
        join([run.id, run.parent_id])
    parts: dict[str, tuple[list[str], RunBatch]] = {}

    def part(key: str) -> RunBatch:
        root = find(key)
        if root not in parts:
            parts[root] = ([], RunBatch())
        return parts[root][1]

    for run in batch.inserts:
        part(run.id).inserts.append(run)
    for start in batch.starts:
        part(start[0]).starts.append(start)
    for group in batch.groups:
        part(group[0]).groups.append(group)
    for end in batch.finishes:
        part(end.run_id).finishes.append(end)
    for chunk in batch.logs:
        part(chunk.run_id).logs.append(chunk)
    for fire in batch.fires:
        part(f"fire:{fire.task}").fires.append(fire)
    for run_id in batch.claimed:
        part(run_id).claimed.append(run_id)
    for job in batch.jobs:
        part(next(iter(job.runs.values()))).jobs.append(job)
    for run in batch.retries:
        part(run.id).retries.append(run)
    for claim in batch.claims:
        part(claim.run_ids[0]).claims.append(claim)
    if batch.done_jobs:
        part("jobs:done").done_jobs.extend(batch.done_jobs)
    for key in list(parent):
        if not key.startswith(("invocation:", "fire:", "jobs:")) and (root := find(key)) in parts:
            parts[root][0].append(key)
    return list(parts.values())
