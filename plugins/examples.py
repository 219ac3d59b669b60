"""Small python tasks: the ``add`` task of the docs and a callable registered with ``@task``."""

from __future__ import annotations

from runner import task


def add(a: int, b: int) -> dict[str, int]:
    """Add two numbers; ``callable: plugins.examples:add`` in tasks.d/basics.yaml."""
    return {"result": a + b}


@task("calculate_sum")
async def calculate_sum(numbers: list[float], scale: float = 1.0) -> dict[str, float]:
    """Sum a list of numbers; registered as ``calculate_sum``, so a task file can use that name."""
    return {"result": sum(numbers) * scale}
