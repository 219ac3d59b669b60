"""The daemon's reload at start, in process with the real file watch: a task file changed after
the first sync read the files but before the watch began (no event will ever report it) is
synced once the watch is in place. (That unchanged files are not synced again at start,
tests/acceptance/test_daemon_reload.py checks: its daemons log only the reloads of their edits.)"""

from __future__ import annotations

import anyio
import pytest
from conftest import ProjectDir

from runner.daemon.reload import Reloader
from runner.revision import Revision, project_revision
from runner.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

ONE = "version: 1\ntasks:\n  one: {command: 'true'}\n"
TWO = "version: 1\ntasks:\n  one: {command: 'true'}\n  two: {command: 'true'}\n"


async def watch_until(reloader: Reloader, stopping: anyio.Event, done: anyio.Event) -> None:
    """Watch until ``done``, then stop the watch as the daemon does and wait for it to end."""
    async with anyio.create_task_group() as group:
        group.start_soon(reloader.watch)
        with anyio.fail_after(5):
            await done.wait()
        stopping.set()


async def test_a_change_before_the_watch_began_is_synced_once_it_has(project: ProjectDir, store: Store) -> None:
    project.tasks("a.yaml", ONE)
    stopping = anyio.Event()
    reloader = Reloader(project.root, store, stopping)
    await reloader.sync(None)
    applied: list[Revision] = []
    synced = anyio.Event()

    async def apply(revision: Revision, _tasks: object) -> None:
        applied.append(revision)
        synced.set()

    reloader.apply = apply
    project.tasks("a.yaml", TWO)  # read by nobody yet, and no watch to see it

    await watch_until(reloader, stopping, synced)
    assert set(await store.tasks(include_removed=False)) == {"one", "two"}
    assert [r.digest for r in applied] == [project_revision(project.root).digest]
