"""Declared state wins: plan how the stored tasks become what the files declare.

``plan`` is pure (declared + stored -> changes); ``Store.sync_tasks`` applies a plan in one
transaction. A plan that changes nothing is empty, and an empty plan writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import log
from runner.errors import ProjectError
from runner.models import StoredTask, TaskSpec

if TYPE_CHECKING:
    from runner.store import Store


@dataclass(frozen=True)
class Wanted:
    """A declared task and the state it should be stored in."""

    spec: TaskSpec
    enabled: bool
    reason: str | None  # why it is disabled: "declared", "orphaned: ...", "invalid: ..."


@dataclass(frozen=True)
class SyncPlan:
    """What a sync changes, by name (for people and ``--json``) and as rows (for the store)."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    enabled: tuple[str, ...] = ()
    inserts: tuple[Wanted, ...] = ()
    updates: tuple[Wanted, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.inserts or self.updates or self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "updated": list(self.updated),
            "removed": list(self.removed),
            "disabled": list(self.disabled),
            "enabled": list(self.enabled),
        }


def plan(wanted: Mapping[str, Wanted], stored: Mapping[str, StoredTask]) -> SyncPlan:
    """The changes that make ``stored`` match ``wanted``.

    A task that comes back after being removed counts as added. A task whose disabled reason
    changes (say, a different import error) is listed as disabled again.
    """
    added, updated, disabled, enabled = [], [], [], []
    inserts, updates = [], []
    for name in sorted(wanted):
        want = wanted[name]
        have = stored.get(name)
        if have is None:
            inserts.append(want)
            added.append(name)
            if not want.enabled:
                disabled.append(name)
            continue
        was_enabled = have.enabled and not have.removed
        definition_changed = (
            have.removed
            or have.spec.definition_json() != want.spec.definition_json()
            or str(have.spec.source) != str(want.spec.source)
        )
        state_changed = was_enabled != want.enabled or (
            not want.enabled and have.disabled_reason != want.reason
        )
        if not (definition_changed or state_changed):
            continue
        updates.append(want)
        if have.removed:
            added.append(name)
        elif definition_changed:
            updated.append(name)
        if not want.enabled and (state_changed or have.removed):
            disabled.append(name)
        elif want.enabled and not was_enabled and not have.removed:
            enabled.append(name)
    removed = tuple(name for name in sorted(stored) if name not in wanted and not stored[name].removed)
    return SyncPlan(
        added=tuple(added),
        updated=tuple(updated),
        removed=removed,
        disabled=tuple(disabled),
        enabled=tuple(enabled),
        inserts=tuple(inserts),
        updates=tuple(updates),
    )


async def sync_project(root: Path, store: Store, *, dry_run: bool = False) -> SyncPlan:
    """Validate ``root``'s task files and reconcile ``store`` with them (``dry_run``: only plan).

    Invalid files raise ProjectError and leave the store untouched. Python tasks whose callable
    does not resolve or fit are stored disabled, each with a structured warning.
    """
    from runner.project import load_project

    project = load_project(root)
    if project.problems:
        raise ProjectError(project.problems)
    for problem in project.plugin_problems:
        # str(problem) would say "warning: " a second time after the log's own level
        where = f"{problem.path}:{problem.line}:{problem.col}"
        log.warn("plugin_import_failed", f"{where}: {problem.message}", path=problem.path, error=problem.message)
    for finding in project.findings.values():
        event = "task_orphaned" if finding.reason.startswith("orphaned") else "task_invalid"
        log.warn(
            event,
            f"task {finding.task!r} ({project.declared.specs[finding.task].source}) is disabled: "
            f"{finding.reason} (callable {finding.callable!r})",
            task=finding.task,
            callable=finding.callable,
            error=finding.reason.partition(": ")[2],
        )
    wanted = project.wanted()
    if dry_run:
        return plan(wanted, await store.tasks())
    return await store.sync_tasks(lambda stored: plan(wanted, stored))
