"""Which files are read from tasks.d/, and how much of them: regular files only, at most the
cap, what aliases expand to capped, explicit tags refused, and nothing skipped in silence.

Real files, FIFOs and symlinks under ``tmp_path``; only a directory that cannot be listed is
injected (the tests run as root, whom permissions do not stop).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ProjectDir

from runner import files as files_module
from runner import taskfile as taskfile_module
from runner.files import read_regular
from runner.revision import project_revision
from runner.spec import fingerprint, load_tasks

# A FIFO opened for reading waits for a writer: a regression hangs, and must fail fast instead.
pytestmark = pytest.mark.timeout(10)

ONE_TASK = "version: 1\ntasks:\n  keep:\n    command: echo\n"


def problems(project: ProjectDir) -> list[str]:
    return [str(p) for p in load_tasks(project.root).problems]


# -- only regular files -------------------------------------------------------------------------


def test_a_fifo_named_like_a_task_file_is_refused_unopened(project: ProjectDir) -> None:
    project.tasks("keep.yaml", ONE_TASK)
    os.mkfifo(project.root / "tasks.d" / "x.yaml")
    assert problems(project) == [
        "tasks.d/x.yaml:1:1: not a regular file (a FIFO); only regular files are read as task files"
    ]
    assert fingerprint(project.root) is None, "sync's quick check must not read it either"


def test_a_symlink_to_a_device_is_refused(project: ProjectDir) -> None:
    os.symlink("/dev/zero", project.root / "tasks.d" / "zero.yaml")
    assert problems(project) == [
        "tasks.d/zero.yaml:1:1: not a regular file (a character device); only regular files are read as task files"
    ]


def test_a_symlink_to_a_regular_file_outside_the_project_is_read(project: ProjectDir, tmp_path: Path) -> None:
    shared = tmp_path / "shared.yaml"
    shared.write_text(ONE_TASK)
    os.symlink(shared, project.root / "tasks.d" / "shared.yaml")
    declared = load_tasks(project.root)
    assert declared.problems == []
    assert str(declared.specs["keep"].source) == "tasks.d/shared.yaml:3"


def test_a_file_swapped_for_a_fifo_after_the_stat_is_refused_by_the_fstat(
    project: ProjectDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = project.tasks("keep.yaml", ONE_TASK)
    real_stat = os.stat

    def stat_then_swap(target: str | Path, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(target)
        if Path(target) == path:
            path.unlink()
            os.mkfifo(path)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    with pytest.raises(files_module.NotRegularFile, match=r"\(a FIFO\)"):
        read_regular(path)


def test_at_most_the_cap_is_read_from_a_file_larger_than_it_says(
    project: ProjectDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /proc files say they are empty; this one is longer than the cap set here
    monkeypatch.setattr(files_module, "MAX_FILE_BYTES", 64)
    os.symlink("/proc/self/mountinfo", project.root / "tasks.d" / "proc.yaml")
    reads: list[int] = []
    real_read = os.read

    def counted(fd: int, n: int) -> bytes:
        chunk = real_read(fd, n)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(os, "read", counted)
    assert problems(project) == ["tasks.d/proc.yaml:1:1: file is more than 0 MiB; task files are capped at 0 MiB"]
    assert sum(reads) == 65


# -- nothing skipped in silence -----------------------------------------------------------------


def test_a_dangling_file_symlink_is_an_error(project: ProjectDir) -> None:
    project.tasks("keep.yaml", ONE_TASK)
    os.symlink("missing.yaml", project.root / "tasks.d" / "old.yaml")
    assert problems(project) == [
        "tasks.d/old.yaml:1:1: cannot read: a symlink to 'missing.yaml', which does not exist; fix or remove the link"
    ]


def test_a_dangling_directory_symlink_is_an_error_whatever_its_name(project: ProjectDir) -> None:
    project.tasks("keep.yaml", ONE_TASK)
    os.symlink("/nonexistent/release", project.root / "tasks.d" / "reports")
    os.symlink("/nonexistent/hidden", project.root / "tasks.d" / ".hidden")  # hidden names stay skipped
    assert problems(project) == [
        "tasks.d/reports:1:1: cannot read: a symlink to '/nonexistent/release', which does not exist; "
        "fix or remove the link"
    ]


def test_a_directory_that_cannot_be_listed_is_an_error(project: ProjectDir, monkeypatch: pytest.MonkeyPatch) -> None:
    project.tasks("keep.yaml", ONE_TASK)
    project.tasks("sub/a.yaml", "version: 1\ntasks:\n  a:\n    command: echo\n")
    locked = project.root / "tasks.d" / "sub"
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    declared = load_tasks(project.root)
    assert [str(p) for p in declared.problems] == [
        "tasks.d/sub:1:1: cannot read: Permission denied; the task files in it would be missed"
    ]
    assert fingerprint(project.root) is None


def test_a_symlink_loop_named_like_a_directory_is_an_error(project: ProjectDir) -> None:
    os.symlink("loop", project.root / "tasks.d" / "loop")
    [problem] = problems(project)
    assert problem.startswith("tasks.d/loop:1:1: cannot read: ")
    assert "symbolic links" in problem


# -- what aliases expand to ---------------------------------------------------------------------


def bomb(levels: int, leaf: int) -> str:
    """A task whose parameters nest ``levels`` lists of 10 aliases to a ``leaf``-character string."""
    lines = ["version: 1", "tasks:", "  t:", "    command: echo", "    parameters:", f'      l0: &l0 "{"x" * leaf}"']
    lines += [f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_aliases_that_expand_past_the_cap_are_refused_where_they_are_used(project: ProjectDir) -> None:
    # 10 KB on disk, 10 GB written out: validating it shares the strings, storing it does not
    text = bomb(6, 10_000)
    assert len(text) < 11_000
    project.tasks("bomb.yaml", text)
    # with l0-l3 (11 MB), the 5th *l3 in l4 (10 MB each) passes 50 MiB
    assert problems(project) == [
        "tasks.d/bomb.yaml:10:7: task 't': parameters.l4.4: aliases expand this file to more than 50 MiB "
        "of text; write the values out, or use fewer aliases"
    ]


def test_keys_reached_through_aliases_count_too(project: ProjectDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taskfile_module, "MAX_EXPANDED_CHARS", 1000)
    keys = ", ".join(f"k{'x' * 40}{i}: 1" for i in range(10))
    project.tasks(
        "keys.yaml",
        f"version: 1\ntasks:\n  t:\n    command: echo\n    parameters:\n      a: &a {{{keys}}}\n      b: [*a, *a, *a]\n",
    )
    [problem] = problems(project)
    assert problem.startswith("tasks.d/keys.yaml:7:7: task 't': parameters.b.1: aliases expand this file")


def test_aliases_within_the_caps_still_work(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          a:
            command: echo a
            env: &env {LC_ALL: C, TZ: UTC}
            parameters: &p {rows: [1, 2, 3]}
          b:
            command: echo b
            env: *env
            parameters: {<<: *p, more: *p}
        """,
    )
    declared = load_tasks(project.root)
    assert declared.problems == []
    assert declared.specs["b"].parameters == {"rows": [1, 2, 3], "more": {"rows": [1, 2, 3]}}
    assert declared.specs["b"].env == {"LC_ALL": "C", "TZ": "UTC"}


# -- tags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "where", "tag"),
    [
        ("!foo [a]", "6:10", "!foo"),
        ("!foo {a: 1}", "6:10", "!foo"),
        ("!!python/object/apply:os.system [ls]", "6:10", "!!python/object/apply:os.system"),
        ("!!python/name:os.system ''", "6:10", "!!python/name:os.system"),
        ("!!binary aGk=", "6:10", "!!binary"),
        ("!!set {a, b}", "6:10", "!!set"),
        ("!!omap [a: 1]", "6:10", "!!omap"),
        ("!!seq {a: 1}", "6:10", "!!seq"),
        ("[a, !include other.yaml]", "6:14", "!include"),
    ],
)
def test_explicit_tags_are_errors_on_every_kind_of_node(project: ProjectDir, value: str, where: str, tag: str) -> None:
    project.tasks("a.yaml", f"version: 1\ntasks:\n  t:\n    command: echo\n    parameters:\n      x: {value}\n")
    found = problems(project)
    assert any(p.startswith(f"tasks.d/a.yaml:{where}: task 't': parameters.x") and
               p.endswith(f"unsupported YAML tag {tag}; write a plain value") for p in found), found


def test_standard_tags_that_mean_what_the_plain_value_means_are_allowed(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        "version: 1\ntasks:\n  t:\n    command: echo\n"
        "    parameters: !!map {a: !!str 5, b: !!seq [1], c: !!int '7', d: 2024-01-02}\n",
    )
    declared = load_tasks(project.root)
    assert declared.problems == []
    assert declared.specs["t"].parameters == {"a": "5", "b": [1], "c": 7, "d": "2024-01-02"}


def test_the_project_revision_reads_no_fifo_and_no_device(project: ProjectDir) -> None:
    # a worker takes the revision at start, before any task file is checked
    project.tasks("keep.yaml", ONE_TASK)
    before = project_revision(project.root).digest
    os.mkfifo(project.root / "tasks.d" / "fifo.yaml")
    os.symlink("/dev/zero", project.root / "tasks.d" / "zero.yaml")
    assert project_revision(project.root).digest != before
