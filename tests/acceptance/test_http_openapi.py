"""The daemon's /openapi.json describes exactly what it answers: schemathesis ``--checks all``
(its CLI, as a user runs it) passes against a real daemon with triggers off and with triggers on
and a token; each task's trigger operation describes its parameters from the callable's
signature or the task file, and the daemon refuses what the description leaves out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Cli, ProjectDir, poll

from tests.acceptance.test_daemon import Daemon

pytestmark = pytest.mark.timeout(90)

TOKEN = "t0ken-for-openapi"

TASKS = """
    version: 1
    tasks:
      hello:
        command: echo hello
      greet:
        command: 'echo "$PARAM_WHO" "$PARAM_TIMES"'
        parameters: {who: world, times: 2, extra: [1, 2]}
      typed:
        type: python
        callable: plugins.calc:typed
        parameters: {n: 1, ratio: 0.25}
      loose:
        type: python
        callable: plugins.calc:loose
        parameters: {anything: null}
      off:
        command: echo off
        enabled: false
"""

CALC = """
    from typing import Any, Literal

    from runner import RunContext

    def typed(ctx: RunContext, n: int, ratio: float = 0.5, name: str = "x",
              flags: list[bool] | None = None, mode: Literal["a", "b"] = "a", pair: tuple[int, str] = (1, "a")) -> int:
        return n

    def loose(anything, table: dict[str, Any] | None = None, **more: Any) -> None:
        return None
"""


class Served:
    """A daemon with --http on a free port, and a client."""

    def __init__(self, cli: Cli, *args: str, token: str | None = None) -> None:
        self.daemon = Daemon.__new__(Daemon)
        self.daemon.cli = cli
        self.daemon.log_path = cli.project.root / f"daemon-{len(cli.started)}.log"
        self.daemon.log_file = self.daemon.log_path.open("w")
        env = {"RUNNER_HTTP_TOKEN": token} if token else {}
        self.daemon.process = cli.start(
            "--log-format", "json", "daemon", "--no-watch", "--http", "127.0.0.1:0", *args,
            env=env, stdout=subprocess.DEVNULL, stderr=self.daemon.log_file,
        )
        (started,) = self.daemon.wait_for("http_started")
        self.base = f"http://127.0.0.1:{started['port']}"
        self.client = httpx.Client(base_url=self.base, timeout=10)
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def trigger(self, task: str, body: Any) -> httpx.Response:
        return self.client.post(f"/api/v1/tasks/{task}/runs", json=body, headers=self.auth)

    def close(self) -> None:
        self.client.close()
        assert self.daemon.stop() == 0
        assert not self.daemon.events("http_error"), self.daemon.log_path.read_text()


@pytest.fixture
def served(cli: Cli, project: ProjectDir) -> Any:
    project.tasks("a.yaml", TASKS)
    project.plugin("calc", CALC)
    opened: list[Served] = []

    def start(*args: str, token: str | None = None) -> Served:
        opened.append(Served(cli, *args, token=token))
        return opened[-1]

    yield start
    for each in opened:
        if each.daemon.process.poll() is None:
            each.close()


def schemathesis(cwd: Path, base: str, *headers: str, warnings: str | None = None) -> subprocess.CompletedProcess[str]:
    """``schemathesis run --checks all`` on the daemon's own document, small and reproducible
    (run in ``cwd``: it keeps a cache of failures in ./.schemathesis)."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "--no-color", "run", f"{base}/openapi.json",
        "--checks", "all", "--max-examples", "3", "--seed", "12345", "--request-timeout", "3",
        *[arg for header in headers for arg in ("-H", header)],
        *(["--warnings", warnings] if warnings else []),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=80, cwd=cwd)


@pytest.mark.slow  # schemathesis' coverage phase: some 300 requests, each accepted one a run
def test_schemathesis_checks_all_pass_with_triggers_off(served: Any, cli: Cli, tmp_path: Path) -> None:
    # Runs to read: schemathesis follows GET /api/v1/runs to each run and its event stream,
    # and checks every event against the document.
    assert cli("run", "greet").returncode == 0 and cli("run", "typed", "-p", "n=3").returncode == 0
    api = served()
    document = api.client.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert not [path for path in document["paths"] if path.startswith("/api/v1/tasks/") and path.endswith("/runs")]
    refused = api.client.post("/api/v1/tasks/hello/runs", json={})
    assert refused.status_code == 405 and "--http-allow-trigger" in refused.json()["detail"]

    result = schemathesis(tmp_path, api.base)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-6000:]
    api.close()


@pytest.mark.slow  # schemathesis' coverage phase: some 300 requests, each accepted one a run
def test_schemathesis_checks_all_pass_with_triggers_on_and_a_token(served: Any, tmp_path: Path) -> None:
    api = served("--http-allow-trigger", "--http-auth-read", token=TOKEN)
    # Every warning but "missing test data": the run ids cancel is sent, made up, are unknown
    # (404); the runs a trigger queues finish before a cancel comes (409). test_http.py cancels
    # a running one.
    warnings = "missing_auth,base_url_mismatch,validation_mismatch,missing_deserializer,unused_openapi_auth,unsupported_regex,method_not_allowed"
    result = schemathesis(tmp_path, api.base, f"Authorization: Bearer {TOKEN}", warnings=warnings)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-6000:]
    # It did trigger runs, and followed them (the stateful phase reads them back).
    runs = api.client.get("/api/v1/runs?limit=500", headers=api.auth).json()["runs"]
    assert runs and {run["trigger"] for run in runs} == {"api"}
    api.close()


def test_each_task_has_an_operation_describing_its_parameters(served: Any) -> None:
    api = served("--http-allow-trigger", token=TOKEN)
    document = api.client.get("/openapi.json").json()
    paths = document["paths"]
    assert {p for p in paths if p.startswith("/api/v1/tasks/") and p.endswith("/runs")} == {
        "/api/v1/tasks/greet/runs", "/api/v1/tasks/hello/runs", "/api/v1/tasks/loose/runs", "/api/v1/tasks/typed/runs",
    }  # not `off`: it cannot run; no catch-all while every runnable task has its own

    def parameters(task: str) -> dict[str, Any]:
        operation = paths[f"/api/v1/tasks/{task}/runs"]["post"]
        assert operation["security"] == [{"bearer": []}] and "401" in operation["responses"]
        schema: dict[str, Any] = operation["requestBody"]["content"]["application/json"]["schema"]
        return schema["properties"]["parameters"]

    typed = parameters("typed")
    assert "required" not in typed and typed["additionalProperties"] is False
    props = typed["properties"]
    assert set(props) == {"n", "ratio", "name", "flags", "mode", "pair"}  # ctx is injected
    assert props["n"] == {"type": "integer", "default": 1}
    assert props["ratio"] == {"type": "number", "default": 0.25}  # the task file's value
    assert props["name"]["type"] == "string" and props["name"]["default"] == "x"
    assert props["flags"]["anyOf"] == [{"type": "array", "items": {"type": "boolean"}}, {"type": "null"}]
    assert props["mode"]["enum"] == ["a", "b"]
    assert props["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "string", "pattern": "^[^\\x00]*$"}]

    loose = parameters("loose")
    assert loose["properties"]["anything"] == {"$ref": "#/components/schemas/JsonValue", "default": None}
    assert loose["additionalProperties"] == {"$ref": "#/components/schemas/JsonValue"}
    greet = parameters("greet")
    assert set(greet["properties"]) == {"who", "times", "extra"} and greet["additionalProperties"] is False
    assert greet["properties"]["who"]["type"] == ["null", "boolean", "number", "string"]
    assert greet["properties"]["extra"]["$ref"] == "#/components/schemas/JsonValue"
    assert parameters("hello")["properties"] == {}
    events = paths["/api/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert events["schema"] == {"$ref": "#/components/schemas/RunEvent"}
    api.close()


def test_the_daemon_refuses_what_the_operation_leaves_out(served: Any) -> None:
    api = served("--http-allow-trigger", token=TOKEN)

    def refused(task: str, body: Any) -> str:
        response = api.trigger(task, body)
        assert response.status_code == 422, response.text
        detail: str = response.json()["detail"]
        return detail

    assert "'x'" in refused("hello", {"parameters": {"x": 1}})
    assert "unknown parameter" in refused("greet", {"parameters": {"whom": "you"}})
    assert "NUL" in refused("greet", {"parameters": {"who": "a\x00b"}})
    assert "'a-b' is not a valid parameter name" in refused("loose", {"parameters": {"anything": 1, "a-b": 2}})
    assert "NUL" in refused("loose", {"parameters": {"anything": {"deep": ["x\x00"]}}})
    assert "'n'" in refused("typed", {"parameters": {"n": "1"}})
    refused("typed", {"parameters": {"n": 1, "pair": [1, 2]}})
    # What fits runs, as the task file and the body say together.
    accepted = api.trigger("greet", {"parameters": {"who": "you", "extra": {"k": [None]}}})
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["id"]

    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = api.client.get(f"/api/v1/runs/{run_id}").json()
        return run if run["status"] not in ("queued", "running") else None

    run = poll(finished, within=10, what="the run")
    assert run["status"] == "succeeded" and run["stdout"] == "you 2\n"
    assert json.loads(json.dumps(run["parameters"])) == {"who": "you", "times": 2, "extra": {"k": [None]}}
    loose = api.trigger("loose", {"parameters": {"anything": [1, {"a": None}], "free_name": True}})
    assert loose.status_code == 202, loose.text
    api.close()
