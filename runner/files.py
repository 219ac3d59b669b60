"""Reading a project's files safely: only regular files, at most a cap, and where task files are.

A FIFO opened for reading waits for a writer, and a device such as /dev/zero never ends; a task
file is read whole before it is parsed, so one past the cap is refused unread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

TASKS_DIR = "tasks.d"
MAX_FILE_BYTES = 50 * 1024 * 1024


class NotRegularFile(OSError):
    """A path that is not a regular file (a FIFO, a device, a directory), left unopened or unread."""

    def __init__(self, path: Path, mode: int) -> None:
        kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                 stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}
        self.kind = kinds.get(stat.S_IFMT(mode), "something else")
        super().__init__(f"{path}: not a regular file ({self.kind})")


class FileTooLarge(OSError):
    """A file past the cap; ``size`` says how large, as far as it was read, ``cap`` in MiB."""

    def __init__(self, path: Path, size: str) -> None:
        self.size = size
        self.cap = MAX_FILE_BYTES // 2**20
        super().__init__(f"{path}: file is {size}; the cap is {self.cap} MiB")


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), reading at most the cap.

    Anything else is refused before it is read: opening a FIFO waits for a writer, and a device
    such as /dev/zero never ends. The ``stat`` keeps such paths unopened; the ``fstat`` of the
    open file is what counts, should the path be replaced in between.
    """
    if not stat.S_ISREG(mode := os.stat(path).st_mode):
        raise NotRegularFile(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(path, info.st_mode)
        if info.st_size > MAX_FILE_BYTES:
            raise FileTooLarge(path, f"{info.st_size / 1e6:.1f} MB")
        chunks: list[bytes] = []
        size = 0
        while True:  # till the end: the file may have grown since the fstat
            chunk = os.read(fd, min(max(info.st_size + 1 - size, 1 << 16), MAX_FILE_BYTES + 1 - size))
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise FileTooLarge(path, f"more than {MAX_FILE_BYTES // 2**20} MiB")
            chunks.append(chunk)
    finally:
        os.close(fd)


def list_task_files(project: Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` under ``tasks.d``, any depth, in sorted path order; and what
    may hide some: a directory that cannot be listed, a symlink to nothing (whatever its name),
    for ``read_task_file`` to report, so their tasks are not taken for removed.

    Directory symlinks are followed once each, so a symlink loop ends the walk instead of looping.
    """
    root = project / TASKS_DIR
    found: list[Path] = []
    seen_dirs = {os.path.realpath(root)}
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except OSError:
            found.append(Path(directory))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real not in seen_dirs:
                    seen_dirs.add(real)
                    pending.append(entry.path)
            elif entry.name.endswith((".yaml", ".yml")) or (entry.is_symlink() and not os.path.exists(entry.path)):
                found.append(Path(entry.path))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
