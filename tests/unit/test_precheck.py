"""The fast precheck accepts the common case and rejects the tricky ones (that it never accepts
what the JSON Schema rejects is a property of random documents: tests/fuzz/test_fuzz_precheck.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.precheck import plainly_valid

REPO = Path(__file__).resolve().parents[2]

TEMPLATE: dict[str, Any] = {
    "version": 1,
    "tasks": {
        "hello": {"command": "echo hi"},
        "argv": {"command": ["ls", "-l", "-l"], "cwd": "sub", "tags": ["a", "b"]},
        "add": {"type": "python", "callable": "plugins.examples:add", "parameters": {"a": 1}},
        "report": {
            "type": "python",
            "callable": "calculate_sum",
            "needs": ["add", "hello"],
            "schedule": {"cron": "30 2 * * *", "timezone": "Europe/Oslo"},
            "timeout": "5m",
            "retries": {"count": 3, "backoff": "10s"},
            "enabled": False,
            "description": "nightly",
            "env": {"TOKEN": {"from_env": "TOKEN"}, "FILE": {"from_file": "s.txt"}, "PLAIN": "x"},
        },
        "tick": {"command": "true", "schedule": {"every": 90}, "retries": 2, "timeout": 0.5},
        "cron": {"command": "true", "schedule": "@daily"},
    },
}

def test_accepts_the_valid_template_and_the_example_project() -> None:
    assert plainly_valid(TEMPLATE)
    files = sorted((REPO / "tasks.d").rglob("*.y*ml"))
    assert files
    for path in files:
        assert plainly_valid(yaml.safe_load(path.read_text())), path


@pytest.mark.parametrize(
    "doc",
    [
        {"version": True, "tasks": {}},
        {"version": 1, "tasks": {"x": {"command": "a", "callable": "m:f"}}},
        {"version": 1, "tasks": {"x": {"type": "python", "command": "a", "callable": "m:f"}}},
        {"version": 1, "tasks": {"x": {"command": []}}},
        {"version": 1, "tasks": {"x": {"command": "a", "timeout": True}}},
        {"version": 1, "tasks": {"x": {"command": "a", "retries": True}}},
        {"version": 1, "tasks": {"x\n": {"command": "a"}}},
    ],
)
def test_rejects_the_tricky_cases(doc: dict[str, Any]) -> None:
    assert not plainly_valid(doc)
