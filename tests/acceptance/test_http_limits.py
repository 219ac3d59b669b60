"""What one HTTP client may hold of `runner daemon --http`: a request head and then its body
within --http-timeout, at most --http-max-connections connections, and no flood in the log
when descriptors run out; and with --log-format json every line the daemon writes is JSON.

Clients here are raw sockets, as a slow or hostile client would be; the daemon is a real
process, with `ulimit -n` lowered through ``preexec_fn`` where descriptors must run out.
"""

from __future__ import annotations

import contextlib
import json
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Cli, ProjectDir, logged_events, poll, wait_for_event

pytestmark = pytest.mark.timeout(60)

TOKEN = "t0ken-for-limits"
TASKS = """
    version: 1
    tasks:
      hello:
        command: echo hello
"""


class Served:
    """A daemon with --http on a free port; its stdout and stderr each in a file."""

    def __init__(self, cli: Cli, *args: str, preexec_fn: Callable[[], None] | None = None) -> None:
        root = cli.project.root
        self.out_path, self.log_path = root / f"out-{len(cli.started)}.txt", root / f"log-{len(cli.started)}.txt"
        with self.out_path.open("w") as out, self.log_path.open("w") as err:
            self.process = cli.start(
                "--log-format", "json", "daemon", "--no-watch", "--http", "127.0.0.1:0", *args,
                env={"RUNNER_HTTP_TOKEN": TOKEN}, stdout=out, stderr=err, preexec_fn=preexec_fn,
            )
        (started,) = wait_for_event(self.log_path, "http_started", within=15)
        self.started = started
        self.address = ("127.0.0.1", started["port"])
        self.base = f"http://127.0.0.1:{started['port']}"

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=5)

    def health(self) -> int:
        return httpx.get(f"{self.base}/health", timeout=5).status_code

    def events(self, event: str) -> list[dict[str, Any]]:
        return logged_events(self.log_path, event)

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(timeout=15) == 0


@pytest.fixture
def serve(cli: Cli, project: ProjectDir) -> Iterator[Callable[..., Served]]:
    project.tasks("a.yaml", TASKS)
    yield lambda *args, **kwargs: Served(cli, *args, **kwargs)


def trickle(sock: socket.socket, data: bytes, *, pace: float = 0.05, within: float = 10) -> tuple[bytes, float]:
    """Send ``data`` a byte at a time, then nothing, until the server answers or closes; what
    it answered and after how many seconds."""
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < within:
        readable, _, _ = select.select([sock], [], [], pace)  # the pace of a slow client
        if readable:
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
            return answer, time.monotonic() - started
        if sent < len(data):
            try:
                sock.send(data[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return b"", time.monotonic() - started
            sent += 1
    raise AssertionError(f"the server kept the connection open for {within}s")


def test_a_slow_client_gets_408_and_is_closed_after_the_timeout(serve: Callable[..., Served]) -> None:
    served = serve("--http-timeout", "1s", "--http-allow-trigger")
    assert served.started["timeout_s"] == 1.0
    endless_head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    with served.connect() as sock:
        answer, took = trickle(sock, endless_head)
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"status": 408' in answer, answer
    assert 0.9 < took < 3, took

    # A body that stops coming: the trigger waits for it, the client is cut off after 1 s.
    head = (
        f"POST /api/v1/tasks/hello/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"param"
    ).encode()
    with served.connect() as sock:
        sock.sendall(head)
        answer, took = trickle(sock, b"")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.9 < took < 3, took

    # A connection that never sends anything is closed too, without an answer.
    with served.connect() as sock:
        answer, took = trickle(sock, b"")
    assert answer == b"" and 0.9 < took < 3

    assert served.health() == 200
    assert [e["detail"] for e in served.events("http_timeout")][:1] == ["a request"]
    assert not served.events("http_error")  # the cut-off trigger is no error of the daemon's
    served.stop()


def test_connections_over_the_cap_are_refused_at_once(serve: Callable[..., Served]) -> None:
    served = serve("--http-max-connections", "5", "--http-timeout", "30s")
    held = [served.connect() for _ in range(5)]
    for sock in held:
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # and never the rest

    def refused() -> bytes | None:
        with served.connect() as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                answer = b"reset"
        assert time.monotonic() - started < 2  # refused at once, not left hanging
        return answer if not answer.startswith(b"HTTP/1.1 200") else None

    answer = poll(refused, within=5, what="a connection over the cap to be refused")
    assert answer == b"reset" or answer.startswith(b"HTTP/1.1 503 "), answer
    wait_for_event(served.log_path, "http_busy", within=5)
    for sock in held:
        sock.close()
    assert poll(lambda: served.health() == 200, within=5, what="/health once the connections closed")
    served.stop()


def test_under_a_low_ulimit_slow_clients_cannot_take_the_descriptors_runs_need(serve: Callable[..., Served]) -> None:
    """300 slow connections at `ulimit -n 256` once made a run fail to open /dev/null."""
    served = serve("--http-allow-trigger", preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    assert served.started["max_connections"] == 64  # (256 - 2 * 64 accepted per turn) / 2
    clients = [served.connect() for _ in range(300)]
    for sock in clients:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # and never the rest
    auth = {"Authorization": f"Bearer {TOKEN}"}
    busy = httpx.post(f"{served.base}/api/v1/tasks/hello/runs", headers=auth, timeout=5)
    assert busy.status_code == 503  # at once, not a hang
    for sock in clients[:10]:
        sock.close()

    def triggered() -> httpx.Response | None:
        response = httpx.post(f"{served.base}/api/v1/tasks/hello/runs", headers=auth, timeout=5)
        return response if response.status_code == 202 else None

    run_id = poll(triggered, within=5, what="a trigger once a few clients left").json()["id"]
    run = poll(
        lambda: (r := httpx.get(f"{served.base}/api/v1/runs/{run_id}", timeout=5).json())["status"] == "succeeded" and r,
        within=10, what="the run to succeed",
    )
    assert run["stdout"] == "hello\n"
    for sock in clients[10:]:
        sock.close()
    assert not served.events("http_accept_error")  # the cap kept accept() within the limit
    assert len(served.log_path.read_text().splitlines()) < 15
    served.stop()


def test_accept_errors_are_logged_once_per_burst_not_per_connection(serve: Callable[..., Served]) -> None:
    # An operator's cap above what `ulimit -n` allows: accept() runs out of descriptors.
    served = serve(
        "--http-max-connections", "1000",
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
    )
    clients = [served.connect() for _ in range(80)]  # the kernel queues 64 more than are taken
    (first,) = wait_for_event(served.log_path, "http_accept_error", within=10)
    assert "Too many open files" in first["message"] and first["count"] == 1
    for sock in clients:
        sock.close()
    assert poll(lambda: served.health() == 200, within=10, what="/health once the clients went")
    lines = served.log_path.read_text().splitlines()
    assert len(served.events("http_accept_error")) <= 2  # the first, and at most one count after it
    assert len(lines) < 15, "\n".join(lines)
    assert "Traceback" not in served.log_path.read_text()
    served.stop()


def test_every_line_the_daemon_writes_is_json(serve: Callable[..., Served], project: ProjectDir) -> None:
    served = serve("--http-timeout", "1s", "--http-max-connections", "20")
    for garbage in (b"\x00\xff\xfe garbage\r\n\r\n", b"GET / HTTP/9.9 nonsense\r\n\r\n",
                    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n"):
        with served.connect() as sock, contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(garbage)
            assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    with served.connect() as sock:
        trickle(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n")
    wait_for_event(served.log_path, "http_timeout", within=5)
    (invalid,) = wait_for_event(served.log_path, "http_invalid_request", within=5)
    assert invalid["message"].startswith("HTTP: Invalid HTTP request received")
    served.stop()
    for path in (served.out_path, served.log_path):
        for line in path.read_text().splitlines():
            json.loads(line)  # raises on a line that is not JSON


def test_uncaught_exceptions_are_json_lines_with_their_traceback(tmp_path: Path) -> None:
    """The hooks ``--log-format json`` installs: the main thread's and any other thread's
    uncaught exceptions, the loop's unhandled ones, library warnings, as runner's JSON lines."""
    code = """if True:
        import asyncio, logging, threading, warnings
        from runner import log
        log.configure("json")
        logging.getLogger("some.library").warning("a library speaks")
        warnings.warn("careful", UserWarning)
        thread = threading.Thread(target=lambda: 1 / 0, name="worker-1")
        thread.start()
        thread.join()

        async def main():
            asyncio.get_running_loop().call_soon(lambda: [][1])
            await asyncio.sleep(0.05)

        asyncio.run(main())
        raise RuntimeError("at the top")
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    by_message = {line["message"]: line for line in lines}
    assert "a library speaks" in by_message and any("careful" in m for m in by_message)
    thread = by_message["uncaught ZeroDivisionError in thread worker-1: division by zero"]
    assert thread["event"] == "uncaught_exception" and "ZeroDivisionError" in thread["traceback"]
    assert any("IndexError" in line.get("traceback", "") for line in lines)  # the loop's handler
    top = lines[-1]
    assert top["message"] == "uncaught RuntimeError: at the top" and top["level"] == "critical"
    assert top["traceback"].startswith("Traceback") and "RuntimeError: at the top" in top["traceback"]
