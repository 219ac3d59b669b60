"""The daemon's reload: the task files validated and synced at start and whenever they change,
the plugins imported afresh when one of them does.

Invalid files are logged and change nothing: the last good definitions keep running. The watch
follows ``tasks.d/`` and ``plugins/`` (directories, never single files, so an editor's
save-by-rename or a ``git checkout`` is seen) and notices when either is replaced.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from runner import log, registry
from runner.daemon.housekeeping import store_trouble
from runner.errors import ProjectError, StoreError
from runner.models import StoredTask
from runner.revision import Revision, project_revision
from runner.spec import ParseCache, load_tasks
from runner.store import Store
from runner.sync import sync_project

REWATCH_EVERY = 1.0
"""Seconds between checks of which directories tasks.d/ and plugins/ lead to: a symlink swapped
to a new release changes no file in the watched ones, so no event reports it."""


@dataclass
class SyncState:
    """How the last syncs of the task files went, for health checks and metrics."""

    last_ok_at: float | None = None
    last_error: str | None = None  # of the last sync, None when it succeeded
    errors: int = 0  # syncs that failed since the daemon started
    problems: tuple[str, ...] = ()  # of the last sync, each "path:line:col: what" (the first 20)
    last_failed_at: float | None = None


Apply = Callable[[Revision, Mapping[str, StoredTask] | None], Awaitable[None]]
"""What makes a sync live: the engine takes the tasks as synced, the scheduler reschedules."""


class Reloader:
    """Sync ``root``'s files into ``store``, now and on every change, until ``stopping`` is set."""

    def __init__(self, root: Path, store: Store, stopping: anyio.Event) -> None:
        self.root = root
        self.store = store
        self.stopping = stopping
        self.sync_state = SyncState()
        self.revision: Revision | None = None  # of the files last synced
        self.apply: Apply | None = None  # None until the engine runs: the first sync is before
        self._parsed: ParseCache = {}  # task files as last read: a reload parses only changed ones
        self._read_from: dict[Path, tuple[int, int] | None] = {}  # the directories last read
        self._read_digest = ""  # the files' digest as the last sync, good or not, began to read them
        self._reloading = anyio.Lock()

    async def watch(self) -> None:
        """Reload on changes under ``tasks.d/`` and ``plugins/``, and when either directory is
        replaced (a symlink swapped to a new release, a directory renamed over it) or appears.

        The watch follows the directories it started on: a swap is seen only by checking once a
        second which directory each path leads to, and the watch then starts again on the new one.
        """
        from watchfiles import awatch  # imported only when watching (not with --no-watch)

        # What may have changed unseen, looked at once each watch is in place: at first, anything
        # since the first sync read the files; later, the directories that were replaced.
        moved = {self.root / "tasks.d", self.root / "plugins"}
        while True:
            seen = self._read_from  # not what is there now: what the last sync read
            rewatch = anyio.Event()  # set when a directory is replaced, or the daemon stops
            async with anyio.create_task_group() as group:
                group.start_soon(self._notice_replaced, seen, rewatch)
                if moved:
                    # It looks once the new watch is in place (awatch sets it up before its first
                    # wait), so nothing changed after the read goes unseen; and reads only if
                    # the files are not the ones last read (an event may have had them read).
                    group.start_soon(functools.partial(self._reload, moved, unless_read=True))
                watched = [place for place in seen if _identity(place) is not None]
                if watched:
                    # The watcher waits in a thread that a cancel cannot interrupt; the event can.
                    # The generator is closed here, not by asyncio's finalizer in a task of its own.
                    watcher = awatch(*watched, watch_filter=_relevant, debounce=100, step=20, stop_event=rewatch)
                    async with contextlib.aclosing(watcher):
                        async for changes in watcher:
                            await self._reload({Path(path) for _, path in changes})
                await rewatch.wait()
            if self.stopping.is_set():
                return
            moved = {place for place, identity in seen.items() if _identity(place) != identity}

    async def _notice_replaced(self, seen: dict[Path, tuple[int, int] | None], rewatch: anyio.Event) -> None:
        while not self.stopping.is_set():
            with anyio.move_on_after(REWATCH_EVERY):
                await self.stopping.wait()
            if any(_identity(place) != identity for place, identity in seen.items()):
                break
        rewatch.set()

    async def _reload(self, changed: set[Path], *, unless_read: bool = False) -> None:
        """Sync ``changed``; with ``unless_read``, only if the files are not the ones last read."""
        async with self._reloading:
            if unless_read:
                now = await anyio.to_thread.run_sync(project_revision, self.root)
                if now.digest == self._read_digest:
                    return
            while True:
                try:
                    await self.sync(changed)
                    return
                except StoreError as exc:
                    await store_trouble(exc)

    async def sync(self, changed: Iterable[Path] | None) -> None:
        """Validate and sync the files (``changed``: what changed, None at start); on success,
        make it live. Invalid files are logged and change nothing: the last good state runs on."""
        started = time.monotonic()
        self._read_from = {place: _identity(place) for place in (self.root / "tasks.d", self.root / "plugins")}
        # Before the read: a change during it then shows as a revision other than the files',
        # and is read again (on the watch's event, or when a watch begins), never taken as read.
        revision = await anyio.to_thread.run_sync(project_revision, self.root)
        self._read_digest = revision.digest
        declared = await anyio.to_thread.run_sync(load_tasks, self.root, self._parsed)
        plugins = self.root / "plugins"
        if changed is not None and any(p.suffix == ".py" or p == plugins or plugins in p.parents for p in changed):
            # At once, with no await between: a run that starts now finds its callable.
            registry.reload_plugins()
            registry.import_plugins(self.root)
        if changed is None:
            # The first sync reads the stored tasks: let them share the parsed specs (one copy
            # of each, for the parse cache, the store's and the engine's tasks).
            self.store.remember_specs(declared.specs.values())
        try:
            plan = await sync_project(self.root, self.store, declared=declared)
        except ProjectError as exc:
            for problem in exc.problems:
                log.logger.error(
                    str(problem),
                    extra={"event": "invalid_task_file", "path": problem.path, "line": problem.line, "col": problem.col},
                )
            log.logger.error(
                f"{len(exc.problems)} problem(s) in the task files; the last good definitions keep running",
                extra={"event": "reload_failed", "problems": len(exc.problems)},
            )
            self.sync_state.errors += 1
            self.sync_state.problems = tuple(str(problem) for problem in exc.problems[:20])
            self.sync_state.last_error = "; ".join(self.sync_state.problems)
            self.sync_state.last_failed_at = time.time()
            return
        self.sync_state.last_ok_at, self.sync_state.last_error, self.sync_state.problems = time.time(), None, ()
        # Those the next full read may find (after another writer's sync): the rest are known.
        self.store.remember_specs(wanted.spec for wanted in (*plan.inserts, *plan.updates))
        self.revision = revision
        if self.apply is None:
            return
        await self.apply(self.revision, plan.tasks)
        changes = {k: v for k, v in plan.to_json().items() if v}
        log.logger.info(
            f"reloaded in {time.monotonic() - started:.3f}s: "
            + ("; ".join(f"{k} {', '.join(v)}" for k, v in changes.items()) or "no task changed"),
            extra={"event": "reloaded", **changes},
        )


def _relevant(change: Any, path: str) -> bool:
    """A task file or plugin module; or what may hold some: a directory or symlink that appears,
    anything that goes (a directory moved out is reported as deleted, like a file)."""
    from watchfiles import Change  # imported only when watching (not with --no-watch)

    if path.endswith((".yaml", ".yml", ".py")):
        return True
    name = os.path.basename(path)
    if name.startswith(".") or "__pycache__" in Path(path).parts:
        return False
    return change == Change.deleted or os.path.isdir(path) or os.path.islink(path)


def _identity(directory: Path) -> tuple[int, int] | None:
    """Which directory ``directory`` leads to now (device and inode); None if none."""
    try:
        info = os.stat(directory)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None
