"""Fuzz: any JSON (or almost-JSON) as a trigger body gets a 2xx or 4xx answer from a real
daemon, never a 5xx; a 4xx records nothing; the daemon stays up and every run it accepted ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Cli, ProjectDir, poll
from hypothesis import given
from hypothesis import strategies as st

from tests.acceptance.test_http import Api
from tests.fuzz.budget import fuzz

TASKS = """
    version: 1
    tasks:
      show:
        command: 'printf "%s" "$RUNNER_PARAMS"'
      anything:
        type: python
        callable: plugins.calc:anything
      typed:
        type: python
        callable: plugins.calc:typed
"""

CALC = """
    def anything(**parameters: object) -> int:
        return len(parameters)

    def typed(day: str = "x", n: int = 1, items: list[int] | None = None) -> str:
        return day * min(n, 3)
"""

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # lone surrogates and NULs too
names = st.one_of(
    st.sampled_from(["day", "n", "items", "a", "_", "A_1"]), st.text(ANY_CHAR, max_size=6)
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(ANY_CHAR, max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(ANY_CHAR, max_size=4), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.fixed_dictionaries({"parameters": st.dictionaries(names, json_values, max_size=4)}),
    st.fixed_dictionaries({"parameters": json_values}),
    st.dictionaries(st.text(ANY_CHAR, max_size=4), json_values, max_size=3),
    json_values,
)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    project = ProjectDir(tmp_path_factory.mktemp("fuzz") / "project")
    project.tasks("a.yaml", TASKS)
    project.plugin("calc", CALC)
    cli = Cli(project)
    served = Api(cli, "--http-allow-trigger", "--no-watch")
    yield served
    served.close()
    cli.cleanup()


def encoded(body: Any, mangle: int) -> bytes:
    # json.dumps writes NaN and Infinity (not JSON) for such floats, and escapes surrogates.
    raw = json.dumps(body).encode()
    return raw[:mangle] if mangle else raw  # now and then cut short: not JSON at all


accepted = 0


@fuzz()
@given(task=st.sampled_from(["show", "anything", "typed", "nosuch"]), body=bodies, mangle=st.sampled_from([0] * 9 + [3]))
def test_any_trigger_body_is_answered_2xx_or_4xx_and_a_refusal_records_nothing(
    api: Api, task: str, body: Any, mangle: int
) -> None:
    global accepted
    response = api.post(
        f"/api/v1/tasks/{task}/runs",
        content=encoded(body, mangle),
        headers={**api.auth, "Content-Type": "application/json"},
    )
    assert 200 <= response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if response.status_code == 202:
        accepted += 1
    runs = api.get("/api/v1/runs", params={"limit": "500"}).json()["runs"]
    assert len(runs) == accepted


def test_the_daemon_is_up_and_every_accepted_run_ended(api: Api) -> None:
    assert api.get("/health").json()["status"] == "ok"

    def ended() -> list[dict[str, Any]] | None:
        runs: list[dict[str, Any]] = api.get("/api/v1/runs", params={"limit": "500"}).json()["runs"]
        return runs if all(r["status"] not in ("queued", "running") for r in runs) else None

    runs = poll(ended, within=20, what="every accepted run to end")
    assert len(runs) == accepted
    assert all(r["status"] in ("succeeded", "failed") for r in runs)
