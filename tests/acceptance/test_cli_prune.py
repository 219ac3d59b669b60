"""``runner prune`` as a user or a cron job runs it: exit codes, output, JSON, and the store after.

Recent runs are made with ``runner run`` (once, copied into each test's project); runs from weeks ago are written into the store file
with ``sqlite3``, as the engine would have written them back then.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from conftest import Cli, ProjectDir, ok

pytestmark = pytest.mark.timeout(30)

DAY = 86_400


def add_old_run(db: Path, run_id: str, task: str, status: str, days: float) -> None:
    at = time.time() - days * DAY
    finished = None if status in ("queued", "running") else at
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO runs (id, task, type, status, attempt, trigger, parameters, queued_at,"
            " finished_at, host, pid) VALUES (?, ?, 'shell', ?, 1, 'cli', '{}', ?, ?, 'elsewhere', 1)",
            (run_id, task, status, at, finished),
        )
        conn.execute(
            "INSERT INTO run_logs (run_id, at, level, message) VALUES (?, ?, 'info', 'hello')", (run_id, at)
        )


def stored_ids(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM runs")}


@pytest.fixture(scope="module")
def recent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with two runs of ``hello`` made by ``runner run``, once for the module: each test
    gets a copy (two processes fewer per test)."""
    made = ProjectDir(tmp_path_factory.mktemp("recent") / "project")
    made.tasks("a.yaml", "version: 1\ntasks:\n  hello:\n    command: echo hi\n")
    cli = Cli(made)
    try:
        ok(cli("run", "hello"))
        ok(cli("run", "hello"))
    finally:
        cli.cleanup()
    return made.root


@pytest.fixture
def history(project: ProjectDir, recent: Path) -> set[str]:
    """Two runs of ``hello`` made just now, and old runs: five to prune, two that stay."""
    shutil.copytree(recent, project.root, dirs_exist_ok=True)
    for n in range(5):
        add_old_run(project.db, f"old-failed-{n}", "hello", "failed", 40 + n)
    add_old_run(project.db, "old-latest-succeeded", "gone", "succeeded", 50)  # stands in for gone
    add_old_run(project.db, "old-running", "hello", "running", 45)
    return stored_ids(project.db)


def test_prune_deletes_old_finished_runs(project: ProjectDir, cli: Cli, history: set[str]) -> None:
    result = ok(cli("prune"))

    assert result.stdout == "pruned 5 runs\n"
    assert result.stderr == ""
    left = history - {f"old-failed-{n}" for n in range(5)}
    assert stored_ids(project.db) == left
    assert {r["id"] for r in cli.runs("--limit", "100")} == left
    assert ok(cli("prune")).stdout == "pruned 0 runs\n"


def test_dry_run_changes_nothing(project: ProjectDir, cli: Cli, history: set[str]) -> None:
    before = project.db.read_bytes()

    assert ok(cli("prune", "--dry-run")).stdout == "would prune 5 runs\n"
    assert json.loads(ok(cli("prune", "--dry-run", "--json")).stdout) == {"pruned": 5, "dry_run": True}

    assert stored_ids(project.db) == history
    with closing(sqlite3.connect(project.db)) as conn:
        assert conn.execute("SELECT count(*) FROM run_logs WHERE run_id LIKE 'old-%'").fetchone() == (7,)
    assert project.db.read_bytes() == before


def test_json(project: ProjectDir, cli: Cli, history: set[str]) -> None:
    assert json.loads(ok(cli("prune", "--json")).stdout) == {"pruned": 5, "dry_run": False}


def test_keep_the_newest_runs_of_each_task(project: ProjectDir, cli: Cli, history: set[str]) -> None:
    newest = cli.runs("--task", "hello", "--limit", "1")[0]["id"]

    assert ok(cli("prune", "--older-than", "0", "--keep", "1")).stdout == "pruned 6 runs\n"

    assert stored_ids(project.db) == {newest, "old-running", "old-latest-succeeded"}


def test_zero_turns_both_limits_off(project: ProjectDir, cli: Cli, history: set[str]) -> None:
    assert ok(cli("prune", "--older-than", "0", "--keep", "0")).stdout == "pruned 0 runs\n"
    assert stored_ids(project.db) == history


def test_durations_in_any_form(project: ProjectDir, cli: Cli, history: set[str]) -> None:
    assert ok(cli("prune", "--dry-run", "--older-than", "1000h")).stdout == "would prune 3 runs\n"
    assert ok(cli("prune", "--dry-run", "--older-than", "42.5d")).stdout == "would prune 2 runs\n"
    assert ok(cli("prune", "--dry-run", "--older-than", str(int(40.5 * DAY)))).stdout == "would prune 4 runs\n"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--older-than", "soon"), "--older-than"),
        (("--older-than", "-1d"), "--older-than"),
        (("--keep", "-1"), "--keep"),
        (("--keep", "many"), "--keep"),
    ],
)
def test_bad_limits_are_usage_errors(project: ProjectDir, cli: Cli, args: tuple[str, ...], says: str) -> None:
    result = cli("prune", *args)

    assert result.returncode == 2
    assert says in result.stderr
    assert not project.db.exists()
