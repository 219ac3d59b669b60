"""Report tasks: one that uses its need's result and logs through its RunContext, one that
reads the runner's own store.

SQLAlchemy is imported only for type checkers and inside the function that uses it, so that
importing this module (which ``runner validate`` does) stays fast. runner recognises the
``AsyncSession`` annotation by name without importing it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runner import RunContext, Upstream

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


def daily(ctx: RunContext, upstream: Upstream, title: str = "Daily report") -> dict[str, Any]:
    """Write the (tiny) daily report from what ``add`` returned; the log line is stored with the run.

    ``upstream`` holds the results of the task's ``needs``: ``upstream["add"]`` is the dict that
    ``plugins.examples:add`` returned, ``upstream.runs["add"]`` that run's record.
    """
    total = upstream["add"]["result"]
    generated_at = datetime.now(UTC).isoformat(timespec="seconds")
    ctx.logger.info(
        "%s generated at %s with total %s (attempt %d)", title, generated_at, total, ctx.attempt
    )
    return {"title": title, "total": total, "generated_at": generated_at, "run_id": ctx.run_id}


async def count_runs(session: AsyncSession, ctx: RunContext) -> int:
    """How many runs the store holds; ``session`` is a session on the runner's own store."""
    from sqlalchemy import text

    total = (await session.execute(text("SELECT count(*) FROM runs"))).scalar_one()
    ctx.logger.info("the store holds %d runs", total)
    return int(total)
