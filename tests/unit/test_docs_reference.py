"""Keep the task-file reference and the example project in step with the JSON Schema.

docs/task-files.md has one ``### `field``` section per property of the schema (the top-level
``version`` and ``tasks`` and every task field), and no section for a field the schema lacks.
The example project in tasks.d/ uses every field and every form the reference shows, and
``runner validate`` accepts it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "schemas" / "tasks.schema.json"
REFERENCE = ROOT / "docs" / "task-files.md"
HEADING = re.compile(r"^### `([^`]+)`[ \t]*$", re.MULTILINE)
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def _schema_fields() -> set[str]:
    schema = _schema()
    return set(schema["properties"]) | set(schema["$defs"]["task"]["properties"])


def _headings() -> list[str]:
    return HEADING.findall(REFERENCE.read_text(encoding="utf-8"))


def _task_files() -> list[Path]:
    return sorted(p for p in (ROOT / "tasks.d").rglob("*") if p.suffix in (".yaml", ".yml"))


def _example_tasks() -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for path in _task_files():
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for name, body in data["tasks"].items():
            yield path, name, body


def test_reference_has_a_section_for_every_schema_field() -> None:
    missing = _schema_fields() - set(_headings())
    assert not missing, f"docs/task-files.md has no '### `name`' section for: {sorted(missing)}"


def test_reference_has_no_section_for_a_field_the_schema_lacks() -> None:
    extra = set(_headings()) - _schema_fields()
    assert not extra, f"docs/task-files.md documents fields the schema lacks: {sorted(extra)}"


def test_reference_documents_each_field_once() -> None:
    headings = _headings()
    twice = sorted({h for h in headings if headings.count(h) > 1})
    assert not twice, f"docs/task-files.md has more than one section for: {twice}"


def test_example_project_uses_every_field() -> None:
    used: set[str] = set()
    for path in _task_files():
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        used.update(data)
        for body in data["tasks"].values():
            used.update(body)
    unused = _schema_fields() - used
    assert not unused, f"no task in tasks.d/ uses: {sorted(unused)}"


def test_example_project_shows_every_form() -> None:
    forms: set[str] = set()
    for _path, _name, body in _example_tasks():
        forms.add(f"type={body.get('type', 'shell')}")
        if "command" in body:
            forms.add(f"command={type(body['command']).__name__}")
        if "callable" in body:
            forms.add("callable=" + ("module:qualname" if ":" in body["callable"] else "@task"))
        if "enabled" in body:
            forms.add(f"enabled={body['enabled']}")
        schedule = body.get("schedule")
        if isinstance(schedule, str):
            forms.add("schedule=cron")
        elif isinstance(schedule, dict):
            forms.add("schedule=" + ",".join(sorted(set(schedule) - {"misfire", "overlap"})))
            forms.update(f"schedule.{key}={schedule[key]}" for key in ("misfire", "overlap") if key in schedule)
        if "retries" in body:
            forms.add(f"retries={type(body['retries']).__name__}")
        for value in (body.get("env") or {}).values():
            forms.add("env=" + (next(iter(value)) if isinstance(value, dict) else "str"))
    wanted = {
        "type=shell",
        "type=python",
        "command=str",
        "command=list",
        "callable=module:qualname",
        "callable=@task",
        "enabled=False",
        "schedule=cron",
        "schedule=cron,timezone",
        "schedule=every",
        "schedule.misfire=skip",
        "retries=int",
        "retries=dict",
        "env=str",
        "env=from_env",
        "env=from_file",
    }
    assert wanted <= forms, f"the example project does not show: {sorted(wanted - forms)}"


def test_example_from_file_secrets_are_committed() -> None:
    for path, name, body in _example_tasks():
        for key, value in (body.get("env") or {}).items():
            if isinstance(value, dict) and "from_file" in value:
                target = ROOT / value["from_file"]
                assert target.is_file(), f"{path}: task {name!r}: env {key} points at a missing file"


@pytest.mark.parametrize("path", _task_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_task_file_starts_with_the_schema_modeline(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = MODELINE.match(first)
    assert match, f"{path} does not start with '# yaml-language-server: $schema=...'"
    assert (path.parent / match.group(1)).resolve() == SCHEMA_PATH


def test_runner_validate_accepts_the_example_project() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runner", "--project", str(ROOT), "validate", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert report["warnings"] == []
    assert report["files"] == len(_task_files())
    assert report["tasks"] == len(list(_example_tasks()))


def test_example_plugins_import_without_sqlalchemy() -> None:
    # validate imports every plugin; a plugin that pulls in SQLAlchemy at import makes it slow.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import plugins.examples, plugins.reports; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == "[]"
