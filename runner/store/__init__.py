"""The store: where tasks and runs are kept, in a SQLite file or a PostgreSQL database.

``Store`` is the only code that talks SQL. Its methods are named for what the caller means
(``sync_tasks``, ``write_runs``), take runner's records (``runner.records``) and return frozen
records; ``store.py`` says which module holds which concern. Everything a caller needs is here.
"""

import runner.store._asyncio  # noqa: F401  # first: SQLAlchemy's asyncio package without the ORM
from runner.errors import LeaseHeld
from runner.records import Lease, RunBatch, Written
from runner.store.cancels import CancelOutcome
from runner.store.connection import (
    FILE_CHECK_EVERY,
    OUTAGE_PATIENCE,
    PG_WRITE_LOCK,
    SQLITE_PATIENCE,
    database_url,
    failure_cause,
)
from runner.store.jobs import JOB_TASK
from runner.store.logs import LogEntry
from runner.store.migrations import CURRENT_VERSION
from runner.store.queue import Recovery
from runner.store.runs import Interrupted
from runner.store.schedules import ScheduleState
from runner.store.store import Store, open_store
from runner.store.triggers import Trigger

__all__ = [
    "CURRENT_VERSION",
    "FILE_CHECK_EVERY",
    "JOB_TASK",
    "OUTAGE_PATIENCE",
    "PG_WRITE_LOCK",
    "SQLITE_PATIENCE",
    "CancelOutcome",
    "Interrupted",
    "Lease",
    "LeaseHeld",
    "LogEntry",
    "Recovery",
    "RunBatch",
    "ScheduleState",
    "Store",
    "Trigger",
    "Written",
    "database_url",
    "failure_cause",
    "open_store",
]
