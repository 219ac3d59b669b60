"""Which process runs a run, and whether it is still alive (to find runs of dead processes)."""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

HOST = socket.gethostname()


@dataclass(frozen=True, slots=True)
class Owner:
    """The process answerable for a run: its host, pid and the pid's start time (so that a
    reused pid is not taken for it)."""

    host: str
    pid: int
    pid_started: float | None


def process_start_time(pid: int) -> float | None:
    """When ``pid`` started (clock ticks since boot, from /proc), to tell a reused pid apart."""
    try:
        # os.open, not open(): no buffered file object to make, ~25 us less for every shell run.
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)  # a few hundred bytes
        finally:
            os.close(fd)
        return float(data.rpartition(b")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


# /proc gives a process's start in whole clock ticks since boot, rounded down.
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK") if hasattr(time, "CLOCK_BOOTTIME") else 0


def boot_clock() -> int:
    """Nanoseconds since boot, on the clock /proc's start times count on (``start_time_between``)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) if _TICK_NS else 0


def start_time_between(pid: int, before: int, after: int) -> float | None:
    """``process_start_time(pid)`` of a process known to have started between the ``boot_clock``
    readings ``before`` and ``after``: when both fall in one clock tick, that tick is its start,
    and /proc need not be read (~11 us of every shell run, most of it the kernel's)."""
    if _TICK_NS and before // _TICK_NS == after // _TICK_NS and before:
        return float(before // _TICK_NS)
    return process_start_time(pid)


def process_is_alive(pid: int, started: float | None) -> bool:
    """Whether ``pid`` is the process that started at ``started`` and has not ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, just not ours
    return started is None or process_start_time(pid) in (None, started)


_this: Owner | None = None


def this_process() -> Owner:
    """This process, as the owner of what it runs: worked out again in a child forked from a
    process that had it (another process, which must not be taken for its parent)."""
    global _this
    if _this is None:
        pid = os.getpid()
        _this = Owner(HOST, pid, process_start_time(pid))
    return _this


def _forked() -> None:
    global _this
    _this = None


os.register_at_fork(after_in_child=_forked)


def kill_orphaned_group(pgid: int, leader_started: float | None) -> bool:
    """SIGKILL what is left of the process group a runner process that died had started for a
    task (its own session: pgid is the pid of the group's first process, ``leader_started``
    that process's start time). True if there was something to kill.

    A group that is gone is left alone, and so is a pid that now belongs to another process:
    while its first process lives its start time must match; once it has exited, Linux does not
    hand its pid out again while the group has members, so members mean it is the same group.
    """
    if leader_started is None:
        return False
    leader = process_start_time(pgid)
    if leader is not None and leader != leader_started:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_orphaned_groups(groups: Iterable[tuple[int, float | None]]) -> None:
    """``kill_orphaned_group`` for each (pgid, start time of its first process) in ``groups``."""
    for pgid, leader_started in groups:
        kill_orphaned_group(pgid, leader_started)


GC_THRESHOLDS = (50_000, 20, 10)
"""The cyclic garbage collector's thresholds in a process that runs tasks (Python's: 700, 10,
10). A run makes a few hundred objects and almost no cyclic garbage, yet with Python's
thresholds a fan-in of 2,000 no-op runs met 265 young, 24 middle and 2 full collections, the
full ones walking the whole heap (the imports, the project's tasks, the workflow): 0.18 s of
its 0.67 s of CPU. With these, 3 young collections: 0.03 s (docs/performance.md, "Per-run
work, a third pass")."""


def tune_gc() -> None:
    """Collect cyclic garbage less often: for ``runner run`` and ``runner worker``, not for a
    program that imports runner."""
    gc.set_threshold(*GC_THRESHOLDS)
