"""Runner's records as the store's rows, and the rows back as records: the one place where the
columns of ``runs`` and ``run_logs`` meet ``runner.records`` and ``runner.models``."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from runner.models import LogLine, Run, RunStatus, TaskType
from runner.records import LogChunk, QueuedRun, RunEnd, RunError
from runner.store import _tables as t

UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
# The same, for statements run many times over (an expanding IN cannot be), as literal SQL: bound
# values would be processed again for every row.
UNFINISHED_SQL = text(f"runs.status IN ('{RunStatus.QUEUED.value}', '{RunStatus.RUNNING.value}')")

RUN_COLUMNS = (
    t.runs.c.id,
    t.runs.c.task,
    t.runs.c.type,
    t.runs.c.status,
    t.runs.c.attempt,
    t.runs.c.parameters,
    t.runs.c.trigger,
    t.runs.c.parent_id,
    t.runs.c.invocation,
    t.runs.c.scheduled_for,
    t.runs.c.queued_at,
    t.runs.c.started_at,
    t.runs.c.finished_at,
    t.runs.c.duration_s,
    t.runs.c.exit_code,
    t.runs.c.stdout,
    t.runs.c.stderr,
    t.runs.c.result_json,
    t.runs.c.error,
    t.runs.c.host,
    t.runs.c.revision,
    t.runs.c.git_commit,
    t.runs.c.queue,
)


def run_from_row(row: Any, logs: tuple[LogLine, ...] = ()) -> Run:
    return Run(
        id=row.id,
        task=row.task,
        type=TaskType(row.type),
        status=RunStatus(row.status),
        attempt=row.attempt,
        parameters=json.loads(row.parameters),
        trigger=row.trigger,
        parent_id=row.parent_id,
        invocation=row.invocation,
        scheduled_for=row.scheduled_for,
        queued_at=row.queued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_s=row.duration_s,
        exit_code=row.exit_code,
        stdout=row.stdout,
        stderr=row.stderr,
        result=json.loads(row.result_json) if row.result_json is not None else None,
        error=json.loads(row.error) if row.error is not None else None,
        logs=logs,
        host=row.host or None,
        revision=row.revision,
        git_commit=row.git_commit,
        queue=row.queue,
    )


def grouped_by_keys(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows split by their set of keys, so each group is one executemany."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


QUEUED_COLUMNS = (
    "id", "task", "type", "status", "attempt", "trigger", "parent_id", "invocation", "scheduled_for", "parameters",
    "queued_at", "host", "pid", "pid_started", "queue", "revision", "git_commit",
)
"""The columns of a run's row as first written, queued (``queued_values``' order)."""

INSERT_QUEUED_SQLITE = (
    f"INSERT INTO runs ({', '.join(f'{chr(34)}{column}{chr(34)}' for column in QUEUED_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in QUEUED_COLUMNS)})"
)
"""Queued rows written through the driver on SQLite: SQLAlchemy's Core spent 33 us of CPU a row
on a batch of 2,000 of them, the driver alone 21 (most of it SQLite's own, the table's indexes)."""


def queued_values(run: QueuedRun) -> tuple[Any, ...]:
    owner = run.owner
    return (
        run.id, run.task, run.type.value, RunStatus.QUEUED.value, run.attempt, run.trigger, run.parent_id,
        run.invocation, run.scheduled_for, run.parameters_json, run.queued_at, owner.host, owner.pid,
        owner.pid_started, run.queue, run.revision, run.git_commit,
    )


def queued_row(run: QueuedRun) -> dict[str, Any]:
    return dict(zip(QUEUED_COLUMNS, queued_values(run), strict=True))


def end_row(end: RunEnd) -> dict[str, Any]:
    """The fields of a run's row its end sets; those it leaves as queued are not among them."""
    row: dict[str, Any] = {
        "id": end.run_id,
        "status": end.status.value,
        "finished_at": end.finished_at,
        "duration_s": end.duration_s,
        "exit_code": end.exit_code,
        "stdout": end.stdout,
        "stderr": end.stderr,
        "error": error_json(end.error),
    }
    if end.parameters_json is not None:
        row["parameters"] = end.parameters_json
    if end.result is not None:
        row["result_json"] = end.result.json
        row["result_pickle"] = end.result.pickled
    if end.started_at is not None:
        row["started_at"] = end.started_at
    if end.pgid is not None:
        row["pgid"] = end.pgid
        row["pgid_started"] = end.pgid_started
    return row


def log_row(chunk: LogChunk) -> dict[str, Any]:
    return {"run_id": chunk.run_id, "at": chunk.at, "stream": chunk.stream, "level": chunk.level, "message": chunk.message}


def error_json(error: RunError | None) -> str | None:
    return json.dumps(error.to_json()) if error is not None else None
