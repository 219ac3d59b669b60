"""The tasks the store knows, and the task files they were synced from."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runner.models import Source, StoredTask, TaskSpec, TaskType
from runner.store import _tables as t
from runner.store.connection import StoreBase
from runner.syncplan import SyncPlan

_DIGESTS_PER_STATEMENT = 500  # paths per DELETE ... IN: well under any driver's limit of parameters


@dataclass(frozen=True)
class _Synced:
    """What this process's last sync left in the tasks and task_files tables, and the token it
    wrote beside them: while the store holds that token, no one else has written either."""

    token: str
    tasks: dict[str, StoredTask]
    digests: dict[str, str]


class TaskStore(StoreBase):
    """Tasks: read them all, and sync them to the task files in one transaction."""

    def __init__(self, engine: AsyncEngine, url: str, *, read_only: str | None = None) -> None:
        super().__init__(engine, url, read_only=read_only)
        # The specs built by the last full read of the tasks, by name: a daemon reads them all
        # after every reload, and rebuilding 10,000 costs a fifth of a second.
        self._specs: dict[str, TaskSpec] = {}
        self._synced: _Synced | None = None

    async def tasks(
        self, *, include_removed: bool = True, task_type: TaskType | None = None
    ) -> dict[str, StoredTask]:
        """Every task the store knows, by name (removed ones too unless told otherwise), or
        those of one type."""
        async with self._read() as conn:
            return await self._tasks(conn, include_removed=include_removed, task_type=task_type)

    async def _tasks(
        self, conn: AsyncConnection, *, include_removed: bool, task_type: TaskType | None = None
    ) -> dict[str, StoredTask]:
        # Plain SQL and plain tuples: for 10,000 tasks, SQLAlchemy's row objects cost three
        # times the query (a daemon reads them all after every reload).
        # Sorted here, not by ORDER BY: PostgreSQL would sort by its collation, not by code point.
        conditions, params = [], {}
        if not include_removed:
            conditions.append("NOT removed")
        if task_type is not None:
            conditions.append("type = %(type)s" if conn.dialect.paramstyle == "pyformat" else "type = :type")
            params["type"] = task_type.value
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        result = await conn.exec_driver_sql(
            f"SELECT name, definition, source, enabled, disabled_reason, removed FROM tasks{where}",
            params,
        )
        found = {}
        known = self._specs
        specs: dict[str, TaskSpec] = {}
        rows: list[Any] = sorted(result.all(), key=lambda row: row[0])
        for name, definition, source, enabled, reason, removed in rows:
            spec = known.get(name)
            if spec is None or spec.definition_json != definition or str(spec.source) != source:
                path, _, line = source.rpartition(":")
                spec = TaskSpec.from_definition_json(name, Source(path, int(line)), definition)
            specs[name] = spec
            found[name] = StoredTask(name, spec, bool(enabled), reason, bool(removed))
        if include_removed and task_type is None:
            self._specs = specs  # what the next full read will most likely find again
        else:
            known.update(specs)  # ``runner run``'s sync reads the python tasks, then its engine all
        return found

    def remember_specs(self, specs: Iterable[TaskSpec]) -> None:
        """Let the next full read of the tasks reuse these specs where the stored definition is
        the same, so that a daemon's parsed files and its engine share one copy of each."""
        for spec in specs:
            self._specs[spec.name] = spec

    async def task_files(self) -> dict[str, str]:
        """The digest of each task file the stored tasks were last synced from, by path."""
        async with self._read() as conn:
            return await self._task_files(conn)

    async def _task_files(self, conn: AsyncConnection) -> dict[str, str]:
        rows = await conn.execute(select(t.task_files.c.path, t.task_files.c.digest))
        return {path: digest for path, digest in rows}

    async def sync_tasks(self, planner: Callable[[dict[str, StoredTask], dict[str, str]], SyncPlan]) -> SyncPlan:
        """Under the write lock, plan with ``planner(stored_tasks, stored_digests)`` and apply the
        plan, all in one transaction.

        The tasks and digests are read only if another process (or connection) may have written
        them since this store's last sync: a daemon's one-file reload of 10,000 tasks otherwise
        spent 60 ms of its write lock reading back what it had written itself. Else ``planner``
        is handed what that sync left, which it must not change.
        """
        async with self._write() as conn:
            token = (await conn.execute(select(t.task_generation.c.token))).scalar()
            synced = self._synced
            if synced is not None and token == synced.token:
                stored, digests = synced.tasks, synced.digests
            else:
                stored, digests = await self._tasks(conn, include_removed=True), await self._task_files(conn)
            plan = planner(stored, digests)
            if not plan.is_empty:
                await self._apply(conn, plan, digests)
                token = secrets.token_hex(16)
                replaced = await conn.execute(t.task_generation.update().values(token=token))
                if not replaced.rowcount:  # the first sync of this store
                    await conn.execute(t.task_generation.insert().values(token=token))
        after = _applied(stored, plan)
        if token is not None:
            self._synced = _Synced(token, after, dict(plan.digests) if plan.digests is not None else digests)
        return replace(plan, tasks=after)

    async def _apply(self, conn: AsyncConnection, plan: SyncPlan, stored_digests: Mapping[str, str]) -> None:
        now = time.time()
        if plan.inserts:
            await conn.execute(
                t.tasks.insert(),
                [
                    {
                        "name": w.spec.name,
                        "type": w.spec.type.value,
                        "definition": w.spec.definition_json,
                        "source": str(w.spec.source),
                        "enabled": w.enabled,
                        "disabled_reason": w.reason,
                        "removed": False,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for w in plan.inserts
                ],
            )
        if plan.updates:
            await conn.execute(
                update(t.tasks)
                .where(t.tasks.c.name == bindparam("b_name"))
                .values(
                    type=bindparam("b_type"),
                    definition=bindparam("b_definition"),
                    source=bindparam("b_source"),
                    enabled=bindparam("b_enabled"),
                    disabled_reason=bindparam("b_reason"),
                    removed=False,
                    updated_at=now,
                ),
                [
                    {
                        "b_name": w.spec.name,
                        "b_type": w.spec.type.value,
                        "b_definition": w.spec.definition_json,
                        "b_source": str(w.spec.source),
                        "b_enabled": w.enabled,
                        "b_reason": w.reason,
                    }
                    for w in plan.updates
                ],
            )
        if plan.removed:
            await conn.execute(
                update(t.tasks)
                .where(t.tasks.c.name.in_(plan.removed))
                .values(removed=True, enabled=False, disabled_reason="removed", updated_at=now)
            )
        if plan.digests is not None:
            # Only the files that changed: a one-file edit rewrote 100 rows for 10,000 tasks.
            wanted = plan.digests
            stale = [path for path, digest in stored_digests.items() if wanted.get(path) != digest]
            for start in range(0, len(stale), _DIGESTS_PER_STATEMENT):
                chunk = stale[start : start + _DIGESTS_PER_STATEMENT]
                await conn.execute(t.task_files.delete().where(t.task_files.c.path.in_(chunk)))
            fresh = [{"path": p, "digest": d} for p, d in wanted.items() if stored_digests.get(p) != d]
            if fresh:
                await conn.execute(t.task_files.insert(), fresh)


def _applied(stored: Mapping[str, StoredTask], plan: SyncPlan) -> dict[str, StoredTask]:
    """The tasks as a read after ``_apply(plan)`` would find them, by name."""
    after = dict(stored)
    for wanted in (*plan.inserts, *plan.updates):
        after[wanted.spec.name] = StoredTask(wanted.spec.name, wanted.spec, wanted.enabled, wanted.reason)
    for name in plan.removed:
        after[name] = replace(after[name], enabled=False, disabled_reason="removed", removed=True)
    # Updates keep their place: only new names need sorting in (10,000 take a few ms).
    return dict(sorted(after.items())) if plan.inserts else after
