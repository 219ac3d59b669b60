"""The ``needs`` graph: cycles, and the order in which a task's needs run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_cycles(needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Every elementary cycle found by a depth-first walk, each as ``[a, b, ..., a]``, once.

    Names in ``needs`` that are not keys are ignored (reported elsewhere as unknown).
    """
    cycles: list[list[str]] = []
    seen_cycles: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    # A task that needs nothing is on no cycle: walking it changes nothing found, and most
    # tasks are such (at 10,000 tasks, walking them was two thirds of the time).
    for root in sorted(name for name, wanted in needs.items() if wanted):
        if state.get(root):
            continue
        path: list[str] = [root]
        state[root] = 1
        stack = [iter(sorted(needs[root]))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                state[path.pop()] = 2
                continue
            if not needs.get(child):
                continue
            mark = state.get(child)
            if mark == 1:
                cycle = [*path[path.index(child) :], child]
                key = frozenset(cycle)
                if key not in seen_cycles:
                    seen_cycles.add(key)
                    cycles.append(cycle)
            elif mark is None:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(needs[child])))
    return cycles


def upstream_order(name: str, needs: Mapping[str, Sequence[str]]) -> list[str]:
    """``name`` and everything it needs, transitively, each after all of its own needs."""
    order: list[str] = []
    seen = {name}
    stack = [(name, iter(needs.get(name, ())))]
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            order.append(node)
        elif child not in seen:
            seen.add(child)
            stack.append((child, iter(needs.get(child, ()))))
    return order
