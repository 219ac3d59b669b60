"""Hot reload of the changes file events do not spell out: directories moved into and out of
tasks.d/, and the atomic deploy that swaps the tasks.d symlink to a new release.

A real daemon, real renames; the tests wait for what the daemon logs, each within a few
seconds (the daemon's own bound is about a second).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import Cli, ProjectDir, ok, poll
from pg import pg_server, pg_url  # noqa: F401
from test_daemon import Daemon, runs_of
from test_daemon_pg import PgCli

pytestmark = pytest.mark.timeout(60)


def every(name: str) -> str:
    return f"version: 1\ntasks:\n  {name}:\n    command: echo {name}\n    schedule: {{every: 0.5s}}\n"


def listed(cli: Cli) -> list[str]:
    return [task["name"] for task in json.loads(ok(cli("list", "--json")).stdout)]


def test_a_directory_moved_in_and_out_of_tasks_d_is_reloaded(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", every("tick"))
    staged = project.write("staging/reports/b.yaml", every("tock")).parent
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="tick")  # the watch starts just after "daemon started"

    moved_at = time.monotonic()
    staged.rename(project.root / "tasks.d" / "reports")
    (reload,) = daemon.wait_for("reloaded", within=5)
    assert reload["added"] == ["tock"]
    assert time.monotonic() - moved_at < 3
    daemon.wait_for("run_finished", task="tock")

    (project.root / "tasks.d" / "reports").rename(project.root / "archived")
    reloads = daemon.wait_for("reloaded", count=2, within=5)
    assert reloads[1]["removed"] == ["tock"]
    assert listed(cli) == ["tick"]
    assert daemon.stop() == 0


def test_an_atomic_symlink_swap_of_tasks_d_is_reloaded(project: ProjectDir, cli: Cli) -> None:
    # the deploy pattern: tasks.d -> releases/v1, then
    #   ln -sfn releases/v2 tasks.d.new && mv -T tasks.d.new tasks.d
    (project.root / "tasks.d").rmdir()
    project.write("releases/v1/a.yaml", every("one"))
    project.write("releases/v2/a.yaml", every("two"))
    os.symlink("releases/v1", project.root / "tasks.d")
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="one")

    swapped_at = time.monotonic()
    os.symlink("releases/v2", project.root / "tasks.d.new")
    os.rename(project.root / "tasks.d.new", project.root / "tasks.d")
    (reload,) = daemon.wait_for("reloaded", within=5)
    assert (reload["added"], reload["removed"]) == (["two"], ["one"])
    assert time.monotonic() - swapped_at < 3
    daemon.wait_for("run_finished", task="two")
    assert listed(cli) == ["two"]

    # the new release is the one watched now
    project.write("releases/v2/b.yaml", every("three"))
    reloads = daemon.wait_for("reloaded", count=2, within=5)
    assert reloads[1]["added"] == ["three"]
    project.write("releases/v1/b.yaml", every("stale"))  # the old release no longer matters
    daemon.wait_for("run_finished", task="three")
    assert daemon.stop() == 0
    assert [e.get("added") for e in daemon.events("reloaded")] == [["two"], ["three"]]


def test_a_tasks_d_created_after_the_start_is_watched(project: ProjectDir, cli: Cli) -> None:
    (project.root / "tasks.d").rmdir()
    daemon = Daemon(cli).started()
    staged = project.write("staging/a.yaml", every("late")).parent
    staged.rename(project.root / "tasks.d")
    (reload,) = daemon.wait_for("reloaded", within=5)
    assert reload["added"] == ["late"]
    project.tasks("b.yaml", every("later"))
    reloads = daemon.wait_for("reloaded", count=2, within=5)
    assert reloads[1]["added"] == ["later"]
    assert daemon.stop() == 0


def test_a_fifo_or_a_dangling_link_is_an_invalid_reload_and_the_last_good_tasks_keep_firing(
    project: ProjectDir, cli: Cli
) -> None:
    project.tasks("a.yaml", every("tick"))
    project.tasks("sub/b.yaml", every("tock"))
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="tock")

    os.mkfifo(project.root / "tasks.d" / "x.yaml")
    (project.root / "tasks.d" / "sub").rename(project.root / "release-1")
    os.symlink("../release-0", project.root / "tasks.d" / "sub")
    daemon.wait_for("reload_failed", within=5)
    problems = {e["message"] for e in daemon.wait_for("invalid_task_file", count=2, within=5)}
    assert problems == {
        "tasks.d/x.yaml:1:1: not a regular file (a FIFO); only regular files are read as task files",
        "tasks.d/sub:1:1: cannot read: a symlink to '../release-0', which does not exist; fix or remove the link",
    }
    finished = len(daemon.events("run_finished", task="tock"))
    daemon.wait_for("run_finished", task="tock", count=finished + 2)
    assert listed(cli) == ["tick", "tock"]
    assert daemon.events("reloaded") == []
    assert daemon.stop() == 0


def test_a_symlink_swap_of_plugins_imports_the_new_release(project: ProjectDir, cli: Cli) -> None:
    for release in ("1", "2"):
        project.write(f"releases/p{release}/__init__.py", "")
        project.write(f"releases/p{release}/calc.py", f"def answer() -> int:\n    return {release}\n")
    os.symlink("releases/p1", project.root / "plugins")
    project.tasks(
        "a.yaml",
        "version: 1\ntasks:\n  answer:\n    type: python\n    callable: plugins.calc:answer\n"
        "    schedule: {every: 0.5s}\n",
    )
    daemon = Daemon(cli).started()
    daemon.wait_for("run_finished", task="answer")

    os.symlink("releases/p2", project.root / "plugins.new")
    os.rename(project.root / "plugins.new", project.root / "plugins")
    daemon.wait_for("reloaded", within=5)
    poll(lambda: any(r["result_json"] == "2" for r in runs_of(project, "answer")), what="a run of the new release")
    assert daemon.stop() == 0


def one(name: str, command: str) -> str:
    return f"version: 1\ntasks:\n  {name}:\n    command: {command}\n"


def reload_after_another_sync(project: ProjectDir, cli: Cli, other: Cli) -> dict[str, str]:
    """A daemon on ``cli``'s store; ``other`` (another checkout, the same store) syncs; then a
    file of the daemon's project changes. The commands of the tasks the store holds after."""
    project.tasks("a.yaml", one("a", "echo a"))
    project.tasks("b.yaml", one("b", "echo b"))
    daemon = Daemon(cli).started()
    other.project.tasks("a.yaml", one("a", "echo theirs"))
    other.project.tasks("c.yaml", one("c", "echo c"))
    assert ok(other("sync")).stdout.splitlines() == ["added: c", "updated: a", "removed: b"]

    project.tasks("b.yaml", one("b", "echo b2"))
    (reload,) = daemon.wait_for("reloaded", within=5)
    assert (reload.get("added"), reload.get("updated"), reload.get("removed")) == (["b"], ["a"], ["c"])
    assert listed(cli) == ["a", "b"]
    assert ok(cli("sync")).stdout.strip() == "nothing to change"
    assert daemon.stop() == 0
    return {task["name"]: task["command"] for task in json.loads(ok(cli("list", "--json")).stdout)}


def test_a_reload_after_another_process_synced_the_store_starts_from_what_that_process_wrote(
    project: ProjectDir, cli: Cli, tmp_path: Path
) -> None:
    # The daemon reloads by difference from what its own last sync left; another `runner sync`
    # on the same store must make it start from the store again.
    class OtherCheckout(Cli):
        def argv(self, *args: str) -> list[str]:
            return super().argv("--db", str(project.db), *args)

    other = OtherCheckout(ProjectDir(tmp_path / "other"))
    try:
        assert reload_after_another_sync(project, cli, other) == {"a": "echo a", "b": "echo b2"}
    finally:
        other.cleanup()


def test_the_same_on_postgresql(project: ProjectDir, tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    cli, other = PgCli(project, pg_url), PgCli(ProjectDir(tmp_path / "other"), pg_url)
    try:
        assert reload_after_another_sync(project, cli, other) == {"a": "echo a", "b": "echo b2"}
    finally:
        cli.cleanup()
        other.cleanup()
