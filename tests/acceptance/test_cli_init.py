"""``runner init``: a new project that validates and runs as written, and nothing overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import forkserver
import yaml
from conftest import cli_env, ok

SCHEMA = Path(__file__).parents[2] / "schemas" / "tasks.schema.json"
WRITTEN = ["tasks.d/example.yaml", "plugins/__init__.py", "schemas/tasks.schema.json", ".gitignore", ".pre-commit-config.yaml"]


def runner(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return forkserver.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=cli_env(), timeout=30)


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_init_writes_a_project_that_validates_and_runs(tmp_path: Path) -> None:
    result = ok(runner(tmp_path, "init", "new"))
    assert result.stdout.splitlines() == [
        f"wrote a new project in new: {', '.join(WRITTEN)}",
        "next: cd new && runner validate && runner run add",
    ]
    root = tmp_path / "new"
    assert sorted(files_under(root)) == sorted(WRITTEN)
    assert (root / "schemas/tasks.schema.json").read_bytes() == SCHEMA.read_bytes()
    example = (root / "tasks.d/example.yaml").read_text()
    assert example.startswith("# yaml-language-server: $schema=../schemas/tasks.schema.json\n")
    assert ".runner/" in (root / ".gitignore").read_text().splitlines()
    [hook] = yaml.safe_load((root / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    assert (hook["id"], hook["entry"], hook["pass_filenames"]) == ("runner-validate", "runner validate", False)

    assert ok(runner(root, "validate")).stdout == "ok: 2 tasks in 1 files\n"
    ran = ok(runner(root, "run", "add", "--json"))
    assert [(r["task"], r["status"]) for r in map(json.loads, ran.stdout.splitlines())] == [
        ("hello", "succeeded"), ("add", "succeeded"),
    ]
    assert json.loads(ran.stdout.splitlines()[-1])["result"] == {"result": 3}


def test_init_in_the_current_directory_and_refusing_to_overwrite(tmp_path: Path) -> None:
    ok(runner(tmp_path, "init"))
    before = files_under(tmp_path)
    (tmp_path / "tasks.d/example.yaml").write_text("version: 1\ntasks: {}\n")
    before["tasks.d/example.yaml"] = b"version: 1\ntasks: {}\n"
    (tmp_path / "plugins/__init__.py").unlink()
    del before["plugins/__init__.py"]

    again = runner(tmp_path, "init")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "tasks.d/example.yaml, schemas/tasks.schema.json, .gitignore, .pre-commit-config.yaml" in again.stderr
    assert "overwrites nothing" in again.stderr
    # Nothing written, not even the file that was missing.
    assert files_under(tmp_path) == before


def test_shell_completion_scripts(tmp_path: Path) -> None:
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "#compdef runner"), ("fish", "complete --no-files --command runner")):
        env = {**cli_env(), "_RUNNER_COMPLETE": f"{shell}_source"}
        script = subprocess.run(
            [Path(sys.executable).parent / "runner"], env=env, capture_output=True, text=True, timeout=30
        )
        assert script.returncode == 0 and marker in script.stdout, (shell, script.stdout[:200])
    # What the bash script asks for on `runner run <TAB>`: the task names of the project's files.
    ok(runner(tmp_path, "init"))
    for words, cword, expected in (
        ("runner run ", "2", ["plain,add", "plain,hello"]),
        ("runner --project . trigger h", "4", ["plain,hello"]),
        ("runner logs --task a", "3", ["plain,add"]),
    ):
        env = {**cli_env(), "_RUNNER_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
        answer = subprocess.run(
            [Path(sys.executable).parent / "runner"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )
        assert answer.stdout.split() == expected, words
