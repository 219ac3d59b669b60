"""What may enter runner from outside: parameter names and values, and text for the OS.

Checked where the input enters, before anything is recorded or started: a task file as it is
read and ``-p`` as it is parsed (``taskfile.py``), a job from another host as a worker takes
it (``remote.py``), and the parameters of every workflow the engine makes
(``runnable.checked_parameters``): an HTTP trigger body, ``runner trigger`` through the store and a
task's own ``Engine.submit`` arrive there. What is refused, and why:

- a NUL byte, anywhere: environment variables, argv items and paths are C strings, so
  ``os.execve`` and ``open`` raise ``ValueError: embedded null byte``, and PostgreSQL text and
  ``jsonb`` cannot hold ``\\u0000`` either;
- a lone surrogate (``\\ud800``-``\\udfff`` on its own, which JSON's ``\\ud800`` escape can
  make): it has no UTF-8 form, so writing it to the store or to a child's environment raises
  ``UnicodeEncodeError``;
- a number that is not finite (``.inf``, ``.nan``, or ``1e999`` in JSON, which reads as
  infinity): JSON has no such values and PostgreSQL's ``jsonb`` refuses them;
- a parameter name that is not an identifier (``^[A-Za-z_][A-Za-z0-9_]*$``): a shell task
  gets it as ``PARAM_<NAME>``, and an environment variable name with ``=`` (or an empty one)
  is refused by the OS (``ValueError: illegal environment variable name``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from runner.errors import ParameterError

PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A parameter name (the schema says the same of ``env`` names: an OS refuses ``=`` and "")."""

_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot reach the OS or the store (a NUL byte, a lone surrogate), or None."""
    if "\x00" not in text and text.isascii():
        return None  # the common case, without a regex
    found = _UNSAFE.search(text)
    if found is None:
        return None
    where = f"at character {found.start() + 1}"
    if found.group() == "\x00":
        return f"contains a NUL byte ({where}), which no environment variable, argument or path can hold"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x} {where}), which is not valid UTF-8 text"


def number_problem(number: float) -> str | None:
    """Why ``number`` cannot be stored as JSON (NaN, an infinity), or None."""
    return None if math.isfinite(number) else f"{number!r} is not a finite number; JSON has no NaN or Infinity"


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a parameter name, or None."""
    if isinstance(name, str) and PARAMETER_NAME.fullmatch(name):
        return None
    return f"{name!r} is not a valid parameter name: use letters, digits and '_', not starting with a digit"


def value_problems(value: Any) -> Iterator[tuple[str, str]]:
    """Each place in ``value`` (``['key'][0]``, or ``""`` for the value itself) that cannot be
    stored or passed on, with why; nested lists and mappings, keys included."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # not recursive: a value nested thousands deep must not exhaust the stack
        path, item = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                yield path, problem
        elif isinstance(item, float):
            problem = number_problem(item)
            if problem is not None:
                yield path, problem
        elif isinstance(item, Mapping):
            children = []
            for key, inner in item.items():
                here = f"{path}[{key!r}]"
                problem = text_problem(key) if isinstance(key, str) else None
                if problem is not None:
                    yield here, f"key {problem}"
                children.append((here, inner))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(f"{path}[{i}]", inner) for i, inner in enumerate(item)]))


def place(name: str, path: str = "") -> str:
    """Where a problem lies, as messages say it: ``parameter 'day'``, ``parameter 'day' at ['k'][0]``."""
    return f"parameter {name!r}" + (f" at {path}" if path else "")


def parameter_problems(parameters: object) -> list[str]:
    """What keeps ``parameters`` (names to values) from reaching a task, one message each,
    naming the parameter (and the place inside its value)."""
    if not isinstance(parameters, Mapping):
        return [f"parameters must be a mapping of names to values, not {type(parameters).__name__}"]
    problems = []
    for name, value in parameters.items():
        problem = name_problem(name)
        if problem is not None:
            problems.append(problem)
            continue
        problems.extend(f"{place(name, path)}: {message}" for path, message in value_problems(value))
    return problems


def check_parameters(parameters: object) -> dict[str, Any]:
    """``parameters`` as a dict, once every name and value can reach a task; ParameterError
    (listing each problem) otherwise."""
    problems = parameter_problems(parameters)
    if problems:
        raise ParameterError(problems)
    assert isinstance(parameters, Mapping)
    return dict(parameters)
