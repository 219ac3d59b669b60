"""The public API is what ``runner.__all__`` (and ``runner.testing.__all__``) lists, the docs
import nothing else, and importing it stays light."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import runner
import runner.testing

REPO = Path(runner.__file__).resolve().parents[1]


def test_all_lists_exactly_the_public_names() -> None:
    assert runner.__all__ == [
        "Engine", "History", "NoUpstreamResult", "Run", "RunContext", "RunStatus", "RunnerError",
        "Upstream", "current_run", "register_injectable", "task",
    ]
    assert runner.testing.__all__ == ["TaskOutcome", "run_task", "run_task_sync"]
    for name in runner.__all__:
        assert getattr(runner, name) is not None
    public = {name for name in vars(runner) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(runner, name)).__name__ == "module"}
    assert public - modules == set(runner.__all__)


def test_importing_runner_pulls_in_no_heavy_dependency() -> None:
    probe = (
        "import json, sys, runner; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'sqlalchemy', 'aiosqlite', 'jsonschema', 'anyio', 'click'})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^ *```python\n(.*?)^ *```", text, re.M | re.S)


def test_the_docs_import_only_the_public_api() -> None:
    """Every ``from runner... import`` in the code of README.md and docs/, and every class or
    function the prose names as ``runner.X``, is in ``runner.__all__`` or ``runner.testing.__all__``."""
    public = {"runner": set(runner.__all__), "runner.testing": set(runner.testing.__all__)}
    imported: set[tuple[str, str]] = set()
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for block in _python_blocks(text):
            source = "\n".join(line[len(block) - len(block.lstrip(" ")):] for line in block.splitlines())
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "runner":
                    imported.update((node.module or "", alias.name) for alias in node.names)
        # a class named in prose (`runner.History`), or a function called (`runner.testing.run_task(`)
        for module, name in re.findall(r"`(runner(?:\.\w+)*?)\.([A-Z]\w*`|\w+\()", text):
            imported.add((module, name.rstrip("`(")))
    assert imported, "no imports found: the check reads the docs wrong"
    outside = sorted(f"{module}.{name}" for module, name in imported if name not in public.get(module, set()))
    assert outside == []
