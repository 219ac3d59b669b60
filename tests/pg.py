"""A real PostgreSQL server for the tests that need one, and a fresh database for each test.

``RUNNER_TEST_PG_URL`` (an admin URL, e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``)
points at a server you run. Without it, the first test that asks starts a throwaway cluster
(``initdb`` + ``pg_ctl`` from PATH or ``/usr/lib/postgresql/*/bin``, on 127.0.0.1 and a free
port, fsync off), one for the whole session: the pytest-xdist workers share it (the first to
need it starts it, under a lock in the session's directory ``RUNNER_TEST_PG_ROOT``, which
conftest.py makes), and conftest.py stops it when the session ends. One cluster instead of one
per worker saves each further worker an ``initdb`` and a server (~2 s of CPU, ~40 MB).
PostgreSQL refuses to run as root, so as root the cluster belongs to, and runs as, the
``postgres`` user.

When no server can be had, the tests that need one are skipped, naming why; with ``CI`` set
they fail instead, because CI must test PostgreSQL.

Import the fixtures into a test module (``from pg import pg_url``) to use them.
"""

from __future__ import annotations

import fcntl
import glob
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Server:
    """A PostgreSQL server we may create databases on (``admin`` is a driverless URL), or why not."""

    admin: str | None
    reason: str | None = None


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _start_cluster(root: Path) -> tuple[Server, list[str] | None]:
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        return Server(None, "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql"), None
    data = root / "data"
    if os.geteuid() == 0:
        try:
            shutil.chown(root, "postgres", "postgres")
        except (LookupError, OSError) as exc:
            return Server(None, f"running as root and cannot hand the cluster to a 'postgres' user: {exc}"), None
    run = dict(capture_output=True, text=True, timeout=60)
    done = subprocess.run(
        _as_owner([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"]), **run
    )
    if done.returncode != 0:
        return Server(None, f"initdb failed: {done.stderr.strip()[-500:]}"), None
    port = _free_port()
    options = f"-F -c fsync=off -c synchronous_commit=off -c full_page_writes=off -h 127.0.0.1 -p {port} -k {root}"
    stop = _as_owner([pg_ctl, "-D", str(data), "-m", "immediate", "stop"])
    done = subprocess.run(
        _as_owner([pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "30", "-o", options, "start"]), **run
    )
    if done.returncode != 0:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        return Server(None, f"pg_ctl start failed: {(done.stderr + log).strip()[-500:]}"), None
    return Server(f"postgresql://postgres@127.0.0.1:{port}/postgres"), stop


OF_THIS_DATABASE = "pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())"
"""A ``pg_locks`` condition: the sessions on the test's own database. The session's cluster
holds every test's database, and other tests' daemons take the same advisory locks in theirs."""

ROOT_VARIABLE = "RUNNER_TEST_PG_ROOT"


def session_root() -> Path:
    """A directory for this session's cluster; set in the environment, so that the workers
    pytest-xdist starts afterwards find it."""
    root = Path(tempfile.mkdtemp(prefix="runner-pg-"))
    root.chmod(0o755)  # as root, the cluster below it belongs to the postgres user, who must get in
    os.environ[ROOT_VARIABLE] = str(root)
    return root


def stop_session_cluster(root: Path) -> None:
    """Stop the session's cluster, if a worker started one, and remove its directory."""
    stop = root / "stop.json"
    if stop.exists():
        subprocess.run(json.loads(stop.read_text()), capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    url = os.environ.get("RUNNER_TEST_PG_URL")
    if url:
        yield Server(url)
        return
    shared = os.environ.get(ROOT_VARIABLE)
    if shared is None:  # pg.py used without tests/conftest.py: a cluster of this process's own
        root = session_root()
        try:
            yield _shared_server(root)
        finally:
            stop_session_cluster(root)
        return
    yield _shared_server(Path(shared))


def _shared_server(root: Path) -> Server:
    """The session's server: started by the first process to ask, read by the others."""
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = root / "server.json"
        if not known.exists():
            cluster = root / "cluster"
            cluster.mkdir()
            server, stop = _start_cluster(cluster)
            if stop is not None:
                (root / "stop.json").write_text(json.dumps(stop))
            known.write_text(json.dumps({"admin": server.admin, "reason": server.reason}))
        return Server(**json.loads(known.read_text()))


_numbers = itertools.count()


@pytest.fixture
def pg_url(pg_server: Server) -> Iterator[str]:
    """A ``postgresql+psycopg://`` URL of an empty database of this test's own, dropped after it."""
    if pg_server.admin is None:
        message = f"PostgreSQL tests need a server: {pg_server.reason}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this is a failure, not a skip)")
        pytest.skip(message)
    try:
        import psycopg
    except ImportError:
        message = "PostgreSQL tests need psycopg: pip install 'runner-tasks[postgres]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from sqlalchemy.engine import make_url

    admin = make_url(pg_server.admin)
    name = f"runner_test_{os.getpid()}_{next(_numbers)}"
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(name="url", params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``url``: a store URL on each backend in turn, a new SQLite file, then an empty PostgreSQL
    database (import ``pg_server`` and ``pg_url`` beside this fixture)."""
    if request.param == "sqlite":
        from runner.store import database_url

        return database_url(tmp_path / "runner.db")
    found: str = request.getfixturevalue("pg_url")
    return found
