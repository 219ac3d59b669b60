"""`runner daemon --http`: a real daemon process serving the API on a free loopback port (port
0, the bound port read from its log), driven with httpx as a client would: reads, paging,
triggers and their refusals, an event stream followed to a run's end, health, metrics and auth.
schemathesis against the daemon's own /openapi.json is in test_http_openapi.py, the connection
limits in test_http_limits.py.

One daemon serves every test that reads or triggers (module scope); tests that need other
options start their own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Cli, ProjectDir, ok, poll

from tests.acceptance.test_daemon import Daemon

pytestmark = pytest.mark.timeout(60)

TOKEN = "t0ken-for-tests"
GATED = """sh -c 'echo before; until [ -e gate ]; do sleep 0.01; done; echo after; echo oops >&2'"""

TASKS = f"""
    version: 1
    tasks:
      hello:
        command: echo hello
      gated:
        command: {json.dumps(GATED)}
      add:
        type: python
        callable: plugins.calc:add
        parameters: {{a: 1, b: 2}}
      off:
        command: echo off
        enabled: false
      orphan:
        type: python
        callable: plugins.nowhere:gone
"""

CALC = """
    def add(a: int, b: int) -> int:
        return a + b
"""


class Api:
    """A daemon with --http and a client on it."""

    def __init__(self, cli: Cli, *args: str, token: str | None = TOKEN) -> None:
        env = {"RUNNER_HTTP_TOKEN": token} if token else {}
        self.daemon = Daemon.__new__(Daemon)
        self.daemon.cli = cli
        self.daemon.log_path = cli.project.root / f"daemon-{len(cli.started)}.log"
        self.daemon.log_file = self.daemon.log_path.open("w")
        self.daemon.process = cli.start(
            "--log-format", "json", "daemon", "--http", "127.0.0.1:0", *args, env=env, stderr=self.daemon.log_file
        )
        (started,) = self.daemon.wait_for("http_started")
        self.base = f"http://127.0.0.1:{started['port']}"
        self.client = httpx.Client(base_url=self.base, timeout=10)
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, **kwargs)

    def trigger(self, task: str, **body: Any) -> httpx.Response:
        return self.post(f"/api/v1/tasks/{task}/runs", json=body, headers=self.auth)

    def wait_run(self, run_id: str) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            run: dict[str, Any] = self.get(f"/api/v1/runs/{run_id}").json()
            return run if run["status"] not in ("queued", "running") else None

        return poll(final, within=10, what=f"run {run_id} to end")

    def close(self) -> int:
        self.client.close()
        return self.daemon.stop()


def make_project(root: Path) -> ProjectDir:
    project = ProjectDir(root)
    project.tasks("a.yaml", TASKS)
    project.plugin("calc", CALC)
    return project


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    cli = Cli(make_project(tmp_path_factory.mktemp("http") / "project"))
    served = Api(cli, "--http-allow-trigger", "--no-watch")
    yield served
    served.close()
    cli.cleanup()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


# -- reading --------------------------------------------------------------------------------------


def test_tasks_as_runner_list_prints_them(api: Api) -> None:
    tasks = api.get("/api/v1/tasks").json()["tasks"]
    assert [t["name"] for t in tasks] == ["add", "gated", "hello", "off", "orphan"]
    assert {t["name"] for t in api.get("/api/v1/tasks?enabled=false").json()["tasks"]} == {"off", "orphan"}
    assert {t["name"] for t in api.get("/api/v1/tasks", params={"enabled": "true"}).json()["tasks"]} == {"add", "gated", "hello"}
    add = api.get("/api/v1/tasks/add").json()
    assert add == {
        "name": "add", "type": "python", "enabled": True, "disabled_reason": None, "callable": "plugins.calc:add",
        "parameters": {"a": 1, "b": 2}, "needs": [], "schedule": None, "source": "tasks.d/a.yaml:7",
    }
    assert api.get("/api/v1/tasks/orphan").json()["disabled_reason"].startswith("orphaned: ")
    assert "not declared" not in problem(api.get("/api/v1/tasks/nope"), 404)["detail"]
    problem(api.get("/api/v1/tasks/bad%20name"), 404)
    problem(api.get("/api/v1/tasks?enabled=yes"), 400)
    problem(api.get("/api/v1/nothing-here"), 404)
    problem(api.client.delete("/api/v1/tasks/add"), 405)


def test_runs_page_newest_first_and_bad_queries_are_400(api: Api) -> None:
    ids = [api.trigger("hello").json()["id"] for _ in range(5)]
    for run_id in ids:
        api.wait_run(run_id)
    first = api.get("/api/v1/runs", params={"task": "hello", "limit": 2}).json()
    seen = [r["id"] for r in first["runs"]]
    following = first["next"]
    while following:
        page = api.get(following).json()
        seen += [r["id"] for r in page["runs"]]
        following = page["next"]
    assert seen[:5] == ids[::-1] and len(seen) == len(set(seen))
    whole = api.get("/api/v1/runs", params={"task": "hello", "limit": len(seen)}).json()
    assert [r["id"] for r in whole["runs"]] == seen and whole["next"] is None  # full, and the last
    assert {r["status"] for r in api.get("/api/v1/runs?status=succeeded&task=hello").json()["runs"]} == {"succeeded"}

    run = api.get(f"/api/v1/runs/{ids[0]}").json()
    assert run["stdout"] == "hello\n" and run["exit_code"] == 0 and run["logs"] == [] and run["trigger"] == "api"

    for query in ("limit=0", "limit=501", "limit=ten", "limit=1&limit=2", "status=done", "before=xyz", "task=bad%20name"):
        problem(api.get(f"/api/v1/runs?{query}"), 400)
    problem(api.get("/api/v1/runs?task=nope"), 404)
    problem(api.get(f"/api/v1/runs?before={'0' * 32}"), 404)
    problem(api.get("/api/v1/runs/not-a-run-id"), 404)
    assert "no run with id" in problem(api.get(f"/api/v1/runs/{'0' * 32}"), 404)["detail"]
    problem(api.get(f"/api/v1/runs/{'0' * 32}/events"), 404)


# -- triggering and following -------------------------------------------------------------------


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parsed SSE events: {"event", "data", "id"}."""
    current: dict[str, Any] = {}
    for line in lines:
        if not line:
            if current:
                yield current
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value


def test_a_triggered_run_is_followed_by_its_event_stream_to_its_end(api: Api) -> None:
    gate = api.daemon.cli.project.root / "gate"
    gate.unlink(missing_ok=True)
    accepted = api.trigger("gated")
    assert accepted.status_code == 202
    run_id = accepted.json()["id"]
    assert accepted.headers["location"] == f"/api/v1/runs/{run_id}"

    seen: list[dict[str, Any]] = []
    with api.client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in events(response.iter_lines()):
            seen.append(event)
            if event["event"] == "output" and event["data"]["text"] == "before\n":
                gate.touch()  # the task waits for this: the stream must have shown "before" first
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "status" and seen[0]["data"]["status"] in ("queued", "running")
    ids = [int(e["id"]) for e in seen]  # every event has one, and they never go down
    assert len(ids) == len(seen) and ids == sorted(ids)
    assert kinds[-2:] == ["status", "end"] and seen[-1]["data"] == {"run_id": run_id, "status": "succeeded"}
    output = [(e["data"]["stream"], e["data"]["text"]) for e in seen if e["event"] == "output"]
    assert "".join(t for s, t in output if s == "stdout") == "before\nafter\n"
    assert ("stderr", "oops\n") in output
    assert seen[-2]["data"]["stdout"] == "before\nafter\n"

    # A late client gets the status first (final already), then what happened, then the end.
    late = list(events(api.client.get(f"/api/v1/runs/{run_id}/events").text.splitlines()))
    assert late[0]["event"] == "status" and late[0]["data"]["status"] == "succeeded" and late[0]["id"] == "0"
    assert [e["event"] for e in late if e["event"] != "output"] == ["status", "status", "end"]
    assert [e["data"] for e in late if e["event"] == "output"] == [e["data"] for e in seen if e["event"] == "output"]
    assert late[-1]["id"] == late[-2]["id"] == seen[-1]["id"]  # the last row's id: nothing after it
    # Last-Event-ID resumes after a row, whichever event carried the id.
    first_id = next(e["id"] for e in late if e["event"] == "output")
    resumed = list(events(api.client.get(f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": first_id}).text.splitlines()))
    texts = [e["data"]["text"] for e in resumed if e["event"] == "output"]
    assert "before\n" not in texts and "after\n" in texts and resumed[0]["id"] == first_id
    after_end = api.client.get(f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": late[-1]["id"]}).text
    assert [e["event"] for e in events(iter(after_end.splitlines()))] == ["status", "status", "end"]
    for bad in ("x", "-1", str(2**63), str(2**64), "1" * 5000, "\uff11".encode()):
        problem(api.client.get(f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": bad}), 400)
    assert api.get("/health").status_code == 200  # and the daemon logged no traceback for them
    assert not api.daemon.events("http_error")


def test_python_trigger_with_parameters_and_every_refusal(api: Api) -> None:
    run = api.wait_run(api.trigger("add", parameters={"a": 40}).json()["id"])
    assert run["status"] == "succeeded" and run["result"] == 42 and run["parameters"] == {"a": 40, "b": 2}

    url = "/api/v1/tasks/add/runs"
    assert problem(api.post(url, json={}), 401)
    assert api.post(url, json={}).headers["www-authenticate"].startswith("Bearer")
    problem(api.post(url, json={}, headers={"Authorization": "Bearer wrong"}), 401)
    problem(api.post(url, json={}, headers={"Authorization": f"Basic {TOKEN}"}), 401)
    assert "not declared" in problem(api.trigger("nope"), 404)["detail"]
    assert "disabled" in problem(api.trigger("off"), 409)["detail"]
    assert "orphaned" in problem(api.trigger("orphan"), 409)["detail"]
    assert "'c'" in problem(api.trigger("add", parameters={"c": 1}), 422)["detail"]
    assert "'x'" in problem(api.trigger("hello", parameters={"x": 1}), 422)["detail"]  # hello declares none
    problem(api.trigger("add", parameters={"a": "forty"}), 422)
    problem(api.trigger("add", parameters=[1]), 422)
    problem(api.trigger("add", extra=1), 422)
    headers = {**api.auth, "Content-Type": "application/json"}
    problem(api.post(url, content=b"{not json", headers=headers), 400)
    problem(api.post(url, content=b'{"parameters": {"a": NaN}}', headers=headers), 400)
    problem(api.post(url, content=b"[" * 100_00 + b"]" * 100_00, headers=headers), 400)
    problem(api.post(url, content=b"\xff\xfe", headers=headers), 400)
    problem(api.post(url, content=b"[]", headers=headers), 422)
    problem(api.post(url, content=b'{"a": 1}', headers={**api.auth, "Content-Type": "text/plain"}), 415)
    problem(api.post(url, content=b" " + b"0" * 70_000, headers=headers), 413)
    # Nothing refused was recorded.
    assert {r["status"] for r in api.get("/api/v1/runs?task=add&limit=500").json()["runs"]} == {"succeeded"}


# -- health, metrics, the document -------------------------------------------------------------


def test_a_running_run_is_cancelled_over_http_with_the_token(api: Api) -> None:
    (api.daemon.cli.project.root / "gate").unlink(missing_ok=True)
    run_id = api.trigger("gated").json()["id"]
    url = f"/api/v1/runs/{run_id}/cancel"
    poll(lambda: api.get(f"/api/v1/runs/{run_id}").json()["status"] == "running", what="the run to start")
    problem(api.post(url), 401)
    problem(api.post(url, headers={"Authorization": "Bearer nope"}), 401)
    problem(api.post("/api/v1/runs/0123456789abcdef0123456789abcdef/cancel", headers=api.auth), 404)
    problem(api.post("/api/v1/runs/not-a-run/cancel", headers=api.auth), 404)

    accepted = api.post(url, headers=api.auth)
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["location"] == f"/api/v1/runs/{run_id}"
    assert (accepted.json()["id"], accepted.json()["status"]) == (run_id, "running")
    run = api.wait_run(run_id)
    assert run["status"] == "cancelled"
    assert run["error"]["type"] == "Cancelled"
    conflict = problem(api.post(url, headers=api.auth), 409)
    assert conflict["run_status"] == "cancelled"
    assert "already finished" in conflict["detail"]


def test_health_metrics_and_openapi(api: Api) -> None:
    health = api.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["store"] == {"ok": True, "error": None}
    assert body["sync"]["ok"] and body["sync"]["errors"] == 0 and body["sync"]["last_ok_at"]
    assert body["daemon"]["tasks"] == 5

    api.wait_run(api.trigger("hello").json()["id"])
    metrics = api.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    for expected in ('runner_runs{task="hello",status="succeeded"} ', "runner_queue_depth ",
                     'runner_run_duration_seconds{task="hello",quantile="0.5"} ',
                     'runner_run_duration_seconds_count{task="hello"} ', "runner_sync_errors_total 0",
                     "runner_last_sync_success_timestamp_seconds ", 'runner_tasks{state="enabled"} 3'):
        assert expected in text, text
    document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.") and "/api/v1/runs/{run_id}/events" in document["paths"]
    assert document["paths"]["/api/v1/runs/{run_id}/cancel"]["post"]["security"] == [{"bearer": []}]
    # One trigger operation per task that can run (add, gated, hello; not off or orphan).
    assert {p for p in document["paths"] if p.startswith("/api/v1/tasks/") and p.endswith("/runs")} == {
        "/api/v1/tasks/add/runs", "/api/v1/tasks/gated/runs", "/api/v1/tasks/hello/runs",
    }


# -- other options ---------------------------------------------------------------------------------


def test_read_only_by_default_auth_read_and_sigterm_with_an_open_stream(project: ProjectDir, cli: Cli) -> None:
    project.tasks("a.yaml", TASKS)
    project.plugin("calc", CALC)
    served = Api(cli, "--http-auth-read")
    # Even with the token: triggering is off, and not an operation of this daemon.
    assert problem(served.trigger("hello"), 405)["detail"].startswith("starting runs over HTTP is off")
    off = served.post("/api/v1/runs/0123456789abcdef0123456789abcdef/cancel", headers=served.auth)
    assert problem(off, 405)["detail"].startswith("cancelling runs over HTTP is off")
    problem(served.get("/api/v1/tasks"), 401)
    problem(served.get("/metrics", headers={"Authorization": "Bearer nope"}), 401)
    assert served.get("/api/v1/tasks", headers=served.auth).json()["tasks"][0]["name"] == "add"
    assert served.get("/health").json() == {"status": "ok"}
    assert served.get("/health", headers=served.auth).json()["store"]["ok"] is True
    assert served.get("/openapi.json").status_code == 200

    gate = project.root / "gate"
    run_id = ok(cli("trigger", "gated")).stdout.strip()
    poll(lambda: cli.runs("--task", "gated"), what="the daemon to take up the trigger")  # it claims it when it looks
    with served.client.stream("GET", f"/api/v1/runs/{run_id}/events", headers=served.auth) as response:
        next(response.iter_lines())
        served.daemon.process.send_signal(signal.SIGTERM)
        served.daemon.wait_for("daemon_stopping")
        gate.touch()
        assert served.daemon.process.wait(timeout=15) == 0
    served.client.close()
    served.daemon.log_file.close()
    assert cli.runs("--task", "gated")[0]["status"] == "succeeded"


def test_cli_refuses_bad_http_options(cli: Cli, project: ProjectDir) -> None:
    project.tasks("a.yaml", TASKS)
    for args, env, says in [
        (("--http", "127.0.0.1:http"), {}, "not [HOST:]PORT"),
        (("--http", "70000"), {}, "not [HOST:]PORT"),
        (("--http", ":8080", "--http-allow-trigger"), {}, "RUNNER_HTTP_TOKEN"),
        (("--http", ":8080", "--http-auth-read"), {}, "RUNNER_HTTP_TOKEN"),
        (("--http-allow-trigger",), {"RUNNER_HTTP_TOKEN": "x"}, "need --http"),
        (("--http-max-connections", "5"), {}, "need --http"),
        (("--http", ":8080", "--http-timeout", "0"), {}, "--http-timeout"),
        (("--http", ":8080", "--http-max-connections", "0"), {}, "--http-max-connections"),
    ]:
        result = cli("daemon", *args, env=env)
        assert result.returncode == 2 and says in result.stderr, (args, result.stderr)
    assert not project.db.exists()  # refused before anything else


def test_without_the_extra_http_asks_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from click.testing import CliRunner

    from runner.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    result = CliRunner().invoke(main, ["daemon", "--http", "8080"])
    assert result.exit_code == 2 and "pip install 'runner-tasks[http]'" in result.output


def test_runner_help_does_not_import_the_http_stack() -> None:
    code = "import sys, runner.cli\ntry:\n runner.cli.main(['daemon', '--help'])\nexcept SystemExit: pass\n" \
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'runner.http')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]")
