"""Start ``python -m runner`` processes by forking them from one that has runner imported.

Most of the suite's CPU went into starting ``runner`` processes: ~0.45 s of CPU each on this
2-core machine, nearly all of it importing SQLAlchemy, runner and the rest, for ~600 processes.
A fork server (a "zygote") imports all of that once per pytest process; each ``runner``
command is then a fork of it that runs ``runner/__main__.py`` as ``python -m runner`` would, in a
process of its own: its own pid, its own stdin/stdout/stderr (the pipes the test made), its own
working directory and environment, signals and exit status as usual. What it skips is the
interpreter's start and the imports, so tests whose subject is start-up (what ``import runner``
or ``runner --help`` loads, the console script, packaging) start a fresh interpreter as a user's
shell would, and ``RUNNER_TEST_FORK=0`` makes every command do so.

:func:`popen` is ``subprocess.Popen`` for any command: a ``[sys.executable, "-m", "runner",
...]`` command whose start-up settings (the ``PYTHON*`` variables) are the server's goes to the
server, the rest is spawned. The returned object is a ``subprocess.Popen`` (``communicate``,
``wait``, ``poll``, ``send_signal``, ``pid``, pipes), whose exit status the server reports over
a Unix socket, since the process is the server's child, not the test's.

The server is single-threaded (a fork copies only the forking thread) and keeps nothing a child
could trip over: it closes its sockets in the child, and the child sets ``sys.argv``,
``sys.path[0]`` and ``__main__`` as ``python -m`` does before running runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any

_PRELOAD = (
    "runner.cli", "runner.store", "runner.engine", "runner.sync", "runner.daemon", "runner.http",
    "runner.remote", "runner.follow", "runner.cancels", "procrastinate", "psycopg",
    "sqlalchemy.dialects.sqlite.aiosqlite", "sqlalchemy.dialects.postgresql.psycopg",
)
_STARTUP_VARIABLES = ("PYTHON",)  # read once, when an interpreter starts: a child would not see a change


# The server side, run as ``python tests/forkserver.py SOCKET``.


def _serve(path: str) -> dict[str, Any]:
    """Answer requests until the parent goes; returns only in a forked child, with its request."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    try:
        os.close(os.pidfd_open(os.getpid()))  # Linux 5.3 and later
    except (AttributeError, OSError):
        print("unsupported", flush=True)
        raise SystemExit(0) from None
    print("ready", flush=True)
    while os.getppid() == parent:
        for key, _ in selector.select(timeout=1.0):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                except OSError:
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for _, other in children.values():
                        other.close()
                    for pidfd in children:
                        os.close(pidfd)
                    conn.close()
                    request: dict[str, Any] = json.loads(message)
                    request["fds"] = fds
                    return request
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ)
                with contextlib.suppress(OSError):
                    conn.sendall(f"{pid}\n".encode())
            else:
                pidfd = key.fd
                selector.unregister(pidfd)
                pid, conn = children.pop(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    conn.sendall(f"{status}\n".encode())
                conn.close()
    raise SystemExit(0)


def _become(request: dict[str, Any]) -> None:
    """Turn this forked child into ``python -m runner ARGS`` as the request describes."""
    import runpy

    for target, fd in enumerate(request["fds"]):
        os.dup2(fd, target)
    for fd in set(request["fds"]) - {0, 1, 2}:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request["start_new_session"]:
        os.setsid()
    sys.argv = ["-m", *request["args"]]
    sys.path[0] = os.getcwd()
    runpy.run_module("runner", run_name="__main__", alter_sys=True)


def _main() -> None:
    import gc
    import importlib

    for module in _PRELOAD:
        importlib.import_module(module)
    # Out of the collector's sight: a child's collections (and the one at its exit) would
    # otherwise touch every object, copying the whole heap page by page (0.3 s of CPU per
    # child measured, against 0.06 s frozen).
    gc.collect()
    gc.freeze()
    request = _serve(sys.argv[1])
    _become(request)


# The client side, imported by the tests.


class _Server:
    """One fork server per pytest process, started on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen[str] | None = None
        self.env: dict[str, str] = {}
        self.path = ""
        self.unsupported = False  # no pidfd here: every command is spawned

    def serves(self, args: list[str], env: dict[str, str]) -> bool:
        if os.environ.get("RUNNER_TEST_FORK") == "0" or args[:3] != [sys.executable, "-m", "runner"]:
            return False
        with self.lock:
            if not self.unsupported and (self.process is None or self.process.poll() is not None):
                self._start(env)
            if self.unsupported:
                return False
        startup = {k: v for k, v in env.items() if k.startswith(_STARTUP_VARIABLES)}
        return startup == {k: v for k, v in self.env.items() if k.startswith(_STARTUP_VARIABLES)}

    def _start(self, env: dict[str, str]) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="runner-fork-"), "socket")
        self.env = dict(env)
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.path], env=env, cwd=os.path.dirname(self.path),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        answer = self.process.stdout.readline()
        if answer == "unsupported\n":
            self.unsupported = True
        elif answer != "ready\n":
            raise RuntimeError(f"the fork server did not start (exit {self.process.wait()})")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
                os.rmdir(os.path.dirname(self.path))


SERVER = _Server()


class Forked(subprocess.Popen):  # type: ignore[type-arg]
    """A ``subprocess.Popen`` whose process the fork server starts and waits for."""

    _conn: socket.socket
    _reply = b""

    def _execute_child(  # type: ignore[override]
        self, args: list[str], executable: Any, preexec_fn: Any, close_fds: bool, pass_fds: Any,
        cwd: str | None, env: dict[str, str] | None, startupinfo: Any, creationflags: int, shell: bool,
        p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int, errread: int, errwrite: int,
        restore_signals: bool, gid: Any, gids: Any, uid: Any, umask: int, start_new_session: bool,
        *rest: Any,
    ) -> None:
        fds = [p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1, errwrite if errwrite != -1 else 2]
        request = {
            "args": list(args[3:]), "cwd": os.fspath(cwd or os.getcwd()),
            "env": dict(os.environ if env is None else env), "start_new_session": start_new_session,
        }
        try:
            self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._conn.connect(SERVER.path)
            socket.send_fds(self._conn, [json.dumps(request).encode()], fds)
            self.pid = int(self._line(block=True))
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # type: ignore[attr-defined]

    def _line(self, *, block: bool) -> str | None:
        """The next line the server sent about this process (its pid, then its wait status)."""
        while b"\n" not in self._reply:
            self._conn.setblocking(block)
            try:
                data = self._conn.recv(64)
            except BlockingIOError:
                return None
            if not data:
                raise RuntimeError("the fork server went away")
            self._reply += data
        line, self._reply = self._reply.split(b"\n", 1)
        return line.decode()

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        status = self._line(block=not wait_flags & os.WNOHANG)
        if status is None:
            return 0, 0
        self._conn.close()
        return self.pid, int(status)

    def _internal_poll(self, _deadstate: int | None = None, **_: Any) -> int | None:
        if self.returncode is None and self._waitpid_lock.acquire(False):  # type: ignore[attr-defined]
            try:
                if self.returncode is None:
                    pid, status = self._try_wait(os.WNOHANG)
                    if pid:
                        self._handle_exitstatus(status)  # type: ignore[attr-defined]
            except (OSError, RuntimeError):
                if _deadstate is not None:
                    self.returncode = _deadstate
            finally:
                self._waitpid_lock.release()  # type: ignore[attr-defined]
        return self.returncode


def popen(args: list[str], **options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **options)``, forked from the server where it can be."""
    env = options.get("env") or dict(os.environ)
    plain = not (options.get("preexec_fn") or options.get("pass_fds") or options.get("shell"))
    if plain and SERVER.serves(list(args), env):
        return Forked(args, **options)
    return subprocess.Popen(args, **options)


def run(args: list[str], *, timeout: float, **options: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(args, capture_output=True, text=True, timeout=timeout, **options)``,
    forked from the server where it can be."""
    with popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


if __name__ == "__main__":
    _main()
