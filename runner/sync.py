"""Sync a project into a store: read and check its files (``project.py``), plan the changes
(``syncplan.py``, pure), and apply them in one transaction (``Store.sync_tasks``)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from runner import log
from runner._version import __version__
from runner.errors import ProjectError
from runner.models import StoredTask, TaskType
from runner.project import Project, load_project
from runner.schema import load_schema
from runner.spec import Declared, fingerprint, gc_paused, load_tasks
from runner.syncplan import SyncPlan, plan

if TYPE_CHECKING:
    from runner.store import Store


async def sync_project(
    root: Path,
    store: Store,
    *,
    dry_run: bool = False,
    declared: Declared | None = None,
    warn_unchanged: bool = True,
) -> SyncPlan:
    """Validate ``root``'s task files and reconcile ``store`` with them (``dry_run``: only plan).

    Invalid files raise ProjectError and leave the store untouched. Python tasks whose callable
    does not resolve or fit are stored disabled, each with a structured warning; with
    ``warn_unchanged`` false (``runner run``), only the tasks this sync disables are warned
    about, and plugins that fail to import only when it disables one: what an earlier sync said
    is not said again on every run of another task. When no task file changed since the last
    sync (same paths, same SHA-256), the stored definitions are used instead of parsing and
    validating the files again; callables are checked every time. Otherwise the plan under the
    write lock covers the tasks of the files whose digest is not the stored one, and the python
    tasks: the others are as the files say already. ``declared``: the files, read already (by
    the daemon, in a thread).
    """
    with gc_paused():
        return await _sync_project(
            root, store, dry_run=dry_run, declared=declared, warn_unchanged=warn_unchanged
        )


async def _sync_project(
    root: Path, store: Store, *, dry_run: bool, declared: Declared | None, warn_unchanged: bool
) -> SyncPlan:
    # Files read already (the daemon's, after a change) have changed: no first plan, below.
    changed = declared is not None and not dry_run
    stored_digests = {} if changed else await store.task_files()
    digests = fingerprint(root) if declared is None else None
    if digests is not None:
        digests[RUNNER_KEY] = _runner_mark()
    scope: set[str] | None = None  # when set, only these tasks can change
    if digests is not None and digests == stored_digests:
        # Same files, same runner: only python tasks can change (their callables may have).
        stored = await store.tasks(include_removed=False, task_type=TaskType.PYTHON)
        scope = set(stored)
        declared = Declared({name: task.spec for name, task in stored.items()}, {}, {}, [])
    else:
        stored = {} if changed else await store.tasks()
        if declared is None:
            declared = load_tasks(root)
        # No file at all is a state too: its digests replace those of the files it removed, or
        # those files, put back as they were, would count as synced (and their tasks stay removed).
        complete = bool(declared.digests) or not declared.files
        digests = {**declared.digests, RUNNER_KEY: _runner_mark()} if complete else None
    project = load_project(root, declared)
    if project.problems:
        raise ProjectError(project.problems)
    wanted = functools.cache(project.wanted)  # every task's: made once, if ever

    def planner(
        stored: Mapping[str, StoredTask], stored_digests: Mapping[str, str], *, by_difference: bool = True
    ) -> SyncPlan:
        """The plan; ``by_difference``: ``stored`` and ``stored_digests`` were read together,
        in one transaction, so the digests say which files the stored tasks came from."""
        if scope is not None:
            stored = {name: task for name, task in stored.items() if name in scope}
        elif by_difference and digests is not None and digests.get(RUNNER_KEY) == stored_digests.get(RUNNER_KEY):
            # A file whose stored digest is its digest now holds what it held when this runner
            # last synced it, and every sync makes all tasks what their files say: only the tasks
            # of the other files can change, and python tasks (their callables may have). At
            # 10,000 tasks, a plan over all of them cost 40 ms of a one-file reload.
            edited = {path for path in digests.keys() | stored_digests.keys() if digests.get(path) != stored_digests.get(path)}
            # A stored task of an edited file is declared in an edited file still, or nowhere:
            # had an unedited file declared it too, the last sync would have failed on it.
            names = {*project.python, *project.declared.declared_in(edited), *(stored.keys() - project.declared.specs.keys())}
            some = {name: stored[name] for name in names if name in stored}
            return plan(project.wanted(names), some, digests, stored_digests)
        return plan(wanted(), stored, digests, stored_digests)

    # Plan from what was read; only a plan that changes something is made again under the
    # write lock and applied, so a sync with nothing to change writes nothing. The tasks and
    # digests read here were read apart: that first plan is over every task.
    if changed:
        applied = await store.sync_tasks(planner)
    else:
        applied = planner(stored, stored_digests, by_difference=False)
        if not (dry_run or applied.is_empty):
            applied = await store.sync_tasks(planner)
    _warn(project, None if warn_unchanged else set(applied.disabled))
    return applied


def _warn(project: Project, only: set[str] | None) -> None:
    """Log the project's plugin import failures and disabled python tasks (``only``: just
    these tasks, and the failures only if there are any)."""
    findings = [f for f in project.findings.values() if only is None or f.task in only]
    if only is None or findings:
        for problem in project.plugin_problems:
            # str(problem) would say "warning: " a second time after the log's own level
            where = f"{problem.path}:{problem.line}:{problem.col}"
            log.warn("plugin_import_failed", f"{where}: {problem.message}", path=problem.path, error=problem.message)
    for finding in findings:
        event = "task_orphaned" if finding.reason.startswith("orphaned") else "task_invalid"
        log.warn(
            event,
            f"task {finding.task!r} ({project.declared.specs[finding.task].source}) is disabled: "
            f"{finding.reason} (callable {finding.callable!r})",
            task=finding.task,
            callable=finding.callable,
            error=finding.reason.partition(": ")[2],
        )


RUNNER_KEY = "<runner>"
"""Stored with the file digests: definitions stored by another runner version are not reused."""


def _runner_mark() -> str:
    schema = json.dumps(load_schema(), sort_keys=True).encode()
    return f"{__version__} {hashlib.sha256(schema).hexdigest()[:16]}"
