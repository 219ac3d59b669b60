"""Fuzz: the fast precheck never accepts what the JSON Schema rejects, over random mutations of a
template that uses every field (the same documents each run: the seed is fixed).

``DOCUMENTS`` follows the fuzz budget: 6,000 at the default of 100 examples (~4 s of CPU, most of it
jsonschema's), more with ``RUNNER_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from jsonschema import Draft202012Validator

from runner.precheck import plainly_valid
from runner.schema import load_schema
from tests.fuzz.budget import EXAMPLES
from tests.unit.test_precheck import TEMPLATE

DOCUMENTS = 60 * EXAMPLES

FIELDS = [
    "type", "command", "callable", "parameters", "enabled", "description", "needs",
    "schedule", "timeout", "retries", "env", "cwd", "tags", "comand", "version",
]

VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2.5, -0.5, float("inf"), float("nan"), "", " ", "x", "5m",
    "1h30m", "5 minutes", "0.5s", "-1s", "a/b", "01", "_x", "python", "shell", "other",
    "plugins.x:f", "bad callable", "9x:y", "x\n", "x\x00y", [], ["x"], ["a", "\x00"], ["x", "x"], [1], [""], ["a/b"],
    [True], {}, {"a": 1}, {"1a": 1}, {"A-B": "x"}, {"X": 1}, {"X": {"from_env": "Y"}},
    {"X": {"from_env": "1Y"}}, {"X": {"from_file": ""}}, {"X": "a\x00"}, {"X": {"from_file": "\x00"}}, {"X": {"from_env": "Y", "from_file": "z"}},
    {"X": {}}, {"from_env": "X"}, {"cron": "x"}, {"cron": "x", "timezone": ""},
    {"cron": ""}, {"timezone": "UTC"}, {"every": "5m"}, {"every": -1}, {"every": "x"},
    {"every": 1, "cron": "x"}, {"count": 1}, {"count": -1}, {"count": 1.0}, {"count": True},
    {"count": 1, "backoff": "1s"}, {"count": 1, "backoff": -2}, {"count": 1, "extra": 1},
    {"backoff": "1s"},
]

NAMES = ["ok", "Ok.2", "a/b", "", "_x", "-x", "x" * 101, "x" * 100, "é", "a b", "1"]


def mutate(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    tasks = doc["tasks"]
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        name = rng.choice(list(tasks)) if tasks else None
        if choice < 0.55 and name is not None and isinstance(tasks[name], dict):
            tasks[name][rng.choice(FIELDS)] = rng.choice(VALUES)
        elif choice < 0.7 and name is not None and isinstance(tasks[name], dict) and tasks[name]:
            del tasks[name][rng.choice(list(tasks[name]))]
        elif choice < 0.8 and name is not None:
            tasks[rng.choice(NAMES)] = tasks.pop(name)
        elif choice < 0.85 and name is not None:
            tasks[name] = rng.choice(VALUES)
        elif choice < 0.9:
            doc["version"] = rng.choice([1, 2, "1", True, 1.0, None])
        elif choice < 0.95:
            doc[rng.choice(["task", "extra", "tasks"])] = rng.choice(VALUES)
        else:
            doc.pop(rng.choice(["version", "tasks"]), None)
            if "tasks" not in doc:
                return doc
    return doc


def test_never_accepts_what_the_schema_rejects() -> None:
    validator = Draft202012Validator(load_schema())
    rng = random.Random(20261129)
    accepted = rejected_by_both = 0
    for _ in range(DOCUMENTS):
        doc = mutate(rng, TEMPLATE)
        if plainly_valid(doc):
            accepted += 1
            assert validator.is_valid(doc), f"precheck accepted invalid data: {doc!r}"
        elif not validator.is_valid(doc):
            rejected_by_both += 1
    # Both outcomes are exercised often, so the property above is not vacuous.
    assert accepted > DOCUMENTS // 20
    assert rejected_by_both > DOCUMENTS // 3
