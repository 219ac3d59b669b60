"""The built wheel carries the schema and the `runner` console script."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_schema_and_the_console_script(tmp_path: Path) -> None:
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*build, "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    [wheel] = tmp_path.glob("runner-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = json.loads(archive.read("runner/tasks.schema.json"))
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert shipped == json.loads((REPO / "schemas" / "tasks.schema.json").read_text())
    assert "runner = runner.cli:main" in scripts
    assert "runner/__main__.py" in names
    assert not any(name.startswith(("tests/", "plugins/", "tasks.d/")) for name in names)
