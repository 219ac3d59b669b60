"""The task-file schema as generic tools read it: a second validator, Ajv (tests/schema/), in
strict mode with every strict option on, must compile it and agree with jsonschema on good and
bad files; and both must name what is wrong in the shape the value has (an unknown key, not
"expected a string" for a mapping where a string was one of the alternatives).

Needs Node.js and ``npm ci --prefix tests/schema`` (``.ci/run`` does both); skipped elsewhere
when they are missing, failed under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "tasks.schema.json"
AJV = ROOT / "tests" / "schema"


def _ajv(documents: list[Any]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None or not (AJV / "node_modules" / "ajv").is_dir():
        reason = "needs node and `npm ci --prefix tests/schema` (Ajv)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    done = subprocess.run(
        [node, str(AJV / "validate.mjs"), str(SCHEMA)],
        input=json.dumps(documents), capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def _example_files() -> list[Any]:
    from runner.scaffold import TASKS

    files = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "tasks.d").rglob("*.y*ml"))]
    return [*files, yaml.safe_load(TASKS)]


def task(**body: Any) -> dict[str, Any]:
    return {"version": 1, "tasks": {"t": body}}


BAD = [
    task(command="x", schedule={"interval": "5m"}),
    task(command="x", schedule={"cron": "* * * * *", "every": "5m"}),
    task(command="x", schedule={"every": "5m", "timezone": "UTC"}),
    task(command="x", schedule=5),
    task(command="x", retries={"count": 1, "backof": "1s"}),
    task(command="x", retries=-1),
    task(command=5),
    task(command=[]),
    task(type="python", command="x"),
    task(callable="m:f"),
    task(command="x", timeout="soon"),
    task(command="x", cwd="/etc"),
    task(command="x", cwd="a/../.."),
    task(command="x", env={"X": {"from_file": "../secret"}}),
    task(command="x", env={"X": {"from_env": "A", "from_file": "b"}}),
    task(command="x", env={"A=B": "c"}),
    task(command="x\u0000y"),
    task(command="x", parameters={"a b": 1}),
    task(comand="x"),
    {"version": 2, "tasks": {}},
    {"version": 1, "tasks": {"-bad": {"command": "x"}}},
]


def test_ajv_compiles_the_schema_strictly_and_agrees_with_jsonschema() -> None:
    good = [
        *_example_files(),
        task(command=["pg_dump", "app"], schedule={"every": 90, "overlap": "allow"}, retries=2),
        task(command="x", schedule={"cron": "30 2 * * *", "timezone": "Europe/Oslo", "misfire": "skip"}),
        task(type="python", callable="plugins:add", retries={"count": 3, "backoff": "10s"}, timeout=0.5),
        task(command="x", cwd="scripts", env={"T": {"from_file": "/run/secrets/t"}, "U": "v"}),
    ]
    checker = Draft202012Validator(json.loads(SCHEMA.read_text()))
    results = _ajv(good + BAD)
    verdicts = [r["valid"] for r in results]
    assert verdicts == [checker.is_valid(doc) for doc in good + BAD]
    assert verdicts == [True] * len(good) + [False] * len(BAD)


def test_generic_validators_name_the_unknown_key_of_a_mapping_schedule() -> None:
    doc = task(command="x", schedule={"interval": "5m"})
    [result] = _ajv([doc])
    assert {"path": "/tasks/t/schedule", "keyword": "additionalProperties", "message": "must NOT have additional properties",
            "params": {"additionalProperty": "interval"}} in result["errors"]
    assert not [e for e in result["errors"] if e["keyword"] == "type"]  # not "must be string"
    # check-jsonschema prints jsonschema's best match:
    error = best_match(Draft202012Validator(json.loads(SCHEMA.read_text())).iter_errors(doc))
    assert "'interval' was unexpected" in error.message


def test_every_property_and_the_task_name_carry_a_description_and_examples() -> None:
    schema = json.loads(SCHEMA.read_text())
    defs = schema["$defs"]
    described = {
        **{f"file.{k}": v for k, v in schema["properties"].items()},
        **{f"task.{k}": v for k, v in defs["task"]["properties"].items()},
        **{f"schedule.{k}": v for k, v in defs["task"]["properties"]["schedule"]["else"]["properties"].items()},
        "taskName": defs["taskName"], "duration": defs["duration"], "secretRef": defs["secretRef"],
    }
    for where, prop in described.items():
        target = defs[prop["$ref"].rsplit("/", 1)[1]] if set(prop) == {"$ref"} else prop
        assert target.get("description"), where
        assert target.get("examples") or "$ref" in prop, where
