"""runner's modules in layers that point one way: a module imports from its own layer or a lower
one, and no imports go round in a circle.

    core → files → project → store → sync → engine → daemon/workers → http/cli → public API

(``runner/__init__.py`` is the public API: it names ``Engine`` for type checkers and imports it
when first asked for, so ``import runner.errors`` and the like stay light.)

Read from the source with ``ast``: every import at a module's top level, inside ``if`` and
``try`` blocks and ``if TYPE_CHECKING:`` included (a circle of type-only imports is a circle
still). Imports inside functions are left out: they are the lazy ones, kept for start-up time
or for an optional extra (SQLAlchemy for ``runner --help``, starlette for the daemon's HTTP).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import runner

PACKAGE = Path(runner.__file__).parent

LAYERS: list[tuple[str, set[str]]] = [
    (
        "core",  # records, errors, checks of input, and what a task's callable is given
        {
            "runner._version", "runner.capture", "runner.context", "runner.errors", "runner.executors",
            "runner.executors.python", "runner.executors.shell", "runner.files", "runner.graph",
            "runner.inject", "runner.inputs", "runner.jsonsafe", "runner.log", "runner.masking",
            "runner.models", "runner.processes", "runner.records", "runner.livelog", "runner.registry", "runner.revision", "runner.shutdown",
            "runner.schedule", "runner.scopes", "runner.signature", "runner.slots",
        },
    ),
    ("files", {"runner.schema", "runner.precheck", "runner.taskfile", "runner.spec", "runner.scaffold"}),
    ("project", {"runner.syncplan", "runner.project"}),
    ("store", {"runner.store", "runner.store.*", "runner.history"}),
    ("sync", {"runner.sync"}),
    (
        "engine",
        {
            "runner.engine", "runner.attempt", "runner.cancels", "runner.execution", "runner.workflow", "runner.runnable",
            "runner.recorder", "runner.progress", "runner.oneshot", "runner.follow", "runner.overview",
        },
    ),
    ("daemon/workers", {"runner.daemon", "runner.daemon.*", "runner.lease", "runner.leader", "runner.remote"}),
    ("http/cli", {"runner.http", "runner.http.*", "runner.cli", "runner.cli.*", "runner.__main__"}),
    ("public API", {"runner", "runner.testing"}),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def imports_in(source: str, module: str, *, is_package: bool = False, known: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """The modules ``source`` (the text of ``module``) imports outside functions: ``from runner
    import log`` is ``runner.log`` when that is one of the ``known`` modules, else ``runner``."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(source).body)
    return found - {module}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle a depth-first walk of ``graph`` meets, as the path that closes it."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    return found


GRAPH = {
    module: imports_in(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py", known=set(MODULES))
    & set(MODULES)
    for module, path in MODULES.items()
}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_higher_layer(module: str) -> None:
    mine = layer_of(module)
    upward = sorted(
        f"{target} ({LAYERS[layer_of(target)][0]})" for target in GRAPH[module] if layer_of(target) > mine
    )
    assert upward == [], f"{module} ({LAYERS[mine][0]}) imports from a higher layer: {', '.join(upward)}"


def test_no_import_circles() -> None:
    assert circles(GRAPH) == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles(GRAPH))


def test_type_only_imports_count_and_function_imports_do_not() -> None:
    known = {"runner", "runner.spec", "runner.precheck", "runner.log", "runner.store", "runner.store.store"}
    spec = "from typing import TYPE_CHECKING\nfrom runner import log\nif TYPE_CHECKING:\n    from runner.precheck import plainly_valid\n"
    precheck = "from runner.spec import load_schema\n\ndef f():\n    from runner.store import open_store\n"
    graph = {
        "runner.spec": imports_in(spec, "runner.spec", known=known) & known,
        "runner.precheck": imports_in(precheck, "runner.precheck", known=known) & known,
    }
    assert graph == {"runner.spec": {"runner.log", "runner.precheck"}, "runner.precheck": {"runner.spec"}}
    assert circles(graph) == [["runner.precheck", "runner.spec", "runner.precheck"]]
    relative = imports_in("from . import store\nfrom .store import Store\n", "runner.store", is_package=True, known=known)
    assert relative == {"runner.store.store"}
