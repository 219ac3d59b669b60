"""The records runner passes around: declared tasks, stored tasks, runs. All frozen."""

from __future__ import annotations

import enum
import functools
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class TaskType(enum.StrEnum):
    SHELL = "shell"
    PYTHON = "python"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class SecretRef:
    """An ``env`` value read at run time from the runner's environment or a file; always masked."""

    from_env: str | None = None
    from_file: str | None = None

    def to_json(self) -> dict[str, str]:
        return {"from_env": self.from_env} if self.from_env is not None else {"from_file": str(self.from_file)}


@dataclass(frozen=True)
class Schedule:
    """When a task fires by itself: a cron expression in a timezone, or every N seconds."""

    cron: str | None = None
    timezone: str | None = None
    every: float | None = None
    misfire: str = "once"  # fires missed while no daemon ran: "once" (run one) or "skip"
    overlap: str = "skip"  # a fire while the previous run goes on: "skip" (recorded) or "allow"

    def to_json(self) -> dict[str, Any]:
        when: dict[str, Any] = (
            {"every": self.every} if self.every is not None else {"cron": self.cron, "timezone": self.timezone or "UTC"}
        )
        if self.misfire != "once":
            when["misfire"] = self.misfire
        if self.overlap != "skip":
            when["overlap"] = self.overlap
        return when

    @property
    def key(self) -> str:
        """``to_json`` as canonical text: what the store keeps a schedule's fire times for, so
        that a changed schedule starts again."""
        return json.dumps(self.to_json(), sort_keys=True)

    def to_public_json(self) -> dict[str, Any]:
        """The schedule as ``runner list --json`` and the API show it: ``every`` as a DURATION
        (``"1h30m"``) with its seconds beside it. ``to_json`` stays the stored form: the daemon
        compares it to tell a changed schedule."""
        when = self.to_json()
        if self.every is None:
            return when
        policy = {k: v for k, v in when.items() if k != "every"}
        return {"every": format_duration(self.every), "every_seconds": self.every, **policy}


def format_duration(seconds: float) -> str:
    """A DURATION as a task file would write it: 5400 -> ``1h30m``, 90 -> ``1m30s``, 0.5 -> ``0.5s``."""
    whole, fraction = divmod(seconds, 1)
    whole_s = int(whole)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, whole_s = divmod(whole_s, size)
        if count:
            parts.append(f"{count}{unit}")
    rest = whole_s + fraction
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


@dataclass(frozen=True)
class Retries:
    """How many more tries a failed or timed-out run gets, and the pause before each."""

    count: int = 0
    backoff: float = 0.0


@dataclass(frozen=True)
class Source:
    """Where a task is declared: the file relative to the project, and the line of its name."""

    path: str
    line: int
    col: int = 1

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class TaskSpec:
    """A task as declared in ``tasks.d``, normalised (durations in seconds, defaults filled)."""

    name: str
    type: TaskType
    source: Source
    command: str | tuple[str, ...] | None = None
    callable: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    description: str | None = None
    needs: tuple[str, ...] = ()
    schedule: Schedule | None = None
    timeout: float | None = None
    retries: Retries = Retries()
    env: Mapping[str, str | SecretRef] = field(default_factory=dict)
    cwd: str | None = None
    tags: tuple[str, ...] = ()
    concurrency: int | None = None  # runs of this task at once; None: only the global limit
    queue: str | None = None  # the workers' queue its remote runs go to; None: "default"

    def definition(self) -> dict[str, Any]:
        """The declared fields as JSON data: what the store keeps and compares."""
        return {
            "type": self.type.value,
            "command": list(self.command) if isinstance(self.command, tuple) else self.command,
            "callable": self.callable,
            "parameters": dict(self.parameters),
            "enabled": self.enabled,
            "description": self.description,
            "needs": list(self.needs),
            "schedule": self.schedule.to_json() if self.schedule else None,
            "timeout": self.timeout,
            "retries": {"count": self.retries.count, "backoff": self.retries.backoff},
            "env": {
                k: v.to_json() if isinstance(v, SecretRef) else v for k, v in self.env.items()
            },
            "cwd": self.cwd,
            "tags": list(self.tags),
            "concurrency": self.concurrency,
            # Only when set: the definitions stored before queues existed stay equal.
            **({"queue": self.queue} if self.queue is not None else {}),
        }

    @functools.cached_property
    def definition_json(self) -> str:
        """``definition()`` as canonical JSON text, computed once."""
        return json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_definition_json(cls, name: str, source: Source, text: str) -> TaskSpec:
        """The spec whose ``definition_json`` is ``text`` (as the store keeps it), which is
        then not written out again: a daemon reads 10,000 of them after a reload."""
        spec = cls.from_definition(name, source, json.loads(text))
        spec.__dict__["definition_json"] = text  # the cached_property's value, known already
        return spec

    @classmethod
    def from_definition(cls, name: str, source: Source, data: Mapping[str, Any]) -> TaskSpec:
        command = data.get("command")
        schedule = data.get("schedule")
        retries = data.get("retries") or {}
        return cls(
            name=name,
            type=TaskType(data["type"]),
            source=source,
            command=tuple(command) if isinstance(command, list) else command,
            callable=data.get("callable"),
            parameters=data.get("parameters") or {},
            enabled=data.get("enabled", True),
            description=data.get("description"),
            needs=tuple(data.get("needs") or ()),
            schedule=Schedule(**schedule) if schedule else None,
            timeout=data.get("timeout"),
            retries=Retries(retries.get("count", 0), retries.get("backoff", 0.0)),
            env={
                k: SecretRef(**v) if isinstance(v, dict) else v
                for k, v in (data.get("env") or {}).items()
            },
            cwd=data.get("cwd"),
            tags=tuple(data.get("tags") or ()),
            concurrency=data.get("concurrency"),
            queue=data.get("queue"),
        )


@dataclass(frozen=True)
class LastRun:
    """A task's newest run, in brief: its id, status, and when it ended (or was queued)."""

    id: str
    status: RunStatus
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status.value, "at": iso(self.at)}


@dataclass(frozen=True)
class StoredTask:
    """A task as the store knows it: its definition plus whether it may run and why not."""

    name: str
    spec: TaskSpec
    enabled: bool
    disabled_reason: str | None
    removed: bool = False

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        body: dict[str, Any] = {
            "name": self.name,
            "type": spec.type.value,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
        }
        if spec.type is TaskType.SHELL:
            body["command"] = list(spec.command) if isinstance(spec.command, tuple) else spec.command
        else:
            body["callable"] = spec.callable
        body.update(
            parameters=dict(spec.parameters),
            needs=list(spec.needs),
            schedule=spec.schedule.to_public_json() if spec.schedule else None,
            source=str(spec.source),
        )
        return body


def iso(timestamp: float | None) -> str | None:
    """A UTC epoch timestamp as ISO 8601 with microseconds, as runs are printed."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")


def new_run_id() -> str:
    """A 32-hex-digit id that sorts by creation time (48-bit ms clock, then 80 random bits)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"  # secrets.token_hex(10), less its wrappers


@dataclass(frozen=True)
class LogLine:
    """One line a python task wrote to ``ctx.logger``."""

    at: float
    level: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "level": self.level, "message": self.message}


@dataclass(frozen=True)
class Run:
    """One attempt at running a task, as recorded in the store."""

    id: str
    task: str
    type: TaskType
    status: RunStatus
    attempt: int
    parameters: Mapping[str, Any]
    trigger: str
    parent_id: str | None
    queued_at: float
    invocation: str | None = None  # the `runner run` (or other start) this run was part of
    scheduled_for: float | None = None  # the fire time, for the run a schedule started
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    result: Any = None
    error: Mapping[str, Any] | None = None
    logs: tuple[LogLine, ...] = ()
    host: str | None = None  # of the process that ran it (None: not taken up by a worker yet)
    revision: str | None = None  # of the task files and plugins it ran with (revision.py)
    git_commit: str | None = None
    queue: str | None = None  # the workers' queue it was sent to; None: not sent to workers

    @property
    def succeeded(self) -> bool:
        return self.status is RunStatus.SUCCEEDED

    def to_json(self, *, with_logs: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "type": self.type.value,
            "status": self.status.value,
            "attempt": self.attempt,
            "parameters": dict(self.parameters),
            "trigger": self.trigger,
            "parent_id": self.parent_id,
            "invocation": self.invocation,
            "scheduled_for": iso(self.scheduled_for),
            "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_s": self.duration_s,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "result": self.result,
            "error": dict(self.error) if self.error is not None else None,
            "host": self.host,
            "revision": self.revision,
            "git_commit": self.git_commit,
            "queue": self.queue,
        }
        if with_logs:
            body["logs"] = [line.to_json() for line in self.logs]
        return body
