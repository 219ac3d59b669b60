"""Run one shell task as a subprocess and return its exit code and output.

A string command runs as ``/bin/sh -c COMMAND``; a list runs as argv with no shell, so nothing
in it is expanded. ``env`` is the child's complete environment, str or (cheaper to start with)
bytes (an argv[0] without a slash is looked up on *its* ``PATH``) and stdin is ``/dev/null``.

Output: one asyncio subprocess protocol (so this needs anyio's asyncio backend) collects stdout
and stderr as they arrive, and each keeps only its last ``output_cap`` bytes
(``DEFAULT_OUTPUT_CAP``, 1 MB), so a task that prints gigabytes costs a bounded amount of memory; the ``*_truncated`` flags say when the start was dropped. Bytes are decoded as UTF-8
with invalid sequences replaced, never raising. ``on_output(fd, data)``, when given, also sees
every chunk as it arrives (fd 1 or 2), on the event loop: that is how a run's output reaches
the store while it runs (``livelog.LiveLog``).

Process group: the child starts in a new session, so it and everything it spawns share one
process group that belongs to this run. When the run times out or is cancelled, the group gets
SIGTERM, then ``kill_grace`` seconds (``DEFAULT_KILL_GRACE``, 2 s) for the child to exit, then
SIGKILL; the child is always reaped. When the child exits on its own, whatever it left running
in the background (``sleep 100 &``) is SIGKILLed too, after the pipes had a brief moment to
deliver what is already in them: a finished task must not leave processes behind, and a
background process holding stdout open would otherwise keep the run from ever finishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from runner.errors import ShellStartError
from runner.processes import boot_clock, start_time_between
from runner.scopes import cancel_scope

DEFAULT_OUTPUT_CAP = 1_000_000
DEFAULT_KILL_GRACE = 2.0
# Enough to collect what a finished child already wrote; short because whoever still holds the
# pipe open is a leftover background process that is about to be killed.
_DRAIN_GRACE = 0.1


@dataclass(frozen=True)
class ShellOutcome:
    """What one shell run produced.

    ``exit_code`` is None when we killed the process (timeout or cancel), and minus the signal
    number when something else killed it by a signal.
    """

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool


class Tail:
    """The last ``cap`` bytes of a stream; whole chunks are dropped so appending stays O(1)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.dropped = False

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.chunks and self.size - len(self.chunks[0]) >= self.cap:
            self.size -= len(self.chunks.popleft())
            self.dropped = True

    @property
    def truncated(self) -> bool:
        return self.dropped or self.size > self.cap

    def text(self) -> str:
        data = b"".join(self.chunks)
        return data[max(0, len(data) - self.cap) :].decode("utf-8", errors="replace")


class _Collect(asyncio.SubprocessProtocol):
    """Feeds the child's pipes into two tails and notes when it exited and the pipes closed."""

    def __init__(self, output_cap: int, on_output: Callable[[int, bytes], None] | None) -> None:
        self.tails = {1: Tail(output_cap), 2: Tail(output_cap)}
        self.exited, self.closed = asyncio.Event(), asyncio.Event()
        self.open_pipes = 2
        self.on_output = on_output

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.tails[fd].add(data)
        if self.on_output is not None:
            self.on_output(fd, data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.open_pipes -= 1
        if not self.open_pipes:
            self.closed.set()

    def process_exited(self) -> None:
        self.exited.set()


if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):

    class _PidfdWatcher(asyncio.AbstractChildWatcher):
        """Python 3.12's default child watcher, for 3.11: the running loop is told when a
        child exits through a pidfd, where 3.11's default starts a thread per child to wait for
        it. Measured on 2 loaded cores, plain asyncio spawning ``true``: 0.48-0.63 ms of CPU per
        child against 0.74-0.97 ms with a thread each."""

        def __enter__(self) -> _PidfdWatcher:
            return self

        def __exit__(self, *exc_info: object) -> None:
            pass

        def is_active(self) -> bool:
            return True

        def close(self) -> None:
            pass

        def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
            pass

        def add_child_handler(  # type: ignore[override]  # typeshed's generic *args
            self, pid: int, callback: Callable[..., object], *args: Any
        ) -> None:
            loop = asyncio.get_running_loop()
            pidfd = os.pidfd_open(pid)
            loop._add_reader(pidfd, self._do_wait, pid, pidfd, callback, args)  # type: ignore[attr-defined]

        def _do_wait(self, pid: int, pidfd: int, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
            asyncio.get_running_loop()._remove_reader(pidfd)  # type: ignore[attr-defined]
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:  # reaped elsewhere, as asyncio's own watchers report it
                returncode = 255
            else:
                returncode = os.waitstatus_to_exitcode(status)
            os.close(pidfd)
            callback(pid, returncode, *args)

        def remove_child_handler(self, pid: int) -> bool:
            return True  # asyncio never calls it (so says 3.12's)


_watcher_checked = False


def _watch_children_by_pidfd() -> None:
    """On Python 3.11, watch children through pidfds instead of 3.11's default (a thread per
    child), when the kernel has pidfds (Linux 5.3+) and no one chose another watcher."""
    global _watcher_checked
    if _watcher_checked:
        return
    _watcher_checked = True
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an older kernel, or a sandbox that forbids it: threads, as before
        return
    if type(asyncio.get_child_watcher()) is asyncio.ThreadedChildWatcher:
        asyncio.set_child_watcher(_PidfdWatcher())


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is already gone
        os.killpg(pgid, signum)


def _kill_leftovers(transport: asyncio.SubprocessTransport) -> None:
    """SIGKILL what is left of the process group of a child that has exited and is reaped (its
    background processes); nothing to wait for."""
    _signal_group(transport.get_pid(), signal.SIGKILL)
    transport.close()


async def _stop_group(transport: asyncio.SubprocessTransport, child: _Collect, *, kill_grace: float) -> None:
    """Kill the process group of a child still running and reap it; the caller shields this
    from cancellation."""
    pgid = transport.get_pid()
    _signal_group(pgid, signal.SIGTERM)
    with anyio.move_on_after(kill_grace):
        await child.exited.wait()
    # Also when the child exited in time: its background processes may have ignored TERM.
    _signal_group(pgid, signal.SIGKILL)
    await child.exited.wait()
    transport.close()


async def run_shell(
    command: str | Sequence[str],
    *,
    env: Mapping[str, str] | Mapping[bytes, bytes],
    cwd: str | os.PathLike[str],
    # The timeout is ours rather than the caller's fail_after so that a timed-out run still
    # returns its output, distinct from a cancellation.
    timeout: float | None = None,  # noqa: ASYNC109
    output_cap: int = DEFAULT_OUTPUT_CAP,
    kill_grace: float = DEFAULT_KILL_GRACE,
    on_output: Callable[[int, bytes], None] | None = None,
    on_start: Callable[[int, float | None], None] | None = None,
) -> ShellOutcome:
    """Run ``command`` to completion, or until ``timeout`` seconds, and return what it did.

    Raises ShellStartError when the command cannot be started. On cancellation the process
    group is killed (TERM, grace, KILL) before the cancellation propagates. ``on_output`` gets
    each chunk of output as it comes (stream 1 or 2), ``on_start`` the process group's id and
    the start time of its first process (``processes.process_start_time``; None if unknown).
    """
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    loop = asyncio.get_running_loop()
    _watch_children_by_pidfd()
    try:
        # Shielded: cancelled halfway, asyncio would kill only /bin/sh and never the group it
        # has already started. The cancellation is taken up right after, with the group killed.
        with cancel_scope(shield=True):
            before = boot_clock()
            transport, child = await loop.subprocess_exec(
                lambda: _Collect(output_cap, on_output),
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,  # as given: bytes skip subprocess's encoding of every variable
                start_new_session=True,
            )
            after = boot_clock()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv, env or cwd
        raise ShellStartError(f"cannot start command: {exc}") from exc

    exited = False
    try:
        if on_start is not None:
            pgid = transport.get_pid()  # its own session: the pid is the process group's id
            on_start(pgid, start_time_between(pgid, before, after))
        # No cancel scope to enter and leave without a timeout.
        with anyio.move_on_after(timeout) if timeout is not None else contextlib.nullcontext():
            await child.exited.wait()
            exited = True
            if not child.closed.is_set():
                with anyio.move_on_after(_DRAIN_GRACE):
                    await child.closed.wait()
    finally:
        if exited:
            # Nothing left to wait for (the child is reaped): no shielded scope to enter.
            _kill_leftovers(transport)
        else:
            with anyio.CancelScope(shield=True):
                await _stop_group(transport, child, kill_grace=kill_grace)

    out, err = child.tails[1], child.tails[2]
    return ShellOutcome(
        exit_code=transport.get_returncode() if exited else None,
        stdout=out.text(),
        stderr=err.text(),
        timed_out=not exited,
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
    )
