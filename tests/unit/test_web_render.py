"""The web page's rendering, as pure functions: what comes from task files and runs is escaped,
statuses are words as well as colours, times are UTC until the script localises them, and needs
are drawn in the order runs go."""

from __future__ import annotations

import json

from runner.http.web import graph, pages
from runner.http.web.html import status_badge, when
from runner.models import LastRun, Run, RunStatus, Source, StoredTask, TaskSpec, TaskType

EVIL = '<script>alert("x")</script>'


def task(name: str = "t", **more: object) -> StoredTask:
    fields: dict[str, object] = {"command": "echo", **more}
    spec = TaskSpec(name=name, type=TaskType.SHELL, source=Source("tasks.d/a.yaml", 3), **fields)  # type: ignore[arg-type]
    return StoredTask(name, spec, True, None)


def test_what_comes_from_files_and_runs_is_escaped() -> None:
    data = pages.TaskPage(
        task=task(description=EVIL, command=EVIL, tags=(EVIL,)), schedule=None, next_fire_at=None,
        parameters=[pages.Parameter(EVIL, "str", json.dumps(EVIL), ["string"])], needs={}, nodes=["t"], known={"t"},
        history=[], next_before=None, durations=[], allow_trigger=True,
    )
    html = pages.task_page(data)
    assert "<script" not in html and "&lt;script&gt;" in html
    run = Run(id="a" * 32, task="t", type=TaskType.SHELL, status=RunStatus.FAILED, attempt=1, parameters={"p": EVIL},
              trigger="api", parent_id=None, queued_at=0.0, stdout=EVIL, stderr=EVIL, error={"type": EVIL, "message": EVIL, "traceback": EVIL})
    html = pages.run_page(pages.RunPage(run, [], [run], {}))
    assert "<script" not in html


def test_a_status_is_a_word_on_a_colour() -> None:
    assert status_badge(RunStatus.TIMED_OUT) == '<span class="badge s-bad" data-status="timed_out">timed out</span>'
    strip = pages._strip([LastRun("b" * 32, RunStatus.FAILED, 0.0), LastRun("c" * 32, RunStatus.SUCCEEDED, 0.0)])
    assert '<span class="vh">failed</span>' in strip and '<span class="vh">succeeded</span>' in strip


def test_times_are_utc_with_their_iso_form() -> None:
    assert when(0.5) == (
        '<time datetime="1970-01-01T00:00:00.500+00:00" title="1970-01-01 00:00:00 UTC">1970-01-01 00:00:00 UTC</time>'
    )
    assert when(None) == "\u2013"


def test_task_states_as_a_person_names_them() -> None:
    assert pages.task_state(task()) == "enabled"
    off = task()
    assert pages.task_state(StoredTask("t", off.spec, False, "declared")) == "disabled"
    assert pages.task_state(StoredTask("t", off.spec, False, "orphaned: no module")) == "orphaned"
    assert pages.task_state(StoredTask("t", off.spec, False, "invalid: bad annotation")) == "invalid"
    assert pages.task_state(StoredTask("t", off.spec, False, "declared", removed=True)) == "removed"


def test_needs_are_drawn_in_columns_in_the_order_runs_go() -> None:
    needs = {"load": ["extract"], "report": ["load", "extract"], "extract": [], "mail": ["report"], "other": []}
    assert graph.columns(["extract", "load", "report", "mail"], needs) == [["extract"], ["load"], ["report"], ["mail"]]
    nodes, among = graph.neighbourhood("load", needs)
    assert nodes == ["extract", "load", "mail", "report"] and "other" not in among
    assert graph.columns(["a", "b"], {"a": ["b"], "b": ["a"]}) in ([["b"], ["a"]], [["a"], ["b"]])  # a cycle is cut
    drawn = graph.draw(["extract", "load"], needs, lambda n: n, label="x")
    assert drawn.index("extract") < drawn.index("load") and "after extract" in drawn
