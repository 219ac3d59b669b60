"""``runner init``: the files of a new project, written only where nothing exists yet."""

from __future__ import annotations

from pathlib import Path

from runner.errors import ProjectExists
from runner.schema import schema_file

TASKS = """\
# yaml-language-server: $schema=../schemas/tasks.schema.json
#
# Task files: every *.yaml / *.yml under tasks.d/, at any depth. `runner validate` checks them;
# every field is described in the schema (hover in an editor that reads the line above).
version: 1
tasks:
  hello:
    description: A shell task. Parameters reach it as environment variables, never as code.
    command: 'echo "hello, $PARAM_WHO"'
    parameters: {who: world}

  add:
    description: A python task, calling plugins/__init__.py's add with these parameters.
    type: python
    callable: plugins:add
    parameters: {a: 1, b: 2}
    needs: [hello]                    # runs after hello succeeded
    # schedule: {every: 1h}           # `runner daemon` fires it; or a cron string: "30 2 * * *"
    # timeout: 5m
    # retries: {count: 3, backoff: 10s}
"""

PLUGINS = '''\
"""Task callables: python tasks name them as ``plugins:add`` (or ``plugins.module:name`` for a
module beside this one). runner imports every module here when it starts."""

from __future__ import annotations

from runner import RunContext


def add(ctx: RunContext, a: int, b: int) -> dict[str, int]:
    """Add two numbers. ``ctx`` is injected by its type; ``a`` and ``b`` come from parameters."""
    ctx.logger.info("adding %d and %d", a, b)
    return {"result": a + b}
'''

GITIGNORE = """\
# runner's store and state (the default store is .runner/runner.db)
.runner/
"""

PRE_COMMIT = """\
# pre-commit (https://pre-commit.com): `pre-commit install`, then every commit that touches a
# task file or a plugin runs `runner validate` on the whole project.
repos:
  - repo: local
    hooks:
      - id: runner-validate
        name: runner validate
        entry: runner validate          # the runner on PATH: activate the project's virtualenv
        language: system
        pass_filenames: false
        files: ^(tasks\\.d/.*\\.ya?ml|plugins/.*\\.py)$
"""


def project_files() -> dict[str, bytes]:
    """What ``runner init`` writes, by path relative to the project."""
    return {
        "tasks.d/example.yaml": TASKS.encode(),
        "plugins/__init__.py": PLUGINS.encode(),
        "schemas/tasks.schema.json": schema_file().read_bytes(),
        ".gitignore": GITIGNORE.encode(),
        ".pre-commit-config.yaml": PRE_COMMIT.encode(),
    }


def init_project(root: Path) -> list[str]:
    """Write a new project into ``root`` (made if missing); the paths written. Writes nothing
    and raises ProjectExists, naming them, if any of the files exists."""
    files = project_files()
    existing = [rel for rel in files if (root / rel).exists() or (root / rel).is_symlink()]
    if existing:
        raise ProjectExists(
            f"{root} already has {', '.join(existing)}; runner init writes a new project and "
            f"overwrites nothing: pick an empty directory, or move those away"
        )
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("xb") as out:  # "x": never replace a file that appeared meanwhile
            out.write(data)
    return list(files)
