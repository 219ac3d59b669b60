"""Every console example of docs/*.md runs as written, so a page cannot drift from the tool.

How a page is read:

- A ```console block holds commands and their output. A line starting ``$ `` (or ``# ``, a
  root prompt) is a command; a command line ending in ``\\`` goes on on the next line. The lines
  after a command, up to the next command, are its expected output (none shown: not compared).
- A ```yaml or ```python block listed in ``FILES`` is a file of the page's project: it is
  written (or appended) where the table says when the page reaches it. ``STEPS`` holds what a
  page says in prose only (an edit it describes).
- A command line anywhere else (a ``$ `` line in a block that is not ```console) is an error:
  mark the block ```console so that it runs.

How a command runs:

- In a project of its own per page: a copy of the repository's example project (``tasks.d/``,
  ``plugins/``, ``secrets/``, ``schemas/``), or, for a page in ``OWN_PROJECT``, an empty
  directory that the page's own commands and files fill.
- With ``bash -c`` in the page's current directory (``cd`` carries over, ``$?`` is the exit code
  of the page's previous command), ``runner`` being this virtualenv's (first on ``PATH``).
  ``.venv/bin/`` in a command means this virtualenv; ``/srv/tasks`` means the page's project.
- stdout and stderr go to one pipe, as on a terminal, but not a terminal: no live status line.
- A command must exit 0, unless the next command reads ``$?`` (which then shows the code).
- A command in ``BACKGROUND`` (a daemon) is started and left running while the rest of the page
  runs (``runner trigger`` needs it); the first lines of its expected output are awaited and
  compared, and it must exit 0 on SIGTERM at the end of the page.
- A command that cannot run here is in ``NOT_RUN``, with why; a command that is neither run nor
  listed fails the test, and so does an entry of any table here that no page has any more.
- Pages run side by side (threads, each driving its own subprocesses), commands of one page in
  order.

How output is compared: the expected text becomes a regex that matches the whole output, with
these placeholders:

- a run id (32 hex digits): any id; the same id twice on a page must be the same id in the
  runs, and a later command that names it gets the real one;
- an id cut short (``01a2…``, ``01a2277...e312``): any id;
- an ISO 8601 time: any time; a duration such as ``0.004s``: any duration; ``pid 4242``: any pid;
- a line that is only ``...`` (or ``…``): any number of lines; ``...`` or ``…`` within a line:
  anything on that line;
- two or more spaces (table columns): two or more spaces;
- the numbers in ``VARIES`` for a page: any number (counts that depend on a store's history).

The lines of a command in ``UNORDERED`` (concurrent runs) are compared in any order.

Besides: README.md's first commands run in the example project, and its test command is the one
.ci/run runs; every event runner logs has a row in daemon.md's (or, for a worker's,
distributed.md's) table of events.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)  # all pages run in the first test: ~20 s quiet, ~60 s busy

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md"))
VENV_BIN = Path(sys.executable).parent
EXAMPLE = ("tasks.d", "plugins", "secrets", "schemas")
COMMAND_TIMEOUT = 45  # seconds; a command takes 0.3-3 s, more on a machine under load

# -- the tables -------------------------------------------------------------------------------

_SYSTEMD = "root on a server: systemd, a system user, /srv and /opt"
_PG = "needs a PostgreSQL server"
_BENCH = "a benchmark: minutes, not seconds (see performance.md)"

NOT_RUN: dict[tuple[str, str], str] = {
    # (page, the command's first line, without its prompt): why it is not run here
    ("getting-started.md", "python3 -m venv .venv"): "the reader's own virtualenv; the test runs in one",
    ("getting-started.md", ".venv/bin/pip install /path/to/runner"): "installs from a path: tests/acceptance/test_packaging.py builds and installs runner",
    ("getting-started.md", "pip install pre-commit"): "downloads pre-commit",
    ("getting-started.md", "pre-commit install"): "needs pre-commit and a git repository",
    ("getting-started.md", "pre-commit run runner-validate --all-files      # try it on the whole project"): "needs pre-commit, which installs the hook from its repository",
    ("daemon.md", "runner --db postgresql://runner@db1/runner --log-format json daemon      # on web2, while web1 leads"): _PG,
    ("cli.md", "runner run big"): "needs a full disk: tests/acceptance/test_store_faults.py fills a real one (a 1 MB tmpfs) and SQLite's page cap",
    ("deployment.md", "useradd --system --create-home --home-dir /var/lib/runner --shell /usr/sbin/nologin runner"): _SYSTEMD,
    ("deployment.md", "git clone git@git.example.com:ops/tasks.git /srv/tasks"): _SYSTEMD,
    ("deployment.md", "install -d -m 0750 /srv/tasks/.runner"): _SYSTEMD,
    ("deployment.md", "chown -R runner:runner /srv/tasks"): _SYSTEMD,
    ("deployment.md", "python3 -m venv /opt/runner/venv"): _SYSTEMD,
    ("deployment.md", "/opt/runner/venv/bin/pip install 'runner-tasks @ git+https://github.com/your-org/runner@v0.1.0' -r /srv/tasks/requirements.txt"): _SYSTEMD,
    ("deployment.md", "install -d /etc/runner && install -m 0600 /dev/null /etc/runner/runner.env    # then add the secrets"): _SYSTEMD,
    ("deployment.md", "sudo -u runner /opt/runner/venv/bin/runner --project /srv/tasks validate"): _SYSTEMD,
    ("deployment.md", "cp docs/runner.service /etc/systemd/system/runner.service"): _SYSTEMD,
    ("deployment.md", "systemctl daemon-reload && systemctl enable --now runner"): _SYSTEMD,
    ("deployment.md", "journalctl -u runner -f"): _SYSTEMD,
    ("deployment.md", "systemctl stop runner"): _SYSTEMD,
    ("deployment.md", "sudo -u runner sqlite3 /srv/tasks/.runner/runner.db 'VACUUM'"): _SYSTEMD,
    ("deployment.md", "systemctl start runner"): _SYSTEMD,
    ("deployment.md", 'sudo -u runner sqlite3 /srv/tasks/.runner/runner.db ".backup /var/backups/runner/runner.db"'): _SYSTEMD,
    ("deployment.md", "/opt/runner/venv/bin/pip install 'runner-tasks @ git+https://github.com/your-org/runner@v0.2.0'"): _SYSTEMD,
    ("deployment.md", "systemctl restart runner"): _SYSTEMD,
    ("distributed.md", "export RUNNER_DB=postgresql://runner:secret@db.example.com/runner"): _PG,
    ("distributed.md", "pip install 'runner-tasks[postgres]'"): _PG,
    ("distributed.md", "runner worker --concurrency 8 &                # on every worker host; more processes for more cores"): _PG,
    ("distributed.md", "runner daemon --remote                         # fires schedules and takes triggers; runs go to workers"): _PG,
    ("distributed.md", "runner run --remote add -p a=1                 # one run on a worker; prints and exits as `runner run`"): _PG,
    ("distributed.md", "runner trigger --remote add --wait             # the same, as a trigger"): _PG,
    ("http.md", "pip install 'runner-tasks[http]'            # starlette + uvicorn"): "installs from an index; the test virtualenv has the extra",
    ("http.md", "curl -sN localhost:8080/api/v1/runs/01a227b2e9c4a1d3f0b5c6e7d8f9a0b1/events"): (
        "a live stream, of a task the example project does not have: what it shows depends on when "
        "the client connects (test_http.py follows one); the stream of an ended run is run"
    ),
    ("performance.md", ".venv/bin/python benchmarks/bench_definitions.py --profile /tmp/prof"): _BENCH,
    ("performance.md", ".venv/bin/python -m pstats /tmp/prof/sync-cold.prof      # then: sort cumulative, stats 40"): "interactive, and reads the profile of the benchmark above",
    ("performance.md", "uptime                                          # wait for the lowest load you can get"): "the machine's load, for the benchmark after it",
    ("performance.md", ".venv/bin/python benchmarks/bench_runs.py --repeat 7 --what-if"): _BENCH,
    ("performance.md", ".venv/bin/python benchmarks/bench_workflows.py --repeat 5"): _BENCH,
    ("performance.md", "uptime"): "the machine's load, for the benchmark after it",
    ("performance.md", ".venv/bin/python benchmarks/bench_daemon.py --phases --profile /tmp/prof"): _BENCH,
    ("performance.md", ".venv/bin/python benchmarks/bench_retention.py --repeat 3"): _BENCH,
    ("performance.md", ".venv/bin/python benchmarks/bench_workers.py --db-admin postgresql://postgres@127.0.0.1:55432/postgres \\"): _BENCH + "; " + _PG,
    ("performance.md", "# fsync on, with pg_stat_statements: a cluster of one's own, as the postgres user"): "a comment",
    ("performance.md", "mkdir /tmp/pgb && chown postgres /tmp/pgb"): "root, for a PostgreSQL cluster of the benchmark's own",
    ("performance.md", "runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D /tmp/pgb/data -A trust -U postgres"): "root, for a PostgreSQL cluster of the benchmark's own",
    ("performance.md", "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgb/data -l /tmp/pgb/log -w \\"): "root, for a PostgreSQL cluster of the benchmark's own",
    ("performance.md", ".venv/bin/python benchmarks/bench_workers.py --db-admin postgresql://postgres@127.0.0.1:55433/postgres"): _BENCH + "; " + _PG,
}

# (page, command's first line): how many lines of its expected output to await and compare
BACKGROUND: dict[tuple[str, str], int] = {
    ("getting-started.md", "runner daemon"): 1,
    ("daemon.md", "runner --project /srv/tasks daemon"): 1,  # the fires after it come at their time
    ("http.md", "runner --project /srv/tasks daemon --http 127.0.0.1:8080"): 1,
    ("http.md", "runner --project /srv/tasks daemon --http 127.0.0.1:8080 --http-allow-trigger"): 1,
}

# (page, command's first line): why the lines of its output may come in any order
UNORDERED: dict[tuple[str, str], str] = {
    ("workflows.md", "runner run top"): "bad and good, then left and right, run side by side",
}

OWN_PROJECT = {"getting-started.md"}

# page -> (the block's first line, the file it is, "w" to write or "a" to append)
FILES: dict[str, list[tuple[str, str, str]]] = {
    "getting-started.md": [
        ("# yaml-language-server: $schema=../schemas/tasks.schema.json", "tasks.d/hello.yaml", "w"),
        ("from runner import RunContext, task", "plugins/examples.py", "w"),
        ("  add:", "tasks.d/hello.yaml", "a"),
    ],
    "workflows.md": [
        ("# tasks.d/announce.yaml", "tasks.d/announce.yaml", "w"),
        ("# tasks.d/branches.yaml", "tasks.d/branches.yaml", "w"),
    ],
}


def _misspell(cwd: Path) -> None:
    path = cwd / "tasks.d/hello.yaml"
    path.write_text(path.read_text().replace("description:", "descripton:"))


def _spell(cwd: Path) -> None:
    path = cwd / "tasks.d/hello.yaml"
    path.write_text(path.read_text().replace("descripton:", "description:"))
    (cwd / "plugins").mkdir(exist_ok=True)
    (cwd / "plugins/__init__.py").write_text("")  # "Create plugins/__init__.py (empty)"


# (page, command's first line, its n-th occurrence on the page from 1): what the prose does first
STEPS: dict[tuple[str, str, int], Callable[[Path], None]] = {
    ("getting-started.md", "runner validate", 2): _misspell,  # "A mistake is reported ..."
    ("getting-started.md", "runner sync", 1): _spell,  # the mistake fixed, the plugin package made
}

VARIES: dict[str, set[str]] = {
    "deployment.md": {"1532", "204"},  # runs pruned: the page's store had a history
    "http.md": {"12"},  # an event's id: a row id in the store
}

# page -> a port its commands use: the test puts a free port in its place
PORTS: dict[str, str] = {"http.md": "8080"}

# -- reading pages ----------------------------------------------------------------------------


@dataclass
class Command:
    page: str
    line: int
    prompt: str
    text: str
    expected: list[str] = field(default_factory=list)
    reads_status: bool = False  # the next command reads $?

    @property
    def key(self) -> str:
        return self.text.split("\n", 1)[0]


@dataclass
class Block:
    lang: str
    line: int
    lines: list[str]


FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
PROMPT = re.compile(r"^([$#]) (.*)$")


def blocks(text: str) -> Iterator[Block]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = len(opening.group(1)), opening.group(2)
        body: list[str] = []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i][indent:] if not lines[i][:indent].strip() else lines[i])
            i += 1
        yield Block(lang, i - len(body), body)
        i += 1


def commands(page: str, block: Block) -> list[Command]:
    found: list[Command] = []
    lines = iter(enumerate(block.lines))
    for n, raw in lines:
        prompt = PROMPT.match(raw)
        if prompt is None:
            if found:
                found[-1].expected.append(raw)
            continue
        text = prompt.group(2)
        while text.endswith("\\"):
            text += "\n" + next(lines)[1]
        if found and text.startswith("echo $?"):
            found[-1].reads_status = True
        found.append(Command(page, block.line + n + 1, prompt.group(1), text))
    return found


def page_blocks(page: str) -> list[Block]:
    return list(blocks((DOCS / page).read_text(encoding="utf-8")))


def all_commands() -> list[Command]:
    return [c for page in PAGES for b in page_blocks(page) if b.lang == "console" for c in commands(page, b)]


# -- comparing output -------------------------------------------------------------------------

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)"
TOKEN = re.compile(
    rf"(?P<iso>{ISO})"
    r"|(?P<id>\b[0-9a-f]{32}\b)"
    r"|(?P<short>\b(?=[0-9a-f]*\d)[0-9a-f]{4,31}(?:…|\.\.\.)[0-9a-f]*)"
    r"|(?P<elided>\.\.\.|…)"
    r"|(?P<duration>\b\d+\.\d+s\b)"
    r"|(?P<pid>\bpid \d+)"
    r"|(?P<spaces> {2,})"
    r"|(?P<number>\b\d+\b)"
)


def expected_regex(expected: list[str], ids: dict[str, str], varies: set[str]) -> tuple[str, dict[str, str]]:
    """The regex for ``expected``, and its groups: group name -> the page's id it captures."""
    groups: dict[str, str] = {}
    out: list[str] = []
    for line in expected:
        if line.strip() in ("...", "…"):
            out.append(r"(?:.*\n)*?")
            continue
        parts: list[str] = []
        at = 0
        for m in TOKEN.finditer(line):
            parts.append(re.escape(line[at : m.start()]))
            at = m.end()
            kind, value = m.lastgroup, m.group()
            if kind == "iso":
                parts.append(ISO)
            elif kind == "id":
                if value in ids:
                    parts.append(re.escape(ids[value]))
                elif value in groups.values():
                    parts.append(f"(?P={next(g for g, v in groups.items() if v == value)})")
                else:
                    name = f"id{len(groups)}"
                    groups[name] = value
                    parts.append(f"(?P<{name}>[0-9a-f]{{32}})")
            elif kind == "short":
                parts.append("[0-9a-f]{32}")
            elif kind == "elided":
                parts.append(".*?")
            elif kind == "duration":
                parts.append(r"\d+(?:\.\d+)?s")
            elif kind == "pid":
                parts.append(r"pid \d+")
            elif kind == "spaces":
                parts.append(" {2,}")
            else:
                parts.append(r"\d+" if value in varies else re.escape(value))
        parts.append(re.escape(line[at:]))
        out.append("".join(parts) + r"\n")
    return "".join(out), groups


# -- running pages ----------------------------------------------------------------------------


@dataclass
class PageResult:
    page: str
    ran: int = 0
    problems: list[str] = field(default_factory=list)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("VIRTUAL_ENV", None)
    return env


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


class PageRun:
    """One page's commands, in order, in its own project; what a reader's shell would keep
    between commands (the directory, exported variables, ``$?``) is kept here."""

    def __init__(self, page: str, tmp: Path) -> None:
        self.page, self.tmp = page, tmp
        self.result = PageResult(page)
        self.project = self.cwd = tmp / "project"
        self.project.mkdir()
        if page not in OWN_PROJECT:
            for part in EXAMPLE:
                shutil.copytree(REPO / part, self.project / part, ignore=shutil.ignore_patterns("__pycache__"))
        self.env = _env()
        self.status = 0
        self.ids: dict[str, str] = {}  # the page's run ids -> the real ones
        self.port = _free_port() if page in PORTS else None
        self.background: list[tuple[Command, subprocess.Popen[bytes]]] = []

    def local(self, text: str) -> str:
        """``text`` with what stands for this machine's things (paths, a port) replaced by them."""
        text = text.replace(".venv/bin/", f"{VENV_BIN}/").replace("/srv/tasks", str(self.project))
        if self.port is not None:
            text = text.replace(f":{PORTS[self.page]}", f":{self.port}")
        return text

    def compare(self, cmd: Command, output: str, expected: list[str]) -> None:
        """Compare ``output`` with ``expected``; learn the page's ids from it."""
        expected = [self.local(line) for line in expected]
        varies = VARIES.get(cmd.page, set())
        actual = output.rstrip("\n") + "\n"
        shown = "\n".join(expected)
        differs = f"{cmd.page}:{cmd.line}: `{cmd.text}` printed\n{actual}--- the page shows\n{shown}\n"
        if (cmd.page, cmd.key) in UNORDERED:
            left = actual.splitlines(keepends=True)
            for line in expected:
                regex = expected_regex([line], self.ids, varies)[0]
                match = next((got for got in left if re.fullmatch(regex, got)), None)
                if match is None:
                    break
                left.remove(match)
            else:
                if not left:
                    return
            self.result.problems.append(differs)
            return
        regex, groups = expected_regex(expected, self.ids, varies)
        m = re.fullmatch(regex, actual)
        if m is None:
            self.result.problems.append(differs)
            return
        for name, doc_id in groups.items():
            self.ids[doc_id] = m.group(name)

    def run(self, cmd: Command) -> None:
        self.result.ran += 1
        text = self.local(cmd.text)
        for doc_id, real in self.ids.items():
            text = text.replace(doc_id, real)
        if (cmd.page, cmd.key) in BACKGROUND:
            self.start(cmd, text)
            return
        cwd_file, env_file = self.tmp / "cwd", self.tmp / "env"
        script = f"(exit {self.status})\n{text}\n__rc=$?; pwd > {cwd_file}; env -0 > {env_file}; exit $__rc\n"
        try:
            done = subprocess.run(
                ["bash", "-c", script], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode()
            self.result.problems.append(f"{cmd.page}:{cmd.line}: `{cmd.text}` did not end within {COMMAND_TIMEOUT}s:\n{output}")
            self.status = 124
            return
        self.status, output = done.returncode, done.stdout.decode()
        self.cwd = Path(cwd_file.read_text().strip())
        self.env = dict(v.split("=", 1) for v in env_file.read_text().split("\0") if "=" in v)
        for name in ("PWD", "OLDPWD", "SHLVL", "_"):
            self.env.pop(name, None)
        if self.status != 0 and not cmd.reads_status:
            self.result.problems.append(f"{cmd.page}:{cmd.line}: `{cmd.text}` exited {self.status}:\n{output}")
        if cmd.expected:
            self.compare(cmd, output, cmd.expected)

    def start(self, cmd: Command, text: str) -> None:
        """Start a background command, after stopping the one before; compare its first lines."""
        self.stop()
        wanted = BACKGROUND[(cmd.page, cmd.key)]
        log = self.tmp / f"background-{cmd.line}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {text}"], cwd=self.cwd, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.background.append((cmd, proc))
        deadline = time.monotonic() + 20
        while len(lines := log.read_text().splitlines()) < wanted and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            self.result.problems.append(f"{cmd.page}:{cmd.line}: `{cmd.text}` exited {proc.returncode}:\n{log.read_text()}")
            return
        self.compare(cmd, "\n".join(lines[:wanted]), cmd.expected[:wanted])

    def stop(self) -> None:
        """Stop the background commands as Ctrl-C or systemd would: each must exit 0."""
        while self.background:
            cmd, proc = self.background.pop()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
            if code != 0:
                self.result.problems.append(f"{cmd.page}:{cmd.line}: `{cmd.text}` exited {code} on SIGTERM")

    def write(self, block: Block, path: str, mode: str) -> None:
        target = self.cwd / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open(mode, encoding="utf-8") as f:
            f.write("\n".join(block.lines) + "\n")


def run_page(page: str) -> PageResult:
    with tempfile.TemporaryDirectory(prefix="docs-") as tmp:
        run = PageRun(page, Path(tmp))
        files = {first: (path, mode) for first, path, mode in FILES.get(page, [])}
        seen: dict[str, int] = {}
        try:
            for block in page_blocks(page):
                if block.lang in ("yaml", "python") and block.lines and block.lines[0] in files:
                    run.write(block, *files[block.lines[0]])
                if block.lang != "console":
                    continue
                for cmd in commands(page, block):
                    seen[cmd.key] = seen.get(cmd.key, 0) + 1
                    if (page, cmd.key) in NOT_RUN:
                        continue
                    if step := STEPS.get((page, cmd.key, seen[cmd.key])):
                        step(run.cwd)
                    run.run(cmd)
        finally:
            run.stop()
        return run.result


def _missing_tool(page: str) -> str | None:
    """A program besides runner and the shell's own that the page runs and that is missing."""
    for c in all_commands():
        if c.page == page and (c.page, c.key) not in NOT_RUN and c.key.startswith("curl ") and not shutil.which("curl"):
            return "curl"
    return None


@pytest.fixture(scope="module")
def results() -> dict[str, PageResult]:
    found = [c for c in all_commands() if not _missing_tool(c.page)]
    pages = sorted({c.page for c in found}, key=lambda page: -sum(c.page == page for c in found))  # longest first
    with ThreadPoolExecutor(max_workers=4) as pool:  # more only contend for the cores
        return {r.page: r for r in pool.map(run_page, pages)}


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("page", sorted({c.page for c in all_commands()}))
def test_page_runs_as_written(page: str, results: dict[str, PageResult]) -> None:
    if tool := _missing_tool(page):
        pytest.skip(f"{page} runs {tool}, which this machine does not have")
    problems = results[page].problems
    assert not problems, "\n".join(problems)


def test_the_placeholders_allow_what_varies_and_nothing_else() -> None:
    page_id = "01a226ff5e069fe9a6334da3c25c26d0"
    regex, groups = expected_regex(
        [f"run {page_id} took 0.004s, pid 4242", "...", f"again {page_id}  at 2026-01-01T10:00:00.004994+00:00: 1532"],
        {}, {"1532"},
    )
    a, b = "0" * 32, "f" * 32
    assert re.fullmatch(regex, f"run {a} took 12.5s, pid 7\nmore\nlines\nagain {a}    at 2026-12-06T21:51:18+00:00: 3\n")
    assert not re.fullmatch(regex, f"run {a} took 12.5s, pid 7\nagain {b}  at 2026-12-06T21:51:18+00:00: 3\n")
    assert not re.fullmatch(regex, f"run {a} took 12.5s, pid 7\nagain {a} at 2026-12-06T21:51:18+00:00: 3\n")
    assert list(groups.values()) == [page_id]
    assert expected_regex(["exit 2"], {}, set())[0] == r"exit\ 2\n"


def test_every_command_is_run_or_listed_with_why() -> None:
    found = all_commands()
    keys = {(c.page, c.key) for c in found}
    for c in found:
        if c.prompt == "#":
            assert (c.page, c.key) in NOT_RUN, f"{c.page}:{c.line}: a root command must be listed in NOT_RUN: {c.key}"
    stale = [k for k in (*NOT_RUN, *BACKGROUND, *UNORDERED) if k not in keys]
    stale += [(page, key) for page, key, _ in STEPS if (page, key) not in keys]
    assert not stale, f"listed, but no page has the command any more: {stale}"


def test_command_lines_are_in_console_blocks() -> None:
    misplaced = [
        f"{page}:{b.line + n + 1}: {line}"
        for page in PAGES
        for b in page_blocks(page)
        if b.lang != "console"
        for n, line in enumerate(b.lines)
        if line.startswith("$ ")
    ]
    assert not misplaced, "mark these blocks ```console so that they are run:\n" + "\n".join(misplaced)


def test_page_files_are_on_their_pages() -> None:
    firsts = {(page, b.lines[0]) for page in PAGES for b in page_blocks(page) if b.lines}
    missing = [(page, first) for page, entries in FILES.items() for first, _, _ in entries if (page, first) not in firsts]
    assert not missing, f"FILES names blocks that are not on their pages: {missing}"


def test_readme_first_screen(tmp_path: Path) -> None:
    """The README's first commands run in the example project; its test command is what CI runs."""
    readme = [b for b in blocks((REPO / "README.md").read_text(encoding="utf-8")) if b.lang == "sh"]
    first, tests = (" ".join(b.lines) for b in readme[:2])
    steps = [s.strip() for s in first.split("&&")]
    assert steps[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -q ."], steps
    for part in EXAMPLE:
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    for step in steps[2:]:
        assert step.startswith(".venv/bin/runner "), step
        done = subprocess.run(
            ["bash", "-c", step.replace(".venv/bin/", f"{VENV_BIN}/")], cwd=tmp_path, env=_env(),
            capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 0, f"{step}: {done.stdout}{done.stderr}"
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    for step in (s.strip() for s in tests.split("&&")):
        assert step in ci, f"the README's test command runs `{step}`, .ci/run does not"


# Events logged only by `runner worker`: documented in distributed.md's table, not daemon.md's.
WORKER_EVENTS = {"worker_started", "worker_stopping", "worker_stopped", "worker_reloaded", "job_refused", "job_skipped", "revision_mismatch",
                 "job_error", "worker_registered_again", "store_back"}


def test_every_logged_event_is_in_a_log_table() -> None:
    """Each event runner logs has a row in the table of the log it appears in."""
    code = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "runner").rglob("*.py"))
    events = set(re.findall(r'"event": "(\w+)"', code)) | set(re.findall(r'log\.warn\(\s*"(\w+)"', code))
    events |= {"task_orphaned", "task_invalid"}  # sync.py picks one of the two by the reason

    def table_events(page: str) -> set[str]:
        rows = re.findall(r"^\| (`\w+`(?:, `\w+`)*) \|", (DOCS / page).read_text(encoding="utf-8"), re.M)
        return {name for row in rows for name in re.findall(r"`(\w+)`", row)}

    missing = sorted(events - WORKER_EVENTS - table_events("daemon.md"))
    assert missing == [], f"add these events to the table of daemon.md's 'Its log': {missing}"
    missing = sorted(WORKER_EVENTS - table_events("distributed.md"))
    assert missing == [], f"add these events to the table of distributed.md's 'A worker's log': {missing}"
