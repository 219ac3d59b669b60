"""The built wheel and sdist: the distribution `runner-tasks` (PyPI's `runner` is another
project), carrying the `runner` package, its schema, the web page's static files, the `runner` console
script and the licence."""

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
    [wheel] = tmp_path.glob("runner_tasks-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = json.loads(archive.read("runner/tasks.schema.json"))
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
        [licence] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(licence) == (REPO / "LICENSE").read_bytes()
    assert "Name: runner-tasks" in headers and "License-Expression: MIT" in headers
    assert shipped == json.loads((REPO / "schemas" / "tasks.schema.json").read_text())
    assert "runner = runner.cli:main" in scripts
    assert "runner/__main__.py" in names
    assert "runner/py.typed" in names  # @task, RunContext and injection are a typed API (PEP 561)
    # The web page's own files, served by the daemon from the package (no CDN, no build step).
    web = REPO / "runner" / "http" / "web" / "static"
    assert {f"runner/http/web/static/{f.name}" for f in web.iterdir()} <= names
    assert not any(name.startswith(("tests/", "plugins/", "tasks.d/")) for name in names)


def test_sdist_carries_the_licence_and_no_node_modules(tmp_path: Path) -> None:
    import tarfile

    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path)],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )
    [sdist] = tmp_path.glob("runner_tasks-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    root = sdist.name.removesuffix(".tar.gz")
    assert f"{root}/LICENSE" in names and f"{root}/schemas/tasks.schema.json" in names
    assert not [n for n in names if "node_modules" in n]
