"""The daemon's reload by difference, in process: each reload plans over the tasks of the files
that changed (and the python tasks) against what its own last sync left, and the engine takes
the changed tasks by name. After every edit, the store and the engine hold what a full sync of
the same files into a new store makes of them; and every run is still masked with every secret.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ProjectDir

from runner.daemon.reload import Reloader
from runner.engine import Engine
from runner.graph import upstream_order
from runner.models import StoredTask
from runner.store import Store, open_store
from runner.sync import sync_project

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20), pytest.mark.usefixtures("fresh_plugins")]

SECRET = "s3cr3t-by-name-Vq7"

PLUGIN = '''
def add(a: int, b: int) -> int:
    return a + b
'''


def shell(name: str, command: str, *, needs: str = "", extra: str = "") -> str:
    return f"  {name}:\n    command: {command}\n" + (f"    needs: [{needs}]\n" if needs else "") + extra


def tasks(*bodies: str) -> str:
    return "version: 1\ntasks:\n" + "".join(bodies)


def kept(found: dict[str, StoredTask]) -> dict[str, tuple[Any, ...]]:
    return {
        name: (t.spec.definition_json, t.spec.source.path, t.spec.source.line, t.enabled, t.disabled_reason)
        for name, t in found.items()
        if not t.removed
    }


async def full_sync(root: Path, db: Path) -> dict[str, tuple[Any, ...]]:
    async with open_store(db) as fresh:
        await sync_project(root, fresh)
        return kept(await fresh.tasks())


@contextlib.asynccontextmanager
async def reloading(project: ProjectDir, store: Store) -> AsyncIterator[tuple[Reloader, Engine]]:
    """A daemon's reloader, synced once, and an engine that takes each of its syncs, as the
    daemon's does."""
    reloader = Reloader(project.root, store, anyio.Event())
    await reloader.sync(None)
    async with Engine(store, project.root) as engine:
        async def apply(_revision: object, synced: Any) -> None:
            await engine.reload(synced)

        reloader.apply = apply
        yield reloader, engine


def edits(project: ProjectDir) -> list[tuple[str, Callable[[], object]]]:
    tasks_d = project.root / "tasks.d"
    return [
        ("edit one task", lambda: project.tasks("a.yaml", tasks(shell("a1", "echo a1-v2"), shell("a2", "echo a2")))),
        ("move a task to another file", lambda: (
            project.tasks("a.yaml", tasks(shell("a1", "echo a1-v2"))),
            project.tasks("b.yaml", tasks(shell("b1", "echo b1", needs="a1"), shell("a2", "echo a2"))),
        )),
        ("rename a task", lambda: project.tasks("c.yaml", tasks(shell("c9", "echo c")))),
        ("remove a file", lambda: (tasks_d / "c.yaml").unlink()),
        ("add a file that needs a task of an unchanged one", lambda: project.tasks(
            "d.yaml", tasks(shell("d1", "echo d", needs="b1"))
        )),
        ("disable a task", lambda: project.tasks(
            "d.yaml", tasks(shell("d1", "echo d", needs="b1", extra="    enabled: false\n"))
        )),
        ("break a plugin: its python task is disabled though no task file changed", lambda: project.plugin(
            "calc", "def plus(a: int, b: int) -> int:\n    return a + b\n"
        )),
        ("mend it", lambda: project.plugin("calc", PLUGIN)),
        ("bring the removed file back as it was", lambda: project.tasks("c.yaml", tasks(shell("c1", "echo c")))),
        ("empty tasks.d/", lambda: [path.unlink() for path in tasks_d.iterdir()]),
        ("put a file back as it was before", lambda: project.tasks("a.yaml", tasks(shell("a1", "echo a1-v2")))),
    ]


async def test_every_reload_leaves_the_store_and_the_engine_as_a_full_sync_would(
    project: ProjectDir, store: Store, tmp_path: Path
) -> None:
    project.tasks("a.yaml", tasks(shell("a1", "echo a1"), shell("a2", "echo a2")))
    project.tasks("b.yaml", tasks(shell("b1", "echo b1", needs="a1")))
    project.tasks("c.yaml", tasks(shell("c1", "echo c")))
    project.tasks("p.yaml", tasks("  p:\n    type: python\n    callable: plugins.calc:add\n    parameters: {a: 1, b: 2}\n"))
    project.plugin("calc", PLUGIN)
    async with reloading(project, store) as (reloader, engine):
        for i, (what, edit) in enumerate(edits(project)):
            edit()
            changed = {project.root / "plugins" / "calc.py"} if "plugin" in what or what == "mend it" else {project.root / "tasks.d"}
            await reloader.sync(changed)
            assert reloader.sync_state.last_error is None, what
            expected = await full_sync(project.root, tmp_path / f"fresh-{i}.db")
            assert kept(await store.tasks()) == expected, what
            assert kept(engine.tasks) == expected, what
            needs = {name: task.spec.needs for name, task in engine.tasks.items() if not task.removed}
            for name in [name for name, wanted in needs.items() if wanted and engine.tasks[name].enabled]:
                assert list(engine.workflow(name).nodes) == upstream_order(name, needs), what


async def test_a_reload_of_another_file_keeps_every_secret_masked_and_masks_a_new_one(
    project: ProjectDir, store: Store
) -> None:
    (project.root / "secrets").mkdir()
    (project.root / "secrets" / "s").write_text(SECRET + "\n")
    secret_env = "    env:\n      S: {from_file: secrets/s}\n"
    project.tasks("a.yaml", tasks(shell("holder", "'true'", extra=secret_env)))
    project.tasks("b.yaml", tasks(shell("leak", "cat secrets/s")))
    async with reloading(project, store) as (reloader, engine):
        assert (await engine.run("leak")).stdout == "***\n"
        project.tasks("b.yaml", tasks(shell("leak", "cat secrets/s && echo again")))
        await reloader.sync({project.root / "tasks.d" / "b.yaml"})
        assert (await engine.run("leak")).stdout == "***\nagain\n"  # holder's secret, unchanged, still masks

        (project.root / "secrets" / "t").write_text("an0ther-s3cr3t\n")
        project.tasks("b.yaml", tasks(shell("leak", "cat secrets/s secrets/t", extra="    env:\n      T: {from_file: secrets/t}\n")))
        await reloader.sync({project.root / "tasks.d" / "b.yaml"})
        assert (await engine.run("leak")).stdout == "***\n***\n"

        (project.root / "tasks.d" / "a.yaml").unlink()  # holder gone: its secret is no longer one
        await reloader.sync({project.root / "tasks.d" / "a.yaml"})
        assert (await engine.run("leak")).stdout == f"{SECRET}\n***\n"
