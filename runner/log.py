"""Runner's own log: text for people, JSON lines for machines, always on stderr.

Warnings that scripts may act on carry an ``event`` name and fields (``task``, ``callable``,
``error``), which the JSON format prints as keys of their own.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.models import Run

logger = logging.getLogger("runner")

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        text = record.getMessage()
        return text if level == "info" else f"{level}: {text}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        body.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        return json.dumps(body, default=str)


def configure(log_format: str = "text", verbose: int = 0) -> None:
    """Send runner's log to stderr in ``log_format``; ``-v`` shows info, ``-vv`` debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)


def warn(event: str, message: str, **fields: Any) -> None:
    """A warning with a machine-readable ``event`` name and fields."""
    logger.warning(message, extra={"event": event, **fields})


def run_finished(run: Run) -> None:
    """Log a run's end: info when it succeeded or was skipped, a warning otherwise."""
    from runner.models import RunStatus

    took = f" in {run.duration_s:.3f}s" if run.duration_s is not None else ""
    level = logging.INFO if run.status in (RunStatus.SUCCEEDED, RunStatus.SKIPPED) else logging.WARNING
    why = f": {run.error['message']}" if run.error and run.status is not RunStatus.FAILED else ""
    logger.log(
        level,
        f"{run.task}: run {run.id} {run.status.value}{took}{why}",
        extra={
            "event": "run_finished", "task": run.task, "run_id": run.id, "status": run.status.value,
            "trigger": run.trigger, "duration_s": run.duration_s,
        },
    )
