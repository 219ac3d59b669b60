"""One error tree: the tree drawn in ``runner/errors.py`` is the classes' own, every error runner
raises on purpose is in it, and the command line's exit code comes from the error's type."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import runner
from runner import errors
from runner.errors import (
    NoUpstreamResult,
    ParameterError,
    ProjectError,
    RunnerError,
    RunNotFound,
    StoreError,
    TaskNotRunnable,
    refusal,
)


def drawn_tree() -> dict[str, str | None]:
    """Each name drawn in the module docstring, with the name it hangs from."""
    parents: dict[str, str | None] = {}
    path: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        found = re.match(r"^( *)(?:[ │]*[├└]── )?(\w+)\s{2,}", line)
        if found is None or not found.group(2)[0].isupper():
            continue
        depth = len(line) - len(line.lstrip(" │├└─"))
        while path and path[-1][0] >= depth:
            path.pop()
        parents[found.group(2)] = path[-1][1] if path else None
        path.append((depth, found.group(2)))
    return parents


def every_runner_error() -> dict[str, type[RunnerError]]:
    for module in pkgutil.walk_packages(runner.__path__, "runner."):
        if module.name != "runner.__main__":  # it runs the command
            importlib.import_module(module.name)
    found: dict[str, type[RunnerError]] = {}
    stack: list[type[RunnerError]] = [RunnerError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def test_the_drawn_tree_is_the_class_tree() -> None:
    tree = drawn_tree()
    classes = every_runner_error()
    assert tree["RunnerError"] is None and tree["StoreVersionError"] == "StoreError"
    assert sorted(tree) == sorted(classes), "draw every RunnerError in errors.py's docstring, and only those"
    for name, parent in tree.items():
        if parent is not None:
            assert classes[name].__bases__[0] is classes[parent], f"{name} is drawn under {parent}"


def test_no_upstream_result_is_in_the_tree_and_still_a_key_error() -> None:
    assert issubclass(NoUpstreamResult, RunnerError) and issubclass(NoUpstreamResult, KeyError)
    assert str(NoUpstreamResult("no result of 'ad' upstream (results: add)")) == "no result of 'ad' upstream (results: add)"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RunnerError("x"), 2),
        (ProjectError([]), 2),
        (ParameterError(["x"]), 2),
        (StoreError("x"), 2),
        (TaskNotRunnable("x"), 3),
        (RunNotFound("x"), 3),
    ],
)
def test_the_exit_code_comes_from_the_type(error: RunnerError, code: int) -> None:
    assert error.exit_code == code


def test_a_recorded_refusal_is_known_by_its_type_name() -> None:
    assert refusal("TaskNotRunnable") is TaskNotRunnable
    assert refusal("ParameterError") is ParameterError
    assert refusal("ValueError") is None and refusal(None) is None
