"""Fuzz: valid task files, mutated (NULs, surrogate escapes, odd keys, wrong types, tags, deep
nesting, stray YAML syntax), always give `runner validate` problems or ok, never an exception;
what passes is what the OS and the store can take."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import forkserver
import pytest
from conftest import cli_env
from hypothesis import given
from hypothesis import strategies as st

from runner.errors import Problem
from runner.inputs import check_parameters, text_problem
from runner.models import SecretRef
from runner.project import load_project
from tests.fuzz.budget import fuzz

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [(REPO / "tasks.d" / name).read_text(encoding="utf-8") for name in ("basics.yaml", "housekeeping.yaml")]

SNIPPETS = [
    '"\\0"', '"a\\x00b"', '"\\ud800"', '"\\udfff"', '"\\U0010ffff"', "\x00", "\ud800", "\t", ": ", "- ",
    "{", "}", "[", "]", "&a ", "*a", "<<: *a", "!!python/object/apply:os.system [echo]", "!foo ", "!!binary ",
    "? ", "|", ">", "---\n", "...\n", "'", '"', "#", "\ufeff", "%YAML 1.1\n", "\r", "\n", "\n  ", "\\",
    "yes", "no", "~", "0123", "1:30", ".nan", "-.inf", "1e999", "2026-11-28", "@", "`", "%", "=",
]
VALUES = [
    "[]", "{}", "yes", "1e999", ".nan", "0123", "1:30", '"a\\0b"', "null", "true", "-1", "0", '""',
    "{from_env: X}", "{from_file: \"\\0\"}", "[a, b]", '{"a b": 1}', '{"a\\0": 1}', "[[[[[[]]]]]]",
    "&x [*x]", "!!str 5", "!!int x", "!!timestamp 2026-01-01", "!!set {a}", '"\\ud83d\\ude00"',
]
KEYS = ["parameters", "env", "command", "cwd", "callable", "needs", "schedule", "timeout", "retries", "tags",
        "enabled", "type", "queue", "concurrency", "description", "x", "a b", "a=b", "'\\0'", '"\\0"', "1"]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 4))
        if kind == 0:  # a snippet (or any text) anywhere
            at = draw(st.integers(0, len(text)))
            piece = draw(st.sampled_from(SNIPPETS) | st.text(max_size=8))
            text = text[:at] + piece + text[at:]
        elif kind == 1:  # a value replaced with one of another type or shape
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            key, sep, _ = lines[i].partition(": ")
            if sep:
                lines[i] = f"{key}: {draw(st.sampled_from(VALUES))}"
            text = "\n".join(lines)
        elif kind == 2:  # a key added to a task
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines)))
            lines.insert(i, f"    {draw(st.sampled_from(KEYS))}: {draw(st.sampled_from(VALUES))}")
            text = "\n".join(lines)
        elif kind == 3:  # deep nesting
            depth = draw(st.integers(1, 3000))
            text += f"\n  deep:\n    command: x\n    parameters: {{a: {'[' * depth}1{']' * depth}}}\n"
        else:  # a line dropped
            lines = text.split("\n")
            del lines[draw(st.integers(0, len(lines) - 1))]
            text = "\n".join(lines)
    return text


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "project"
    (root / "tasks.d").mkdir(parents=True)
    shutil.copytree(REPO / "plugins", root / "plugins")
    return root


def write(root: Path, text: str) -> None:
    # Text that cannot be UTF-8 (a lone surrogate) is written as the bytes an editor could leave.
    (root / "tasks.d" / "a.yaml").write_bytes(text.encode("utf-8", "surrogatepass"))


def can_reach_the_os(spec: object) -> None:
    """What `validate` accepts, a run can take: no NUL or surrogate, finite JSON parameters."""
    from runner.models import TaskSpec

    assert isinstance(spec, TaskSpec)
    check_parameters(spec.parameters)
    json.dumps(spec.parameters, allow_nan=False).encode("utf-8")
    commands = [spec.command] if isinstance(spec.command, str) else list(spec.command or ())
    texts = [*commands, spec.cwd or "", *spec.env]
    texts += [v if isinstance(v, str) else (v.from_env or v.from_file or "") for v in spec.env.values()]
    assert all(isinstance(v, str | SecretRef) for v in spec.env.values())
    assert [t for t in texts if text_problem(t)] == []


@fuzz()
@given(text=mutated())
def test_validate_answers_problems_or_ok_for_any_mutation(root: Path, fresh_plugins: None, text: str) -> None:
    write(root, text)
    project = load_project(root)
    problems = project.strict_problems()
    lines = text.count("\n") + 2
    for problem in problems:
        assert isinstance(problem, Problem) and problem.message
        assert problem.path in ("tasks.d/a.yaml", "tasks.d") or problem.path.startswith("plugins/")
        assert 1 <= problem.line <= lines and problem.col >= 1, problem
    if not problems:
        for spec in project.declared.specs.values():
            can_reach_the_os(spec)


@fuzz(processes=True)
@given(text=mutated())
def test_the_validate_command_exits_0_or_2_without_a_traceback(root: Path, text: str) -> None:
    write(root, text)
    result = forkserver.run([sys.executable, "-m", "runner", "--project", str(root), "validate"], env=cli_env(), timeout=30)
    assert result.returncode in (0, 2), result.stderr
    assert "Traceback" not in result.stderr
