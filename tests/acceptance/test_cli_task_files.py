"""Task files that are not what they seem, through the real CLI: `validate` and `sync` exit 2
with the place and the reason, and the store keeps every task it had.

A FIFO would make a reader wait for a writer forever, so every command here has a short
timeout: a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import ProjectDir, RunnerCli, ok

pytestmark = pytest.mark.timeout(60)

KEEP = "version: 1\ntasks:\n  keep:\n    command: echo keep\n"
SUB = "version: 1\ntasks:\n  nested:\n    command: echo nested\n"


@pytest.fixture
def synced(project: ProjectDir, runner_cli: RunnerCli) -> str:
    """A project synced with two tasks, one in a subdirectory; what `runner list --json` says."""
    project.tasks("keep.yaml", KEEP)
    project.tasks("sub/nested.yaml", SUB)
    assert ok(runner_cli("sync")).stdout == "added: keep, nested\n"
    return ok(runner_cli("list", "--json")).stdout


def refused(runner_cli: RunnerCli, synced: str, *expected: str) -> None:
    """`validate` and `sync` both exit 2 naming each of ``expected``, and the store is as it was."""
    for command in ("validate", "sync"):
        result = runner_cli(command, timeout=10)
        assert result.returncode == 2, result.stdout + result.stderr
        for line in expected:
            assert line in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    assert ok(runner_cli("list", "--json")).stdout == synced
    assert [t["name"] for t in json.loads(synced)] == ["keep", "nested"]


def test_entries_that_are_not_regular_files_or_lead_nowhere_are_errors_not_removals(
    project: ProjectDir, runner_cli: RunnerCli, synced: str
) -> None:
    tasks_d = project.root / "tasks.d"
    os.mkfifo(tasks_d / "fifo.yaml")
    os.symlink("/dev/zero", tasks_d / "zero.yaml")
    # a deploy moved what these point at: the tasks behind them must not be taken for removed
    (tasks_d / "sub").rename(project.root / "release-1")
    os.symlink("../release-0", tasks_d / "sub")
    os.symlink("../moved.yaml", tasks_d / "gone.yaml")
    os.symlink("loop", tasks_d / "loop")
    refused(
        runner_cli,
        synced,
        "tasks.d/fifo.yaml:1:1: not a regular file (a FIFO); only regular files are read as task files",
        "tasks.d/zero.yaml:1:1: not a regular file (a character device)",
        "tasks.d/sub:1:1: cannot read: a symlink to '../release-0', which does not exist; fix or remove the link",
        "tasks.d/gone.yaml:1:1: cannot read: a symlink to '../moved.yaml', which does not exist",
        "tasks.d/loop:1:1: cannot read: Too many levels of symbolic links",
    )


def test_an_alias_bomb_is_refused_by_validate_and_by_sync(
    project: ProjectDir, runner_cli: RunnerCli, synced: str
) -> None:
    # 10 KB on disk that stands for 10 GB: `validate` passed it, then `sync` ran out of memory
    lines = ["version: 1", "tasks:", "  bomb:", "    command: echo", "    parameters:", f'      l0: &l0 "{"x" * 10_000}"']
    lines += [f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 7)]
    project.tasks("bomb.yaml", "\n".join(lines) + "\n")
    refused(
        runner_cli,
        synced,
        "tasks.d/bomb.yaml:10:7: task 'bomb': parameters.l4.4: aliases expand this file to more than 50 MiB of text",
    )


def test_tags_on_lists_and_mappings_are_errors(project: ProjectDir, runner_cli: RunnerCli) -> None:
    project.tasks(
        "tagged.yaml",
        "version: 1\ntasks:\n  tagged:\n    command: echo\n    tags: !foo [a]\n"
        "    parameters: {x: !!python/object/apply:os.system [id]}\n",
    )
    result = runner_cli("validate")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tasks.d/tagged.yaml:5:11: task 'tagged': tags: unsupported YAML tag !foo; write a plain value",
        "tasks.d/tagged.yaml:6:21: task 'tagged': parameters.x: "
        "unsupported YAML tag !!python/object/apply:os.system; write a plain value",
    ]
