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


_END_COLUMNS: tuple[str, ...] = ("id", "status", "finished_at", "duration_s", "exit_code", "stdout", "stderr", "error")


def end_values(end: RunEnd) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """The columns of a run's row its end sets, and their values in that order; those it leaves
    as queued are not among them. (As two tuples, not a dict: the SQLite path binds the values
    as they are, ~4 k instructions less an end.)"""
    columns = _END_COLUMNS
    values: tuple[Any, ...] = (
        end.run_id, end.status.value, end.finished_at, end.duration_s, end.exit_code, end.stdout, end.stderr,
        error_json(end.error),
    )
    if end.parameters_json is not None:
        columns += ("parameters",)
        values += (end.parameters_json,)
    if end.result is not None:
        columns += ("result_json", "result_pickle")
        values += (end.result.json, end.result.pickled)
    if end.started_at is not None:
        columns += ("started_at",)
        values += (end.started_at,)
    if end.pgid is not None:
        columns += ("pgid", "pgid_started")
        values += (end.pgid, end.pgid_started)
    return columns, values


def end_row(end: RunEnd) -> dict[str, Any]:
    """The fields of a run's row its end sets (``end_values``), by column."""
    return dict(zip(*end_values(end), strict=True))


def log_row(chunk: LogChunk) -> dict[str, Any]:
    return {"run_id": chunk.run_id, "at": chunk.at, "stream": chunk.stream, "level": chunk.level, "message": chunk.message}


def error_json(error: RunError | None) -> str | None:
    return json.dumps(error.to_json()) if error is not None else None
