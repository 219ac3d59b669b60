"""Which process runs a run, and whether it is still alive (to find runs of dead processes)."""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()


def process_start_time(pid: int) -> float | None:
    """When ``pid`` started (clock ticks since boot, from /proc), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        return float(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_is_alive(pid: int, started: float | None) -> bool:
    """Whether ``pid`` is the process that started at ``started`` and has not ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, just not ours
    return started is None or process_start_time(pid) in (None, started)


PID = os.getpid()
PID_STARTED = process_start_time(PID)
