"""Runner's own log: text for people, JSON lines for machines, always on stderr.

Warnings that scripts may act on carry an ``event`` name and fields (``task``, ``callable``,
``error``), which the JSON format prints as keys of their own. With ``--log-format json`` every
line the process writes is JSON: the libraries' loggers (uvicorn, asyncio, and any other that
reaches the root logger) and uncaught exceptions, in the main thread or any other, go through the
same formatter, a traceback as the ``traceback`` field.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
from datetime import UTC, datetime
from typing import Any

from runner.models import Run, RunStatus

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
        if record.exc_info and record.exc_info[1] is not None:
            body.setdefault("traceback", "".join(traceback.format_exception(*record.exc_info)))
        return json.dumps(body, default=str)


_LIBRARIES = ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio")
"""Loggers of the libraries the daemon runs, written by runner's handler (warnings and up)."""


class _Ours(logging.StreamHandler):  # type: ignore[type-arg]
    """Runner's handler, told apart from handlers others (pytest's caplog) put on the root."""


def configure(log_format: str = "text", verbose: int = 0) -> None:
    """Send runner's log to stderr in ``log_format``; ``-v`` shows info, ``-vv`` debug."""
    handler = _Ours(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    for name in _LIBRARIES:
        library = logging.getLogger(name)
        library.handlers[:] = [handler]
        library.propagate = False
        # uvicorn compares its logger's own level with TRACE for every connection: set one.
        library.setLevel(logging.WARNING)
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _Ours)]:
        root.removeHandler(previous)
    if log_format == "json":
        # Anything else that logs (a library's warning) would reach logging's plain-text last
        # resort; so would uncaught exceptions and the warnings module reach stderr as text.
        root.addHandler(handler)
        logging.captureWarnings(True)
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread
        sys.unraisablehook = _unraisable


def _uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    logger.critical(
        f"uncaught {kind.__name__}: {exc}", exc_info=(kind, exc, tb), extra={"event": "uncaught_exception"}
    )


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logger.critical(
        f"uncaught {args.exc_type.__name__} in thread {name}: {args.exc_value}",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"event": "uncaught_exception", "thread_name": name},
    )


def _unraisable(args: Any) -> None:
    what = args.err_msg or "Exception ignored in"
    logger.error(
        f"{what}: {args.object!r}: {args.exc_value}",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None,
        extra={"event": "unraisable_exception"},
    )


def warn(event: str, message: str, **fields: Any) -> None:
    """A warning with a machine-readable ``event`` name and fields."""
    logger.warning(message, extra={"event": event, **fields})


def run_finished(run: Run) -> None:
    """Log a run's end: info when it succeeded or was skipped, a warning otherwise."""
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
