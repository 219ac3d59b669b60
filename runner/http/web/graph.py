"""Needs graphs drawn as columns: each task in the column after the last of its needs.

Drawn with HTML boxes and CSS, not a layout library: a workflow is a few tasks deep, and
columns read left to right as the order the runs go in. Each node lists what it needs, so the
edges are there in text too (for screen readers, and for graphs whose columns hide one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from runner.http.web.html import esc


def columns(nodes: Sequence[str], needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """``nodes`` by depth: a node's column is one past the deepest of its needs among ``nodes``
    (a cycle, which validation refuses anyway, is cut where it closes)."""
    inside = set(nodes)
    depth: dict[str, int] = {}

    def of(node: str, path: frozenset[str]) -> int:
        if node in depth:
            return depth[node]
        ups = [n for n in needs.get(node, ()) if n in inside and n not in path]
        depth[node] = 1 + max((of(n, path | {node}) for n in ups), default=-1)
        return depth[node]

    for node in nodes:
        of(node, frozenset())
    found: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in nodes:
        found[depth[node]].append(node)
    return found


def draw(
    nodes: Sequence[str],
    needs: Mapping[str, Sequence[str]],
    box: Callable[[str], str],
    *,
    label: str,
) -> str:
    """The graph as a figure: ``box(node)`` gives each node's HTML (already escaped)."""
    cols = []
    for column in columns(nodes, needs):
        items = []
        for node in column:
            ups = [n for n in needs.get(node, ()) if n in nodes]
            after = f'<span class="needs">after {esc(", ".join(ups))}</span>' if ups else ""
            items.append(f"<li>{box(node)}{after}</li>")
        cols.append(f'<ol class="col">{"".join(items)}</ol>')
    arrows = '<span class="arrow" aria-hidden="true">→</span>'.join(cols)
    return f'<figure class="graph" aria-label="{esc(label)}">{arrows}</figure>'


def neighbourhood(name: str, needs: Mapping[str, Sequence[str]]) -> tuple[list[str], dict[str, list[str]]]:
    """``name`` with everything it needs and everything that needs it, transitively, and the
    needs among them."""
    needed_by: dict[str, list[str]] = {}
    for task, ups in needs.items():
        for up in ups:
            needed_by.setdefault(up, []).append(task)
    seen = {name}
    for links in (needs, needed_by):
        stack = [name]
        while stack:
            for nxt in links.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    nodes = sorted(seen)
    return nodes, {n: [u for u in needs.get(n, ()) if u in seen] for n in nodes}
