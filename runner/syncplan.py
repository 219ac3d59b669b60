"""Declared state wins: plan how the stored tasks become what the files declare.

``plan`` is pure (declared + stored -> changes), so it is tested without files or a store;
``Store.sync_tasks`` applies a plan in one transaction, and ``sync.sync_project`` reads the
files, plans and applies. A plan that changes nothing is empty, and an empty plan writes
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.models import StoredTask, TaskSpec


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
    digests: Mapping[str, str] | None = None  # task-file digests to store, when they changed
    # Every task as the store holds it once the plan is applied (the store that applied it sets
    # this): what a daemon's engine takes instead of reading 10,000 tasks again after a reload.
    tasks: Mapping[str, StoredTask] | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.inserts or self.updates or self.removed or self.digests is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "updated": list(self.updated),
            "removed": list(self.removed),
            "disabled": list(self.disabled),
            "enabled": list(self.enabled),
        }


def plan(
    wanted: Mapping[str, Wanted],
    stored: Mapping[str, StoredTask],
    digests: Mapping[str, str] | None = None,
    stored_digests: Mapping[str, str] | None = None,
) -> SyncPlan:
    """The changes that make ``stored`` match ``wanted`` (and the stored file digests match
    ``digests``, when given).

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
        same = have.spec is want.spec  # a daemon's reload shares the unchanged ones
        definition_changed = have.removed or (not same and have.spec.definition_json != want.spec.definition_json)
        # A task that only moved (a line added above it) is rewritten but not reported.
        here, there = have.spec.source, want.spec.source
        moved = not same and (here.line != there.line or here.path != there.path)
        state_changed = was_enabled != want.enabled or (
            not want.enabled and have.disabled_reason != want.reason
        )
        if not (definition_changed or state_changed or moved):
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
        digests=dict(digests) if digests is not None and digests != stored_digests else None,
    )
