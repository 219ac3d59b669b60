"""The revision of a project: which task files and plugins a run ran with.

``digest`` is a hash of the bytes of every task file (tasks.d/**/*.yaml, *.yml) and plugin
module (plugins/**/*.py) with their paths: equal digests mean equal definitions and code, on
any machine, with or without git. ``commit`` is the git commit checked out, when the project
is in a git work tree (read from .git, without running git), to find the change in history.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from runner.files import read_regular


@dataclass(frozen=True)
class Revision:
    digest: str  # 16 hex digits
    commit: str | None = None

    def __str__(self) -> str:
        return f"{self.digest} (git {self.commit[:12]})" if self.commit else self.digest


def project_revision(root: Path) -> Revision:
    digest = hashlib.sha256()
    for path in _files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        try:
            content = read_regular(path)  # never a FIFO's wait nor a device's endless bytes
        except OSError as exc:
            content = f"<unreadable: {exc.strerror or type(exc).__name__}>".encode()
        digest.update(content + b"\0")
    return Revision(digest.hexdigest()[:16], git_commit(root))


def _files(root: Path) -> list[Path]:
    found: list[Path] = []
    for top, suffixes in (("tasks.d", (".yaml", ".yml")), ("plugins", (".py",))):
        for directory, dirs, names in os.walk(root / top):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
            found.extend(Path(directory, name) for name in names if name.endswith(suffixes))
    return sorted(found)


def git_commit(root: Path) -> str | None:
    """The commit checked out in the git work tree holding ``root``; None outside one."""
    for directory in (root, *root.parents):
        dot_git = directory / ".git"
        if dot_git.is_dir():
            return _head(dot_git, dot_git)
        if dot_git.is_file():  # a linked work tree: "gitdir: <path>"
            text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
            if not text.startswith("gitdir:"):
                return None
            git_dir = (directory / text[len("gitdir:") :].strip()).resolve()
            common = git_dir / "commondir"
            shared = (git_dir / common.read_text().strip()).resolve() if common.is_file() else git_dir
            return _head(git_dir, shared)
    return None


def _head(git_dir: Path, shared: Path) -> str | None:
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head or None  # detached
    ref = head[len("ref:") :].strip()
    for place in (git_dir, shared):
        try:
            return (place / ref).read_text(encoding="utf-8").strip() or None
        except OSError:
            continue
    try:
        packed = (shared / "packed-refs").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in packed.splitlines():
        commit, _, name = line.partition(" ")
        if name == ref:
            return commit
    return None  # a branch with no commit yet
