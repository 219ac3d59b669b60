"""A workflow: a task and its needs, checked and ready to run, then run needs first.

Each task runs as soon as all its needs succeeded (independent branches run concurrently), is
skipped when one did not, and is retried when it failed or timed out and has retries left
(after ``retry_delay``). A workflow runs its attempts through a small collaborator (``Runner``:
the engine's ``Attempts``), so that it knows nothing else of the engine.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio

from runner.attempt import Attempt, Ending, cancelled, fault
from runner.cancels import Watched
from runner.context import Upstream
from runner.errors import RunnerError
from runner.jsonsafe import json_safe
from runner.models import Run, RunStatus, StoredTask, TaskSpec, TaskType
from runner.recorder import Recorder
from runner.records import NO_PROCESS, JobArgs, QueuedRun, RunError
from runner.revision import Revision
from runner.store import Store

DEFAULT_QUEUE = "default"
"""The workers' queue of the tasks that name none."""

MAX_BACKOFF = 3600.0
"""The longest pause between retries, unless a task's own ``backoff`` is longer."""


@dataclass(frozen=True)
class WorkflowOptions:
    """How a workflow is asked for (``Engine.workflow``).

    ``parameters`` override the target's own (not its needs'); ``run_id`` is the id the
    target's run gets (one is made otherwise), ``attempt`` its number, ``scheduled_for`` the
    fire time it runs for. A worker makes a queued workflow again with the ids its runs have
    (``run_ids``, by task), its ``invocation`` and the ``queue`` it came by (its retries are
    queued as the runs of that queue), and reads its needs' results from the runs ``upstream``
    names (need -> run id), which ran elsewhere."""

    parameters: Mapping[str, Any] | None = None
    with_needs: bool = True
    trigger: str = "cli"
    parent_id: str | None = None
    run_id: str | None = None
    attempt: int = 1
    scheduled_for: float | None = None
    run_ids: Mapping[str, str] | None = None
    invocation: str | None = None
    queue: str | None = None
    upstream: Mapping[str, str] | None = None

    @classmethod
    def of_job(cls, job: JobArgs) -> WorkflowOptions:
        """The options of the workflow a worker's job carries."""
        return cls(
            parameters=job.parameters, with_needs=job.with_needs, trigger=job.trigger, parent_id=job.parent_id,
            attempt=job.attempt, scheduled_for=job.scheduled_for, run_ids=job.runs, invocation=job.invocation,
            queue=job.queue or None, upstream=job.upstream or None,
        )


class Runner(Protocol):
    """What a workflow needs of the engine that runs it (``attempt.Attempts``)."""

    @property
    def store(self) -> Store: ...

    @property
    def recorder(self) -> Recorder: ...

    @property
    def revision(self) -> Revision | None: ...

    def queued(self, attempt: Attempt) -> QueuedRun:
        """The record of ``attempt`` queued."""
        ...

    def watch(self, run: Watched) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that a cancel request for ``run.run_id`` cancels."""
        ...

    async def run(self, attempt: Attempt, upstream: Upstream | None) -> Run:
        """Run ``attempt`` once, within the limits, and record how it ended (``upstream``: the
        results of its needs; None for a task without needs)."""
        ...

    async def finish(self, attempt: Attempt, started: float | None, ending: Ending) -> Run:
        """Record how ``attempt`` ended, without running it."""
        ...


@dataclass(slots=True)
class Node:
    """One task of a workflow, and the attempt at it going on (or last made)."""

    task: StoredTask
    attempt: Attempt
    final: Run | None = None
    ended: bool = False
    scope: anyio.CancelScope | None = field(default=None, repr=False)  # its cancel watch's
    stopped: bool = False  # the workflow stopped before the node's task entered its scope
    _done: asyncio.Event | None = field(default=None, repr=False)
    _then: list[Callable[[], None]] | None = field(default=None, repr=False)  # told when it ends

    @property
    def done(self) -> asyncio.Event:
        """Set once the node's runs are over; made when first asked for: most runs have no one
        waiting for them, and an event costs about 1% of a no-op run."""
        if self._done is None:
            self._done = asyncio.Event()
            if self.ended:
                self._done.set()
            else:
                self.when_ended(self._done.set)
        return self._done

    def end(self) -> None:
        self.ended = True
        then, self._then = self._then, None
        for call in then or ():
            call()

    def when_ended(self, call: Callable[[], None]) -> None:
        """Have ``call`` called when the node's runs are over (not if they are already)."""
        if self._then is None:
            self._then = []
        self._then.append(call)

    @property
    def run_id(self) -> str:
        """Of the attempt going on: what a cancel request names."""
        return self.attempt.run_id


class Workflow:
    """A task and its needs, checked and ready to run; ``runs`` fills as runs finish."""

    def __init__(
        self, runner: Runner, nodes: dict[str, Node], target: str, invocation: str, options: WorkflowOptions
    ) -> None:
        self.runner = runner
        self.nodes = nodes
        self.target = target
        self.invocation = invocation
        self.options = options  # how it was asked for
        self.runs: list[Run] = []  # every run made, as each finished
        self.on_run: Callable[[Run], None] | None = None  # told of each run as it finishes

    def running(self) -> list[str]:
        """The tasks running now, for a progress display."""
        return [name for name, node in self.nodes.items() if node.attempt.started and node.final is None]

    def retrying(self) -> list[str]:
        """The tasks waiting out the pause before their next attempt, for a progress display."""
        return [
            name
            for name, node in self.nodes.items()
            if node.final is None and node.attempt.number > 1 and not node.attempt.started
        ]

    def finished(self) -> list[Run]:
        """The final run of each task that has one (earlier attempts that were retried are not)."""
        return [node.final for node in self.nodes.values() if node.final is not None]

    @property
    def target_run_id(self) -> str:
        return self.nodes[self.target].attempt.run_id

    async def queue(self, **with_runs: Any) -> list[str]:
        """Record every run of the workflow as ``queued`` (one transaction, which also commits
        ``with_runs``: a schedule's ``fires``, the triggers ``claimed``). Returns the tasks of
        ``fires`` whose fire was lost to another daemon: then nothing was recorded."""
        return await self.runner.recorder.queued(
            [self.runner.queued(node.attempt) for node in self.nodes.values()], **with_runs
        )

    async def send(self, **with_runs: Any) -> list[str]:
        """Record every run of the workflow as ``queued`` for workers, each with a job of its own
        on its task's queue, in one transaction (see ``queue``). The jobs of runs without needs
        in the workflow go on the queue now; the others are held by the store until their
        needs' runs are final (``records.JobArgs``)."""
        revision = self.runner.revision
        runs: list[QueuedRun] = []
        jobs: list[JobArgs] = []
        for name, node in self.nodes.items():
            queue = node.task.spec.queue or DEFAULT_QUEUE
            runs.append(replace(self.runner.queued(node.attempt), owner=NO_PROCESS, queue=queue))
            overrides = self.options.parameters if name == self.target else None
            jobs.append(JobArgs(
                task=name, parameters=json_safe(dict(overrides or {})), with_needs=False, trigger=self.options.trigger,
                parent_id=self.options.parent_id, attempt=node.attempt.number, scheduled_for=node.attempt.scheduled_for,
                invocation=self.invocation, runs={name: node.attempt.run_id},
                revision=revision.digest if revision else None, queue=queue,
                needs=tuple(need for need in node.task.spec.needs if need in self.nodes),
                awaited=any(name in other.task.spec.needs for other in self.nodes.values()),
            ))
        return await self.runner.recorder.queued(runs, jobs=jobs, **with_runs)

    async def skip(self, reason: str, **with_runs: Any) -> Run | None:
        """Record the target ``skipped`` for ``reason`` without running anything (its needs are
        not recorded): a schedule's fire while the task's previous run goes on. None if the
        fire was lost to another daemon (nothing recorded)."""
        node = self.nodes[self.target]
        if await self.runner.recorder.queued([self.runner.queued(node.attempt)], **with_runs):
            return None
        node.final = await self.runner.finish(node.attempt, None, Ending(RunStatus.SKIPPED, RunError("Skipped", reason)))
        self._tell(node.final)
        node.end()
        return node.final

    async def execute(self, *, queued: bool = False) -> Run:
        """Run everything, needs first; return the target's final run."""
        if not queued:
            await self.queue()
        try:
            if len(self.nodes) == 1:
                await self._run_node(self.nodes[self.target])
            else:
                await self._run_all()
        finally:
            final = self.nodes[self.target].final
            if final is not None:
                self._tell(final)
        assert final is not None
        return final

    async def _run_all(self) -> None:
        """Each node in a task of its own, stopped through its cancel watch's scope.

        Plain asyncio tasks: an anyio task group's task cost ~15 us more each (its task handle,
        cancel scope and event: ~6% of a no-op run of a fan-in). Stopping the nodes goes through
        anyio all the same: when this is cancelled, or when a node fails (its record could not
        be written: the store's trouble), the other nodes' scopes are cancelled, so that each
        records its run cancelled under anyio's shield, and this waits for them all before it
        raises (a failure as a one-task workflow raises it, so that the daemon and workers,
        which log a RunnerError and go on, need not look inside exception groups)."""
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._run_node(node)) for node in self.nodes.values()]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # cancelled, or a node failed: stop the others, and wait for their records
            if not all(task.done() for task in tasks):
                self._stop_all()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(tasks)
        failed = [exc for task in tasks if (exc := _failure(task)) is not None]
        if failed:
            if not all(isinstance(exc, RunnerError) for exc in failed):
                raise BaseExceptionGroup("runs of the workflow failed", failed)
            raise failed[0]

    def _stop_all(self) -> None:
        for node in self.nodes.values():
            if node.ended:
                continue
            if node.scope is not None:
                node.scope.cancel()
            else:  # not started yet: stopped as it enters its scope
                node.stopped = True

    async def _run_node(self, node: Node) -> None:
        # A cancel request for the node's run ends here, recorded cancelled below; its needers
        # are then skipped, as after any run that did not succeed.
        with self.runner.watch(node) as node.scope:
            if node.stopped:
                node.scope.cancel()
            await self._run_watched(node)

    async def _run_watched(self, node: Node) -> None:
        try:
            spec = node.task.spec
            # A task without needs (most of a fan's) makes no lists to find none of them.
            blocked = await self._blocked(spec) if spec.needs else None
            if blocked:
                node.final = await self._skip(node.attempt, blocked)
            else:
                upstream = await self._upstream(spec) if spec.needs else None
                node.final = await self._attempts(node, upstream)
            self._record(node.final)
        except anyio.get_cancelled_exc_class():
            if node.attempt.final is None:
                with anyio.CancelScope(shield=True):
                    await self.runner.finish(node.attempt, None, cancelled(None))
            if node.final is None and node.attempt.final is not None:
                node.final = node.attempt.final  # for Engine.wait, and progress
                self._record(node.final)
            raise
        except Exception as exc:
            if node.attempt.final is not None:
                raise  # its record could not be written: the store's trouble, the caller's to see
            # Whatever failed around this run (reading its needs' results) fails the run, not
            # the workflow, and not the process running it.
            ending = Ending(RunStatus.FAILED, fault(exc, node.attempt.masker))
            node.final = await self.runner.finish(node.attempt, None, ending)
            self._record(node.final)
        finally:
            node.end()

    async def _blocked(self, spec: TaskSpec) -> list[Node]:
        """Once the needs of ``spec`` in this workflow have ended, those that did not succeed."""
        needs = [self.nodes[n] for n in spec.needs if n in self.nodes]
        running = [need for need in needs if not need.ended]
        if running:
            await _all_ended(running)
        return [n for n in needs if n.final is None or not n.final.succeeded]

    async def _attempts(self, node: Node, upstream: Upstream | None) -> Run:
        """Run ``node`` until it succeeds or has no retries left; return its last run.

        Each earlier run that gets retried is told as it ends.
        """
        while True:
            attempt = node.attempt
            run = await self.runner.run(attempt, upstream)
            if attempt.next is None:
                return run
            self._record(run)
            node.attempt = attempt.next
            await anyio.sleep(retry_delay(attempt.spec.retries.backoff, attempt.number))

    async def _skip(self, attempt: Attempt, blocked: list[Node]) -> Run:
        why = ", ".join(
            f"{n.task.name} {n.final.status.value if n.final else 'did not run'}" for n in blocked
        )
        error = RunError("Skipped", f"a need did not succeed: {why}")
        return await self.runner.finish(attempt, None, Ending(RunStatus.SKIPPED, error))

    async def _upstream(self, spec: TaskSpec) -> Upstream:
        """The results of ``spec``'s needs: from this workflow, from the runs the options name
        (``upstream``: a worker's run whose needs ran on other workers), or (for needs it does
        not run, as with ``--no-deps``) their latest succeeded runs in the store."""
        store = self.runner.store
        results: dict[str, Any] = {}
        runs: dict[str, Run] = {}
        unloadable: dict[str, str] = {}
        # A worker's run of a workflow spread over workers: its needs ran elsewhere (one read
        # for all of them: a run after a fan of 100 waited ~0.3 s for them one by one).
        ran = self.options.upstream or {}
        elsewhere = {run.id: run for run in await store.runs(ids=ran.values(), limit=None)} if ran else {}
        for need in spec.needs:
            node = self.nodes.get(need)
            if node is not None and node.final is not None:
                runs[need] = node.final
                results[need] = node.attempt.value if node.final.type is TaskType.PYTHON else node.final.stdout
                continue
            if need in ran:
                found = [elsewhere[ran[need]]] if ran[need] in elsewhere else []
            else:
                found = await store.runs(task=need, status=RunStatus.SUCCEEDED.value, limit=1)
            if found:
                runs[need] = found[0]
                if found[0].type is TaskType.PYTHON:
                    try:
                        results[need] = await store.load_result(found[0].id)
                    except Exception as exc:  # e.g. its class was renamed since: fail on use only
                        unloadable[need] = (
                            f"run {found[0].id}: {type(exc).__name__}: {exc}; run {need!r} again"
                        )
                else:
                    results[need] = found[0].stdout
        return Upstream(results, runs, unloadable)

    def _record(self, run: Run) -> None:
        # The target's final run is told last, once every other run is recorded: when a
        # signal cancels them all, the target (waiting for its needs) may be recorded first.
        if run is not self.nodes[self.target].final:
            self._tell(run)

    def _tell(self, run: Run) -> None:
        self.runs.append(run)
        if self.on_run is not None:
            self.on_run(run)


async def _all_ended(nodes: list[Node]) -> None:
    """Wait until all of ``nodes`` have ended, with one wake-up however many they are: a fan-in
    of 2,000 waited on each need still running in turn, a turn of the loop and an event each
    (~15 k instructions, 3% of a no-op run of the fan)."""
    ended = asyncio.get_running_loop().create_future()
    left = len(nodes)

    def one_ended() -> None:
        nonlocal left
        left -= 1
        if not left and not ended.done():  # done: this wait was cancelled
            ended.set_result(None)

    for node in nodes:
        node.when_ended(one_ended)
    await ended


def _failure(task: asyncio.Task[None]) -> BaseException | None:
    """What a node's finished task raised (a task that raised CancelledError itself, as a
    task's own code may, ended its run cancelled: not a failure of the workflow)."""
    if task.cancelled():
        return None
    return task.exception()


def retry_delay(backoff: float, attempt: int) -> float:
    """Seconds to wait before retrying after ``attempt`` failed: ``backoff`` doubled with each
    attempt, capped at one hour (or ``backoff``, if longer), then jittered down by up to half so
    that runs that failed together do not retry together."""
    # The exponent is bounded: 2.0 ** 1024 overflows, and long before that any backoff is capped.
    delay = min(backoff * 2.0 ** min(attempt - 1, 1000), max(backoff, MAX_BACKOFF))
    return delay * random.uniform(0.5, 1.0)
