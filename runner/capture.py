"""A python task's ``print()`` and stdlib ``logging``, recorded with its run.

Python tasks run inside the runner process, so what they print would otherwise land on the
process's own stdout and stderr (a daemon's journal): unmasked, and with no run to belong to.
``sys.stdout`` and ``sys.stderr`` are proxies and the root logger has one more handler; both
look the run up in a context variable, which is set for the run's code, copied into the thread
of a sync callable and into the asyncio tasks it starts, and hand what they get to that run.
Concurrent runs each see their own. Writes and records from anywhere else (runner's own code,
a thread the task started itself, another library's thread) go where they went before.

The proxies and the handler are in place while an engine is open (``installed``), not per
run: swapping them in and out (and the root logger's lock with them) for every run cost a
no-op python run about 3% of its time, profiled. Before and after, the process sees its
streams and its logging as they were. While they are in place, the root logger's other
handlers skip records of runs (so a daemon that logs through the root logger does not print
them too), and a record from outside any run that no handler would have taken goes to
``logging.lastResort``, as it did before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO, cast

from runner.executors.shell import Tail


class RunOutput:
    """Where one python run's printed text and log records go: to ``on_output`` (its live log,
    on the event loop) and ``on_record``, and the last ``cap`` bytes of each stream for its
    final record."""

    def __init__(
        self,
        on_output: Callable[[int, bytes], None] | None,
        on_record: Callable[[logging.LogRecord], None],
        cap: int,
    ) -> None:
        self.on_record = on_record
        self._on_output = on_output
        self._cap = cap
        self._tails: dict[int, Tail] = {}
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closed = False

    def write(self, fd: int, text: str) -> None:
        """Text printed to stdout (fd 1) or stderr (fd 2); from the event loop or any thread."""
        # A lone surrogate (a file name read with surrogateescape) cannot be stored: escaped.
        data = text.encode("utf-8", "backslashreplace")
        if threading.get_ident() == self._loop_thread:
            self._add(fd, data)
        else:
            # Callbacks run in order, and before the loop learns that the thread is done.
            with contextlib.suppress(RuntimeError):  # the loop is closed: an abandoned thread
                self._loop.call_soon_threadsafe(self._add, fd, data)

    def _add(self, fd: int, data: bytes) -> None:
        if self._closed:
            return
        tail = self._tails.get(fd)
        if tail is None:
            tail = self._tails[fd] = Tail(self._cap)
        tail.add(data)
        if self._on_output is not None:
            self._on_output(fd, data)

    def close(self) -> tuple[tuple[str | None, bool], tuple[str | None, bool]]:
        """Take nothing more; what was printed to stdout and to stderr, each as (its last
        ``cap`` bytes or None if nothing was, whether the start was cut off)."""
        self._closed = True
        stdout, stderr = self._tails.get(1), self._tails.get(2)
        return (
            (stdout.text(), stdout.truncated) if stdout else (None, False),
            (stderr.text(), stderr.truncated) if stderr else (None, False),
        )


_current: ContextVar[RunOutput | None] = ContextVar("runner_run_output", default=None)


class _Stream:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: a run's writes go to its run, the rest
    to the stream it replaced (``real``)."""

    def __init__(self, real: TextIO | None, fd: int) -> None:
        self.real = real
        self.fd = fd

    def write(self, text: str) -> int:
        output = _current.get()
        if output is not None:
            output.write(self.fd, text)
            return len(text)
        return self.real.write(text) if self.real is not None else len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _current.get() is None and self.real is not None:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _Records(logging.Handler):
    """On the root logger: a record logged by a run's code goes to that run."""

    def emit(self, record: logging.LogRecord) -> None:
        output = _current.get()
        if output is not None:
            output.on_record(record)
        elif (last := logging.lastResort) is not None and record.levelno >= last.level and _unhandled(record):
            last.handle(record)


def _unhandled(record: logging.LogRecord) -> bool:
    """Whether no handler but ours takes ``record`` (the test ``Logger.callHandlers`` makes
    before it falls back on ``logging.lastResort``)."""
    logger: logging.Logger | None = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
    while logger is not None:
        if any(handler is not _HANDLER for handler in logger.handlers):
            return False
        if not logger.propagate:
            break
        logger = logger.parent
    return True


def _outside_runs(record: logging.LogRecord) -> bool:
    return _current.get() is None


_HANDLER = _Records()
_active = 0  # engines open now, in this process


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Put the proxies and the handler in place for the duration of this block (nested blocks,
    as of several engines, share them); on the event loop."""
    _enter()
    try:
        yield
    finally:
        _leave()


class captured:  # a plain context manager, not a generator: entered for every python run
    """Route what the code inside this block (and the threads and tasks it starts with a copy of
    its context) prints and logs to ``output``; inside ``installed``."""

    __slots__ = ("_output", "_token")

    def __init__(self, output: RunOutput) -> None:
        self._output = output

    def __enter__(self) -> None:
        self._token = _current.set(self._output)

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)


def _enter() -> None:
    global _active
    _active += 1
    if _active > 1:
        return
    sys.stdout = cast(TextIO, _Stream(sys.stdout, 1))
    sys.stderr = cast(TextIO, _Stream(sys.stderr, 2))
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(_outside_runs)
    root.addHandler(_HANDLER)


def _leave() -> None:
    global _active
    _active -= 1
    if _active:
        return
    root = logging.getLogger()
    root.removeHandler(_HANDLER)
    for handler in root.handlers:
        handler.removeFilter(_outside_runs)
    # Only a proxy of ours: whoever replaced it meanwhile (a test's capture) restores their own.
    if isinstance(sys.stdout, _Stream):
        sys.stdout = cast(TextIO, sys.stdout.real)
    if isinstance(sys.stderr, _Stream):
        sys.stderr = cast(TextIO, sys.stderr.real)
