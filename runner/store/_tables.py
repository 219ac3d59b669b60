"""The store's tables. Private to ``runner.store``: callers get frozen records, never rows; the
rows are made from runner's records, and read back into them, in ``_rows.py``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("type", String(16), nullable=False),
    Column("definition", Text, nullable=False),  # TaskSpec.definition_json
    Column("source", String(1024), nullable=False),  # "tasks.d/a.yaml:12"
    Column("enabled", Boolean, nullable=False),
    Column("disabled_reason", Text),
    Column("removed", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),  # time-ordered hex (models.new_run_id)
    Column("task", String(100), nullable=False),
    Column("type", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    # cli, schedule, trigger, retry, api or task; a workflow's needs run with its target's
    Column("trigger", String(16), nullable=False),
    Column("parent_id", String(32)),  # the run that started this one, or the earlier attempt
    Column("invocation", String(32)),  # one `runner run` (or fire, or submit): the whole workflow
    Column("scheduled_for", Float),  # the fire time, for the run a schedule started
    Column("parameters", Text, nullable=False),  # JSON, secrets masked
    Column("queued_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("duration_s", Float),
    Column("exit_code", Integer),
    Column("stdout", Text),
    Column("stderr", Text),
    Column("result_json", Text),  # the JSON-safe copy
    Column("result_pickle", LargeBinary),  # the original, for the Python API
    Column("error", Text),  # JSON {type, message, traceback}
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("pid_started", Float),  # the process's start time, so a reused pid is not taken for it
    Column("pgid", Integer),  # a shell run's process group, killed if its runner dies
    Column("pgid_started", Float),  # the start time of the group's first process
    # The revision of the task files and plugins it ran with (revision.py); its git commit.
    Column("revision", String(32)),
    Column("git_commit", String(64)),
    # Runs for workers: the queue, and the queue's job that carries them. Until a worker takes
    # them up, host is "" and pid 0: no process of the enqueuer's is answerable for them.
    Column("queue", String(64)),
    Column("job_id", BigInteger),
    # When someone asked for the run to be stopped (`runner cancel`, the API); the process
    # running it looks for this on its own running runs, by id (runner/cancels.py).
    Column("cancel_requested_at", Float),
    Index("runs_task_queued", "task", "queued_at"),
    # By status, newest last: a page of the runs of one status is a short walk (the web page's
    # and the API's ?status=), not a sort of every run with it (0.25 s for 60,000 of 1,000,000).
    Index("runs_status_queued", "status", "queued_at"),
    Index("runs_queued", "queued_at"),
    Index("runs_invocation", "invocation"),
    Index("runs_job", "job_id"),
    Index("runs_parent", "parent_id"),
)

run_logs = Table(
    "run_logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Column("level", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("stream", String(8), nullable=False, server_default="log"),  # log, stdout, stderr
    Index("run_logs_run", "run_id", "id"),
)

waiting_jobs = Table(
    "waiting_jobs",
    metadata,
    # A run sent to workers that waits for its needs' runs in its workflow: its job, held here
    # until they are final (store/jobs.py), then put on the queue or its run skipped.
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("invocation", String(32), nullable=False),
    Column("needs", Text, nullable=False),  # JSON: the tasks it waits for, in its `needs:` order
    Column("args", Text, nullable=False),  # JSON: JobArgs.to_json(), without upstream
    Index("waiting_jobs_invocation", "invocation"),
)

task_files = Table(
    "task_files",
    metadata,
    Column("path", String(1024), primary_key=True),  # relative to the project
    Column("digest", String(64), nullable=False),  # SHA-256 of the bytes the stored tasks came from
)

task_generation = Table(
    "task_generation",
    metadata,
    # One row at most: a random token that every write of tasks or task_files replaces in the
    # same transaction. A process that still finds the token of its own last sync knows both
    # tables hold what that sync left, and need not read them again (store/tasks.py).
    Column("token", String(32), nullable=False),
)

schedules = Table(
    "schedules",
    metadata,
    Column("task", String(100), primary_key=True),
    Column("schedule", Text, nullable=False),  # Schedule.to_json() the times below were computed for
    Column("anchor", Float, nullable=False),  # when the schedule first appeared: every: counts from here
    Column("next_fire_at", Float, nullable=False),
    Column("last_fire_at", Float),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),  # "daemon": one daemon per store
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("pid_started", Float),
    Column("acquired_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

triggers = Table(
    "triggers",
    metadata,
    Column("run_id", String(32), primary_key=True),  # the id the target's run will have
    Column("task", String(100), nullable=False),
    Column("parameters", Text, nullable=False),  # JSON overrides, as given to `runner trigger`
    Column("with_needs", Boolean, nullable=False),
    Column("requested_at", Float, nullable=False),
)
