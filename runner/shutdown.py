"""How runner's long-running commands stop: on SIGINT and SIGTERM, and past what outlives them.

``runner run``, ``runner logs --follow``, ``runner trigger --wait``, ``runner daemon`` and
``runner worker`` all stop on the same two signals, through the two helpers here: the first
three on the first signal (a second one then has its default effect), the daemon and the
worker on each one (the first stops them gently, a second cuts the grace short).
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from runner import log

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a long-running command."""


async def first_stop_signal(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> int:
    """Wait for SIGINT or SIGTERM and return its number.

    runner handles the two from the moment this is started (``task_group.start``) until it
    returns; a signal after that has its default effect."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        return await anext(signals)


async def on_stop_signals(
    handle: Callable[[int], None], *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Call ``handle`` with the number of every SIGINT and SIGTERM, from the moment this is
    started (``task_group.start``) until it is cancelled."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            handle(signum)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    return signal.Signals(signum).name


async def end_leftover_tasks(within: float = 1.0) -> None:
    """Cancel the tasks that outlived the daemon's (or the worker's) own: started by a library
    outside its task groups. asyncio.run waits for them at exit, forever if one ignores the
    cancel; so each is logged with where it stands, and one still going after ``within``
    seconds ends the process (everything is recorded and the lease released by then)."""
    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in leftover:
        stack = io.StringIO()
        task.print_stack(file=stack)
        log.logger.warning(f"a task outlived the daemon: {task!r}", extra={"event": "leftover_task", "stack": stack.getvalue()})
        task.cancel()
    if not leftover:
        return
    with anyio.move_on_after(within):
        await asyncio.wait(leftover)
    if any(not task.done() for task in leftover):
        log.logger.warning("leftover tasks ignored the cancel; exiting without them", extra={"event": "daemon_stopped"})
        sys.stderr.flush()
        os._exit(0)
