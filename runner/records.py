"""The records runner's parts hand the store: a queued run, its end and its error, a chunk of
its log, a schedule's fire, a job's arguments, the batch that carries them to one transaction,
and a lease; and the one rule that says whether a run gets another attempt (``next_attempt``).

Each record is frozen (the batch, filled as runs go, aside) and has its JSON form here
(``to_json``), where it has one; only the store turns records into rows (``runner/store``). User data (parameters, a result) arrives JSON-safe,
masked, and already written as JSON text: a value that JSON cannot write (an int of more than
4,300 digits, which Python refuses to turn into text) fails the run where it is made, and never
a batch of other runs' records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from runner.models import RunStatus, TaskType
from runner.processes import Owner, this_process

_T = TypeVar("_T")

RETRYABLE = (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.INTERRUPTED)
"""The ends after which a run may get another attempt: not success, a skip or a cancel."""


def next_attempt(status: RunStatus, attempt: int, retries: int | None) -> int | None:
    """The number of the attempt after attempt ``attempt`` that ended ``status``, or None when
    there is none: a run that failed, timed out or was interrupted gets one while its task's
    ``retries`` (the attempts allowed after the first; None: the task is gone) last."""
    if retries is None or status not in RETRYABLE or attempt > retries:
        return None
    return attempt + 1


def filled(cls: type[_T], fields: dict[str, Any]) -> _T:
    """``cls(**fields)`` for a frozen dataclass without slots, ``fields`` naming every field,
    without its ``__init__``: a frozen one sets each field with ``object.__setattr__``, ~2 k
    instructions a field (~51 k for the 24 of a ``Run``, ~29 k for the 14 of a ``QueuedRun``);
    set in one go from a dict written out at the call, ~9 k for a ``QueuedRun`` (as keywords,
    ~12 k). (Frozen guards ``setattr``, which this does not use.) The records made for every
    run (``Run``, ``RunContext``, ``QueuedRun``, ``RunEnd``) are made so, and have no slots for
    that reason (a slot is set one call at a time)."""
    made = object.__new__(cls)
    made.__dict__.update(fields)
    return made


@dataclass(frozen=True, slots=True)
class RunError:
    """Why a run did not succeed, as ``Run.error`` and the JSON show it."""

    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def of(cls, exc: BaseException) -> RunError:
        """A run refused before it ran, for ``exc`` (no traceback: runner's own reasons)."""
        return cls(type(exc).__name__, str(exc))

    def to_json(self) -> dict[str, str | None]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


NO_PROCESS = Owner("", 0, None)
"""The owner of a run sent to workers until one takes it up: no process answers for it."""


@dataclass(frozen=True)
class QueuedRun:
    """A run as it is first recorded, ``queued`` (without slots: made with ``filled``)."""

    id: str
    task: str
    type: TaskType
    attempt: int
    trigger: str  # cli, schedule, trigger, retry, api, task
    parent_id: str | None  # the run that started this one, or the earlier attempt
    invocation: str  # the workflow it is part of
    parameters_json: str  # the JSON text of its parameters, secrets masked
    queued_at: float
    scheduled_for: float | None = None  # the fire time, for the run a schedule started
    owner: Owner = field(default_factory=this_process)
    queue: str | None = None  # the workers' queue, for a run sent to workers
    revision: str | None = None  # of the task files and plugins it is queued with
    git_commit: str | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a python run returned: its JSON-safe, masked copy (and that as JSON text) and the
    original, pickled (None when it cannot be, or holds a secret)."""

    value: Any
    json: str
    pickled: bytes | None

    @classmethod
    def of(cls, value: Any, pickled: bytes | None) -> RunResult:
        return cls(value, json.dumps(value), pickled)


@dataclass(frozen=True)
class RunEnd:
    """A run's final status and what it produced, written once (without slots: made with
    ``filled``)."""

    run_id: str
    status: RunStatus
    finished_at: float
    duration_s: float | None = None
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: RunError | None = None
    # The parameters' JSON text, masked again with the secrets known at its end; None leaves
    # them as queued.
    parameters_json: str | None = None
    result: RunResult | None = None  # None: no result (not a python run, or it did not return)
    # A worker's run that others of its workflow wait for, ending for good (no attempt after
    # it): the invocation whose waiting runs the transaction that writes it decides
    # (store/jobs.py).
    release: str | None = None
    # Its start, and its shell's process group (pgid, the start time of the group's first
    # process), written with the end: the same values as their own writes, which the end
    # replaces when they had not left for the store before it did (``Recorder.finished``),
    # one row update instead of three. None: never made (or not known to whoever made it).
    started_at: float | None = None
    pgid: int | None = None
    pgid_started: float | None = None

    def with_start(self, started_at: float | None, group: tuple[int, float | None] | None) -> RunEnd:
        """This end, carrying the run's start and process group (for an end made without them;
        the engine's carry them from the start. ``dataclasses.replace`` costs several times as
        much)."""
        pgid, pgid_started = group if group is not None else (None, None)
        return filled(RunEnd, {**self.__dict__, "started_at": started_at, "pgid": pgid, "pgid_started": pgid_started})


@dataclass(frozen=True, slots=True)
class LogChunk:
    """A line a run logged (``stream`` "log"), or a chunk of its stdout or stderr (``level``
    "", or "warning" for runner's note that the stream stopped at the output cap)."""

    run_id: str
    at: float
    stream: str
    level: str
    message: str


@dataclass(frozen=True, slots=True)
class Fire:
    """A schedule's fire, committed with the runs it queues: it moves the schedule on only if
    the schedule still stands at the fire's time (``last_fire_at``)."""

    task: str
    next_fire_at: float
    last_fire_at: float
    runs: tuple[str, ...] = ()  # the ids of the runs queued with it


@dataclass(frozen=True, slots=True)
class JobArgs:
    """What a job on the workers' queue carries: one run of a workflow (``runs``: its task and
    run id), enough for a worker to make it again with the id it was queued with.

    A job whose run has needs in its workflow (``needs``) is held by the store until their runs
    are final, then put on the queue with the ids of the runs whose results it reads
    (``upstream``: need -> run id), or its run is skipped (store/jobs.py). A job written
    before workflows were spread carries every run of its workflow (``runs``, several tasks):
    a worker runs them all, needs first, as it did then."""

    task: str
    parameters: Mapping[str, Any]  # the target's overrides, JSON-safe
    with_needs: bool
    trigger: str
    parent_id: str | None
    attempt: int
    scheduled_for: float | None
    invocation: str
    runs: Mapping[str, str]  # task -> the id of its queued run
    revision: str | None  # of the files it was queued at
    queue: str
    needs: tuple[str, ...] = ()  # the tasks of its workflow whose runs it waits for
    upstream: Mapping[str, str] = field(default_factory=dict)  # need -> the id of its final run
    awaited: bool = False  # runs of its workflow wait for this one: its final end decides them

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "parameters": self.parameters,  # as it came: a job from elsewhere may hold anything
            "with_needs": self.with_needs,
            "trigger": self.trigger,
            "parent_id": self.parent_id,
            "attempt": self.attempt,
            "scheduled_for": self.scheduled_for,
            "invocation": self.invocation,
            "runs": self.runs,
            "revision": self.revision,
            "queue": self.queue,
            "needs": list(self.needs),
            "upstream": self.upstream,
            "awaited": self.awaited,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, queue: str | None = None) -> JobArgs:
        """The arguments as a job holds them (written by another process, maybe another
        runner: a job from before the queue was noted in them is on ``queue``)."""
        return cls(
            task=data["task"],
            parameters=data["parameters"],
            with_needs=data["with_needs"],
            trigger=data["trigger"],
            parent_id=data["parent_id"],
            attempt=data["attempt"],
            scheduled_for=data["scheduled_for"],
            invocation=data["invocation"],
            runs=data["runs"],
            revision=data.get("revision"),
            queue=data.get("queue") or queue or "",
            needs=tuple(data.get("needs") or ()),
            upstream=data.get("upstream") or {},
            awaited=bool(data.get("awaited")),
        )

    @property
    def target_run_id(self) -> str:
        return self.runs[self.task]


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker taking up a job's queued runs (``Store.write_runs``): all of them or none, with
    the revision of the files it runs them at."""

    run_ids: tuple[str, ...]
    revision: str | None
    git_commit: str | None


@dataclass(slots=True)
class RunBatch:
    """Run writes gathered from many runs, committed together (group commit). Not frozen: the
    recorder fills one while the one before it is being committed."""

    inserts: list[QueuedRun] = field(default_factory=list)
    starts: list[tuple[str, float]] = field(default_factory=list)  # run id, when it started
    groups: list[tuple[str, int, float | None]] = field(default_factory=list)  # run id, pgid, its start
    finishes: list[RunEnd] = field(default_factory=list)
    logs: list[LogChunk] = field(default_factory=list)
    # Committed with the runs they start, so a fire or a trigger is never taken twice or lost.
    fires: list[Fire] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)  # run ids of triggers taken up
    # Committed with the runs they carry, so a run for workers is never queued without its job.
    jobs: list[JobArgs] = field(default_factory=list)
    # Queued by a run's end (its retry, with ``parent_id``): written only if that end was.
    retries: list[QueuedRun] = field(default_factory=list)
    # Taken up by this worker before anything of theirs is written (their log rows are notes
    # that go with the claim: written only if it is made).
    claims: list[Claim] = field(default_factory=list)
    # Jobs whose runs have all ended (their ends committed before): taken off the queue.
    done_jobs: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.inserts or self.starts or self.groups or self.finishes or self.logs or self.fires
            or self.claimed or self.jobs or self.retries or self.claims or self.done_jobs
        )

    @property
    def needs_lock(self) -> bool:
        """Whether writing it needs the store's write lock: anything but claims, starts, process
        groups, ends without log rows and jobs taken off the queue (see
        ``runner/store/connection.py``)."""
        return bool(self.inserts or self.logs or self.fires or self.claimed or self.jobs or self.retries)


@dataclass(frozen=True, slots=True)
class Written:
    """What of a batch was not written (``Store.write_runs``)."""

    lost_fires: list[str] = field(default_factory=list)  # tasks whose fire another daemon took
    dropped_retries: list[str] = field(default_factory=list)  # retries of ends not written
    unclaimed: list[str] = field(default_factory=list)  # the runs of claims not made


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a named lease (the daemon's), since when, and when it last said it was alive."""

    name: str
    host: str
    pid: int
    pid_started: float | None
    acquired_at: float
    heartbeat_at: float
