"""The checks on what enters runner (``runner/inputs.py``), and `-p` values read as task files
read parameters (YAML 1.2 core numbers, dates as text)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from runner.errors import ParameterError
from runner.inputs import (
    check_parameters,
    name_problem,
    parameter_problems,
    text_problem,
    value_problems,
)
from runner.spec import load_tasks
from runner.taskfile import parse_override, read_value


@pytest.mark.parametrize("text", ["", "plain", "ünïcode ✓", "emoji 😀", "tab\tand\nnewline"])
def test_text_the_os_takes_passes(text: str) -> None:
    assert text_problem(text) is None


def test_a_nul_byte_is_refused_with_where_it_is() -> None:
    assert text_problem("ab\x00c") == (
        "contains a NUL byte (at character 3), which no environment variable, argument or path can hold"
    )


@pytest.mark.parametrize("surrogate", ["\ud800", "\udfff", "\udcff"])
def test_a_lone_surrogate_is_refused(surrogate: str) -> None:
    problem = text_problem(f"x{surrogate}")
    assert problem is not None and f"\\u{ord(surrogate):04x}" in problem and "UTF-8" in problem
    with pytest.raises(UnicodeEncodeError):
        f"x{surrogate}".encode()  # what the store and the OS would meet


@pytest.mark.parametrize("name", ["a", "_", "A_1", "day", "_private"])
def test_identifiers_are_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize("name", ["", "1a", "a b", "a=b", "a-b", "a\x00b", "é", "a.b", 3, None])
def test_anything_else_is_not_a_name(name: object) -> None:
    problem = name_problem(name)
    assert problem is not None and problem.startswith(f"{name!r} is not a valid parameter name")


def test_value_problems_name_the_place_inside_a_nested_value() -> None:
    value = {"ok": [1, "fine"], "deep": [{"x": "a\x00"}], "k\x00": 1, "n": float("nan")}
    found = dict(value_problems(value))
    assert set(found) == {"['deep'][0]['x']", "['k\\x00']", "['n']"}
    assert found["['k\\x00']"].startswith("key contains a NUL byte")
    assert "not a finite number" in found["['n']"]


def test_value_problems_walk_a_value_nested_deeper_than_the_recursion_limit() -> None:
    value: Any = "\x00"
    for _ in range(5000):
        value = [value]
    ((path, problem),) = value_problems(value)
    assert path == "[0]" * 5000 and "NUL" in problem


def test_parameter_problems_name_the_parameter() -> None:
    problems = parameter_problems({"a b": 1, "ok": "x", "day": "x\x00", "inf": [math.inf]})
    assert problems == [
        "'a b' is not a valid parameter name: use letters, digits and '_', not starting with a digit",
        "parameter 'day': contains a NUL byte (at character 2), which no environment variable, argument or path can hold",
        "parameter 'inf' at [0]: inf is not a finite number; JSON has no NaN or Infinity",
    ]
    assert parameter_problems(["a"]) == ["parameters must be a mapping of names to values, not list"]


def test_check_parameters_raises_one_error_listing_each_problem() -> None:
    assert check_parameters({"a": {"b": [1, None, True]}}) == {"a": {"b": [1, None, True]}}
    with pytest.raises(ParameterError) as caught:
        check_parameters({"a=b": 1, "c": "\ud800"})
    assert len(caught.value.problems) == 2


# -- -p KEY=VALUE -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("day=2026-11-28", "2026-11-28"),  # dates stay the text written, as in task files
        ("at=2026-11-28T10:00:00", "2026-11-28T10:00:00"),
        ("a=10", 10),
        ("a=0123", 123),  # YAML 1.2: decimal, not octal 83
        ("a=-7", -7),
        ("a=0x1f", 31),
        ("a=0o17", 15),
        ("a=1.5", 1.5),
        ("a=1e3", 1000.0),
        ("time=1:30", "1:30"),  # not base 60 (90)
        ("a=1_000", "1_000"),
        ("a=0b101", "0b101"),
        ("a=true", True),
        ("a=no", False),  # as in a task file's parameters; a str hint says to quote it
        ("a=y", "y"),
        ("a=~", None),
        ("a=", ""),
        ('a="10"', "10"),
        ("a=[1, x]", [1, "x"]),
        ("a={k: v}", {"k": "v"}),
        ("a=x=y", "x=y"),
        (" a =1", 1),
    ],
)
def test_p_values_are_read_as_task_file_parameters(text: str, expected: Any) -> None:
    key, value = parse_override(text)
    assert key == text.partition("=")[0].strip()
    assert value == expected and type(value) is type(expected)


def test_p_reads_what_a_task_file_reads(tmp_path: Path) -> None:
    texts = ["2026-11-28", "0123", "1:30", "no", "1e3", "0o17", "1_000", ".5", "[a, 1]"]
    (tmp_path / "tasks.d").mkdir()
    lines = "\n".join(f"      p{i}: {text}" for i, text in enumerate(texts))
    (tmp_path / "tasks.d" / "a.yaml").write_text(f"version: 1\ntasks:\n  t:\n    command: x\n    parameters:\n{lines}\n")
    declared = load_tasks(tmp_path)
    assert declared.problems == []
    from_file = declared.specs["t"].parameters
    assert [from_file[f"p{i}"] for i in range(len(texts))] == [read_value(text) for text in texts]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("novalue", "'novalue' is not KEY=VALUE"),
        ("=1", "'=1' is not KEY=VALUE"),
        ("a b=1", "'a b' is not a valid parameter name: use letters, digits and '_', not starting with a digit"),
        ("1a=1", "'1a' is not a valid parameter name"),
        ('a="x\\0y"', "a: contains a NUL byte"),
        ("a=[1, \"\\0\"]", "a.1: contains a NUL byte"),
        ("a=x\udcff", "a: the value contains a lone surrogate (\\udcff"),  # undecodable argv bytes
        ('a="\\ud800"', "a: '\"\\\\ud800\"' is not a YAML value"),
        ("a=.nan", "a: nan is not a finite number"),
        ("a=[.inf]", "a.0: inf is not a finite number"),
        ("a=!foo x", "a: unsupported YAML tag !foo; write a plain value"),
        ("a=!!binary aGk=", "a: unsupported YAML tag !!binary; write a plain value"),  # as in task files
        ("a=[", "a: '[' is not a YAML value"),
        ("a=x\n---\ny", "is not a YAML value (expected a single document"),
        ("a=*nope", "a: '*nope' is not a YAML value"),
    ],
)
def test_p_values_that_cannot_reach_a_task_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_override(text)
    assert message in str(caught.value)


# -- task files ---------------------------------------------------------------------------------


def test_a_nul_anywhere_in_a_task_file_is_one_problem_at_its_position(tmp_path: Path) -> None:
    (tmp_path / "tasks.d").mkdir()
    (tmp_path / "tasks.d" / "a.yaml").write_text(
        "version: 1\n"
        "tasks:\n"
        "  a:\n"
        '    command: "echo \\0"\n'
        '    parameters: {x: {"k\\x00": [1, "\\0"]}, n: .nan}\n'
        "  b:\n"
        '    command: [echo, "x\\0"]\n'
        '    env: {X: "a\\0", T: {from_file: "s\\0"}}\n'
        '    cwd: "sub\\0"\n'
    )
    declared = load_tasks(tmp_path)
    expected = [
        (4, 14, "task 'a': command"),
        (5, 22, "task 'a': parameters.x: the key 'k\\x00' contains a NUL byte"),
        (5, 35, "task 'a': parameters.x.'k\\x00'.1: contains a NUL byte"),
        (5, 46, "task 'a': parameters.n: nan is not a finite number; JSON has no NaN or Infinity"),
        (7, 21, "task 'b': command.1"),
        (8, 14, "task 'b': env.X"),
        (8, 36, "task 'b': env.T.from_file"),
        (9, 10, "task 'b': cwd: contains a NUL byte (at character 4)"),
    ]
    assert [(p.line, p.col) for p in declared.problems] == [(line, col) for line, col, _ in expected]
    for problem, (_, _, start) in zip(declared.problems, expected, strict=True):
        assert problem.message.startswith(start)
    assert declared.specs == {}
