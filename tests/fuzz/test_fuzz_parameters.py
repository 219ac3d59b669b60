"""Fuzz: any text as `-p KEY=VALUE` is a parameter that can reach a task, or a clear refusal;
the real command exits 0/1/2/3 without a traceback and leaves no run unfinished."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import forkserver
import pytest
from conftest import cli_env
from hypothesis import given
from hypothesis import strategies as st

from runner.inputs import PARAMETER_NAME, check_parameters
from runner.taskfile import parse_override
from tests.fuzz.budget import fuzz

# Every code point, lone surrogates included (argv bytes that are not UTF-8 arrive as those).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
YAMLISH = [
    "0123", "0o17", "0x1F", "1:30", "1_000", "0b101", "1e3", "1e999", ".inf", "-.Inf", ".NaN", "~", "null",
    "yes", "No", "ON", "y", "true", "2026-11-28", "2026-11-28T10:00:00Z", '"\\0"', '"\\ud800"', "'x'",
    "[1, [2, [3]]]", "{a: 1, b: [x, y]}", "{? a}", "&a [*a]", "*a", "!!binary aGk=", "!!int x", "!foo bar",
    "|\n  block", "- a\n- b", "a: b", "---", "...", "#", "%TAG", "@x", "`x`", "[" * 50, "{" * 50,
]
values = st.one_of(
    st.text(ANY_CHAR, max_size=30),
    st.sampled_from(YAMLISH),
    st.lists(st.sampled_from(YAMLISH) | st.text(max_size=5), min_size=1, max_size=4).map(
        lambda items: "[" + ", ".join(items) + "]"
    ),
    st.integers(1, 5000).map(lambda depth: "[" * depth + "1" + "]" * depth),
)
keys = st.one_of(st.from_regex(PARAMETER_NAME, fullmatch=True), st.text(ANY_CHAR, max_size=8))


@fuzz()
@given(key=keys, value=values)
def test_any_p_text_is_a_parameter_or_a_clear_refusal(key: str, value: str) -> None:
    try:
        name, parsed = parse_override(f"{key}={value}")
    except ValueError as exc:
        assert str(exc)
        return
    assert PARAMETER_NAME.fullmatch(name)
    check_parameters({name: parsed})
    json.dumps(parsed, allow_nan=False).encode("utf-8")


def can_be_an_argument(text: str) -> bool:
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "project"
    (root / "tasks.d").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "plugins" / "__init__.py").write_text("")
    (root / "plugins" / "reports.py").write_text("def daily(day: str = 'x') -> str:\n    return day\n")
    (root / "tasks.d" / "a.yaml").write_text(
        textwrap.dedent(
            """\
            version: 1
            tasks:
              show:
                command: 'printf "%s" "$RUNNER_PARAMS"'
              report:
                type: python
                callable: plugins.reports:daily
            """
        )
    )
    return root


def runner(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return forkserver.run(
        [sys.executable, "-m", "runner", "--project", str(root), *args], env=cli_env(), timeout=30, errors="replace"
    )


@fuzz(processes=True)
@given(task=st.sampled_from(["show", "report"]), key=keys, value=values)
def test_runner_run_with_any_p_exits_0_to_3_and_leaves_no_run_unfinished(
    root: Path, task: str, key: str, value: str
) -> None:
    text = f"{key}={value}"
    if not can_be_an_argument(text):
        return  # the OS cannot even pass it to a process
    result = runner(root, "run", task, "-p", text)
    assert result.returncode in (0, 1, 2, 3), result.stderr
    assert "Traceback" not in result.stderr
    if (root / ".runner" / "runner.db").exists():
        with closing(sqlite3.connect(root / ".runner" / "runner.db")) as store:
            unfinished = store.execute("SELECT id FROM runs WHERE status IN ('queued', 'running')").fetchall()
        assert unfinished == []
