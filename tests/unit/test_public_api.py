"""The public API is what ``runner.__all__`` lists, and importing it stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import runner


def test_all_lists_exactly_the_public_names() -> None:
    assert runner.__all__ == ["RunContext", "Upstream", "current_run", "task"]
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
