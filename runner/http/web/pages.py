"""The pages, as pure functions from what the store and the daemon know to HTML.

``views.py`` reads (indexed queries, a page at a time) and calls these; nothing here touches
the store, so a page renders the same for the same data.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runner.http.web import graph
from runner.http.web.html import (
    STATUS_CLASS,
    attr,
    definition_list,
    duration,
    esc,
    json_block,
    link,
    query_string,
    state_badge,
    status_badge,
    when,
)
from runner.models import LastRun, Run, RunStatus, StoredTask, TaskType

NONE = '<span class="muted">\u2013</span>'
STATES = ("enabled", "disabled", "orphaned", "invalid", "removed")


def task_state(task: StoredTask) -> str:
    if task.removed:
        return "removed"
    if task.enabled:
        return "enabled"
    reason = (task.disabled_reason or "").partition(":")[0]
    return reason if reason in ("orphaned", "invalid") else "disabled"


def short(run_id: str) -> str:
    return run_id[-8:]


def run_link(run_id: str) -> str:
    return f'<a class="mono" href="/runs/{esc(run_id)}" title="{esc(run_id)}">{esc(short(run_id))}</a>'


def task_link(name: str) -> str:
    return link(f"/tasks/{name}", name)


# -- the corner and the banner --------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    store_ok: bool
    queued: int | None
    problems: tuple[str, ...]
    failed_at: float | None
    last_ok_at: float | None


def health_corner(health: Health) -> str:
    state = "ok" if health.store_ok and not health.problems else ("bad" if not health.store_ok else "warn")
    words = "up" if health.store_ok else "store unreachable"
    if health.problems:
        words += ", reload failed"
    queue = f" · queue {health.queued}" if health.queued is not None else ""
    return (
        f'<div id="health" class="health" role="status">'
        f'<span class="badge s-{state}">{esc(words)}</span> leader{queue}</div>'
    )


def sync_banner(health: Health) -> str:
    if not health.problems:
        return '<div id="sync" hidden></div>'
    items = "".join(f'<li class="mono">{esc(problem)}</li>' for problem in health.problems)
    return (
        f'<div id="sync" class="alert" role="alert"><strong>The last reload of the task files failed</strong> '
        f"({when(health.failed_at)}); the last good definitions keep running. Fix these and save:"
        f"<ul>{items}</ul></div>"
    )


# -- overview ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OverviewRow:
    task: StoredTask
    schedule: str | None
    next_fire_at: float | None
    last: list[LastRun]


@dataclass(frozen=True)
class Overview:
    rows: list[OverviewRow]
    total: int  # tasks that match the filter
    offset: int
    per_page: int
    counts: dict[RunStatus, int]  # runs queued in the last 24 h, by status
    states: dict[str, int]  # every task, by state
    tags: list[str]
    filters: dict[str, str]
    banner: str
    synced_at: float | None = None  # the last sync of the task files that succeeded


def _strip(last: list[LastRun]) -> str:
    if not last:
        return '<span class="muted">no runs yet</span>'
    cells = "".join(
        f'<a{attr(class_=f"cell s-{_kind(run.status)}", href=f"/runs/{run.id}", title=f"{run.status.value} · {short(run.id)}")}>'
        f'<span class="vh">{esc(run.status.value)}</span></a>'
        for run in reversed(last)
    )
    return f'<span class="strip">{cells}</span> {status_badge(last[0].status)}'


def _kind(status: RunStatus) -> str:
    return STATUS_CLASS[status]


def overview(data: Overview) -> str:
    f = data.filters
    counts = "".join(
        f'<li><a href="/runs{query_string({"status": status.value})}">{status_badge(status)} {data.counts.get(status, 0)}</a></li>'
        for status in RunStatus
        if data.counts.get(status)
    ) or '<li class="muted">none</li>'
    states = " · ".join(f"{n} {esc(state)}" for state, n in data.states.items() if n)
    tag_options = "".join(
        f"<option{attr(value=tag, selected=tag == f.get('tag'))}>{esc(tag)}</option>" for tag in data.tags
    )
    state_options = "".join(
        f"<option{attr(value=state, selected=state == f.get('state'))}>{esc(state)}</option>" for state in STATES
    )
    form = (
        '<form class="filters" method="get" action="/" role="search">'
        f'<label>Name <input type="search" name="q" value="{esc(f.get("q", ""))}"></label>'
        f'<label>Tag <select name="tag"><option value="">any</option>{tag_options}</select></label>'
        f'<label>State <select name="state"><option value="">not removed</option>{state_options}</select></label>'
        '<button type="submit">Filter</button></form>'
    )
    rows = "".join(
        "<tr>"
        f'<th scope="row">{task_link(row.task.name)}</th>'
        f"<td>{state_badge(task_state(row.task))}</td>"
        f"<td>{esc(row.schedule) if row.schedule else NONE}"
        f"{'<br><small>next ' + when(row.next_fire_at) + '</small>' if row.next_fire_at else ''}</td>"
        f"<td>{_strip(row.last)}</td>"
        f'<td class="mono src">{esc(row.task.spec.source)}</td>'
        "</tr>"
        for row in data.rows
    )
    if not rows:
        rows = '<tr><td colspan="5" class="muted">No task matches.</td></tr>'
    return (
        f"{data.banner}"
        '<div class="summary"><h1>Tasks</h1>'
        f'<p class="muted">{states} · task files synced {when(data.synced_at, empty="never")}</p>'
        f'<section aria-label="Runs in the last 24 hours" class="counts"><h2>Last 24 h</h2><ul>{counts}</ul></section></div>'
        f"{form}"
        f'<div id="tasks" data-refresh="5"><table class="grid"><caption class="vh">Tasks</caption>'
        '<thead><tr><th scope="col">Task</th><th scope="col">State</th><th scope="col">Schedule</th>'
        '<th scope="col">Last runs</th><th scope="col" class="src">Source</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>{_pager(data)}</div>"
    )


def _pager(data: Overview) -> str:
    shown = f"{data.offset + 1}\u2013{data.offset + len(data.rows)} of {data.total}" if data.rows else f"0 of {data.total}"
    parts = [f'<span class="muted">{shown}</span>']
    if data.offset > 0:
        parts.insert(0, link("/" + query_string({**data.filters, "offset": str(max(0, data.offset - data.per_page)) or None}), "← previous"))
    if data.offset + data.per_page < data.total:
        parts.append(link("/" + query_string({**data.filters, "offset": str(data.offset + data.per_page)}), "next →"))
    return f'<nav class="pager" aria-label="Pages of tasks">{" ".join(parts)}</nav>'


# -- a task ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: str  # as JSON, or "" when it has none
    json_type: list[str]  # what the trigger form sends: ["string"] sends the text as it is


@dataclass(frozen=True)
class TaskPage:
    task: StoredTask
    schedule: str | None
    next_fire_at: float | None
    parameters: list[Parameter]
    needs: dict[str, list[str]]  # among the tasks in its neighbourhood
    nodes: list[str]
    known: set[str]
    history: list[Run]
    next_before: str | None
    durations: list[tuple[float, float, RunStatus]]
    allow_trigger: bool
    banner: str = ""
    before: str = ""  # the run this page of the history starts after ("": the newest)


def annotation_name(tp: Any) -> str:
    if tp is inspect.Parameter.empty:
        return "any"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def task_page(data: TaskPage) -> str:
    task, spec = data.task, data.task.spec
    rows = [("state", state_badge(task_state(task)) + (f" <small>{esc(task.disabled_reason)}</small>" if task.disabled_reason else "")),
            ("type", esc(spec.type.value))]
    if spec.type is TaskType.SHELL:
        command = spec.command if isinstance(spec.command, str) else json.dumps(list(spec.command or ()))
        rows.append(("command", f'<code class="mono">{esc(command)}</code>'))
    else:
        rows.append(("callable", f'<code class="mono">{esc(spec.callable)}</code>'))
    rows.append(("schedule", esc(data.schedule) if data.schedule else "\u2013"))
    if data.next_fire_at:
        rows.append(("next fire", when(data.next_fire_at)))
    rows += [
        ("source", f'<span class="mono">{esc(spec.source)}</span>'),
        ("timeout", duration(spec.timeout) if spec.timeout else "\u2013"),
        ("retries", f"{spec.retries.count}" + (f", {duration(spec.retries.backoff)} apart" if spec.retries.backoff else "")),
    ]
    if spec.tags:
        rows.append(("tags", " ".join(link("/" + query_string({"tag": tag}), tag, class_="tag") for tag in spec.tags)))
    if spec.env:
        rows.append(("environment", esc(", ".join(sorted(spec.env))) + ' <small class="muted">(values not shown)</small>'))
    definition = {k: v for k, v in spec.definition().items() if k != "env" and v not in (None, [], {})}
    params = "".join(
        f'<tr><th scope="row" class="mono">{esc(p.name)}</th><td class="mono">{esc(p.type)}</td><td class="mono">{esc(p.default) or NONE}</td></tr>'
        for p in data.parameters
    ) or '<tr><td colspan="3" class="muted">It takes no parameters.</td></tr>'

    def box(node: str) -> str:
        cls = "node self" if node == task.name else "node"
        inner = esc(node) if node == task.name or node not in data.known else task_link(node)
        return f'<span class="{cls}">{inner}</span>'

    graph_html = (
        graph.draw(data.nodes, data.needs, box, label=f"what {task.name} needs and what needs it")
        if len(data.nodes) > 1
        else '<p class="muted">It needs no task, and no task needs it.</p>'
    )
    return (
        f"{data.banner}"
        f'<h1>{esc(task.name)} {state_badge(task_state(task))}</h1>'
        + (f'<p class="lead">{esc(spec.description)}</p>' if spec.description else "")
        + '<div class="two">'
        f'<section aria-labelledby="h-def"><h2 id="h-def">Definition</h2>{definition_list(rows)}'
        f'<details><summary>As declared (JSON)</summary>{json_block(definition)}</details></section>'
        f'<section aria-labelledby="h-params"><h2 id="h-params">Parameters</h2><table class="grid"><thead><tr><th scope="col">Name</th><th scope="col">Type</th><th scope="col">Default</th></tr></thead><tbody>{params}</tbody></table>'
        f"{_trigger_form(data)}</section></div>"
        f'<section aria-labelledby="h-graph"><h2 id="h-graph">Needs</h2>{graph_html}</section>'
        f'<section aria-labelledby="h-dur"><h2 id="h-dur">Duration</h2>{duration_chart(data.durations)}</section>'
        f'<section aria-labelledby="h-hist" id="history" data-refresh="3"><h2 id="h-hist">History</h2>{runs_table(data.history, with_task=False)}'
        + _more(f"/tasks/{task.name}", {"before": data.before}, data.next_before)
        + "</section>"
    )


def _trigger_form(data: TaskPage) -> str:
    task = data.task
    if not data.allow_trigger:
        return ""
    if not task.enabled or task.removed:
        return f'<p class="muted">It cannot be triggered now ({esc(task_state(task))}).</p>'
    fields = "".join(
        f'<label>{esc(p.name)} <small class="muted">{esc(p.type)}</small>'
        f'<input{attr(name=p.name, value=(json.loads(p.default) if p.json_type == ["string"] and p.default else p.default), data_json=",".join(p.json_type), autocomplete="off", spellcheck="false")}></label>'
        for p in data.parameters
    )
    return (
        f'<form id="trigger" class="trigger" method="post" data-task="{esc(task.name)}" '
        f'action="/api/v1/tasks/{esc(task.name)}/runs"><h3>Run it now</h3>{fields}'
        '<label>Token <input type="password" id="token" autocomplete="off" required '
        'aria-describedby="token-note"></label>'
        '<p id="token-note" class="muted small">RUNNER_HTTP_TOKEN; kept in this page only, never stored. Values are read as JSON where they parse.</p>'
        '<button type="submit">Trigger</button> <output id="trigger-result" role="status"></output>'
        '<noscript><p class="muted">Triggering needs JavaScript (the token goes in a header).</p></noscript></form>'
    )


def duration_chart(points: Sequence[tuple[float, float, RunStatus]]) -> str:
    """Bars of the durations, oldest left, as inline SVG (coloured by class, no style)."""
    if not points:
        return '<p class="muted">No finished run yet.</p>'
    width, height, gap = 600, 80, 1
    top = max(d for _, d, _ in points) or 1.0
    bar = width / max(len(points), 30)  # a few runs are a few bars, not a wall
    bars = "".join(
        f'<rect class="s-{_kind(status)}" x="{i * bar:.1f}" y="{height - max(1.0, d / top * height):.1f}" '
        f'width="{max(1.0, bar - gap):.1f}" height="{max(1.0, d / top * height):.1f}"><title>{duration(d)}, {esc(status.value)}</title></rect>'
        for i, (_, d, status) in enumerate(points)
    )
    durations = sorted(d for _, d, _ in points)
    median = durations[len(durations) // 2]
    return (
        f'<figure class="chart"><svg viewBox="0 0 {width} {height}" preserveAspectRatio="none" role="img" '
        f'aria-label="Durations of the last {len(points)} runs">{bars}</svg>'
        f"<figcaption>last {len(points)} run{'s' if len(points) > 1 else ''} · median {duration(median)} · longest {duration(top)}</figcaption></figure>"
    )


# -- runs --------------------------------------------------------------------------------


def runs_table(runs: Sequence[Run], *, with_task: bool = True) -> str:
    head = '<th scope="col">Run</th>' + ('<th scope="col">Task</th>' if with_task else "")
    head += (
        '<th scope="col">Status</th><th scope="col" class="hide-narrow">Attempt</th>'
        '<th scope="col" class="hide-narrow">Trigger</th><th scope="col">Queued</th><th scope="col">Duration</th>'
    )
    body = "".join(
        "<tr>"
        f"<td>{run_link(run.id)}</td>"
        + (f"<td>{task_link(run.task)}</td>" if with_task else "")
        + f'<td>{status_badge(run.status)}</td><td class="hide-narrow">{run.attempt}</td><td class="hide-narrow">{esc(run.trigger)}</td>'
        f"<td>{when(run.queued_at)}</td><td>{duration(run.duration_s)}</td></tr>"
        for run in runs
    )
    span = 7 if with_task else 6
    if not body:
        body = f'<tr><td colspan="{span}" class="muted">No runs.</td></tr>'
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _more(path: str, filters: Mapping[str, str | None], before: str | None) -> str:
    parts = []
    if filters.get("before"):
        parts.append(link(path + query_string({**filters, "before": None}), "← newest"))
    if before:
        parts.append(link(path + query_string({**filters, "before": before}), "older →"))
    return f'<nav class="pager" aria-label="Pages of runs">{" ".join(parts)}</nav>' if parts else ""


@dataclass(frozen=True)
class RunsPage:
    runs: list[Run]
    filters: dict[str, str]
    next_before: str | None
    tasks: list[str]
    banner: str = ""


def runs_page(data: RunsPage) -> str:
    f = data.filters
    status_options = "".join(
        f"<option{attr(value=s.value, selected=s.value == f.get('status'))}>{esc(s.value)}</option>" for s in RunStatus
    )
    form = (
        '<form class="filters" method="get" action="/runs" role="search">'
        f'<label>Task <input name="task" list="task-names" value="{esc(f.get("task", ""))}"></label>'
        f'<datalist id="task-names">{"".join(f"<option value={chr(34)}{esc(n)}{chr(34)}></option>" for n in data.tasks)}</datalist>'
        f'<label>Status <select name="status"><option value="">any</option>{status_options}</select></label>'
        f'<label>Invocation <input name="invocation" class="mono" size="12" value="{esc(f.get("invocation", ""))}"></label>'
        '<button type="submit">Filter</button></form>'
    )
    return (
        f'{data.banner}<h1>Runs</h1>{form}<div id="runs" data-refresh="2">{runs_table(data.runs)}'
        f"{_more('/runs', f, data.next_before)}</div>"
    )


# -- a run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPage:
    run: Run
    output: list[tuple[str, str, str]]  # (stream, level, text) rows so far, for a run still going
    workflow: list[Run]  # its invocation's runs (just itself when alone)
    needs: dict[str, list[str]]
    banner: str = ""
    allow_cancel: bool = False  # the daemon takes cancels (--http-allow-trigger)


def _cancel_form(run: Run) -> str:
    """Hidden until the script shows it: without JavaScript the token cannot go in a header."""
    return (
        f'<form id="cancel" class="trigger" method="post" action="/api/v1/runs/{esc(run.id)}/cancel" hidden>'
        '<label>Token <input type="password" id="cancel-token" autocomplete="off" required></label> '
        '<button type="submit">Cancel this run</button> <output id="cancel-result" role="status"></output></form>'
    )


def run_page(data: RunPage) -> str:
    run = data.run
    live = run.status in (RunStatus.QUEUED, RunStatus.RUNNING)
    facts = [
        ("status", status_badge(run.status, data_live="status")),
        ("task", task_link(run.task)),
        ("attempt", str(run.attempt)),
        ("trigger", esc(run.trigger)),
    ]
    if run.parent_id:
        facts.append(("started by", run_link(run.parent_id)))
    if run.invocation:
        facts.append(("invocation", link(f"/runs?invocation={run.invocation}", short(run.invocation), class_="mono")))
    if run.scheduled_for:
        facts.append(("scheduled for", when(run.scheduled_for)))
    facts += [
        ("queued", when(run.queued_at)),
        ("started", when(run.started_at)),
        ("finished", when(run.finished_at)),
        ("duration", duration(run.duration_s)),
    ]
    if run.exit_code is not None:
        facts.append(("exit code", str(run.exit_code)))
    if run.host:
        facts.append(("host", esc(run.host)))
    if run.git_commit or run.revision:
        facts.append(("revision", f'<span class="mono">{esc((run.git_commit or run.revision or "")[:12])}</span>'))
    if run.queue:
        facts.append(("queue", esc(run.queue)))
    if live:
        stdout = "".join(text for stream, _, text in data.output if stream == "stdout")
        stderr = "".join(text for stream, _, text in data.output if stream == "stderr")
        logs = [(level, text) for stream, level, text in data.output if stream == "log"]
    else:
        stdout, stderr = run.stdout or "", run.stderr or ""
        logs = [(line.level, line.message) for line in run.logs]
    log_html = "".join(f'<span class="lvl-{esc(level.lower())}">{esc(level)}</span> {esc(text)}\n' for level, text in logs)
    events = f"/api/v1/runs/{run.id}/events" if live else None
    streams = (
        f'<section aria-labelledby="h-out" id="output"{attr(data_events=events)}>'
        f'<h2 id="h-out">Output{" <small class=live>following</small>" if live else ""}</h2>'
        f'<h3>stdout</h3><pre class="out" id="stdout" tabindex="0" role="log" aria-label="stdout">{esc(stdout)}</pre>'
        f'<h3>stderr</h3><pre class="out err" id="stderr" tabindex="0" role="log" aria-label="stderr">{esc(stderr)}</pre>'
        f'<h3>log</h3><pre class="out" id="log" tabindex="0" role="log" aria-label="log lines">{log_html}</pre></section>'
    )
    result = ""
    if run.result is not None:
        result = f'<section aria-labelledby="h-res"><h2 id="h-res">Result</h2>{json_block(run.result)}</section>'
    error = ""
    if run.error:
        trace = run.error.get("traceback")
        error = (
            f'<section aria-labelledby="h-err" class="error"><h2 id="h-err">Error</h2>'
            f'<p><strong>{esc(run.error.get("type", "error"))}</strong>: {esc(run.error.get("message", ""))}</p>'
            + (f'<pre class="out err" tabindex="0">{esc(trace)}</pre>' if trace else "")
            + "</section>"
        )
    workflow = ""
    if len(data.workflow) > 1:
        by_task: dict[str, Run] = {}
        for other in data.workflow:  # newest first: keep each task's latest attempt
            by_task.setdefault(other.task, other)

        def box(name: str) -> str:
            other = by_task[name]
            cls = "node self" if other.id == run.id else "node"
            return f'<span class="{cls}">{link(f"/runs/{other.id}", name)} {status_badge(other.status)}</span>'

        workflow = (
            f'<section aria-labelledby="h-wf"><h2 id="h-wf">Workflow</h2>'
            f"{graph.draw(sorted(by_task), data.needs, box, label='the runs of this invocation')}</section>"
        )
    return (
        f"{data.banner}"
        f'<div id="run"><h1>{esc(run.task)} <span class="mono muted">{esc(short(run.id))}</span> {status_badge(run.status, data_live="status")}</h1>'
        f'{_cancel_form(run) if live and data.allow_cancel else ""}'
        f'<div class="two"><section aria-labelledby="h-facts"><h2 id="h-facts">Run</h2>{definition_list(facts)}</section>'
        f'<section aria-labelledby="h-params"><h2 id="h-params">Parameters</h2>{json_block(dict(run.parameters))}</section></div>'
        f"{workflow}{streams}{result}{error}</div>"
    )


def not_found(what: str) -> str:
    return f'<h1>Not found</h1><p>{esc(what)}</p><p>{link("/", "All tasks")} · {link("/runs", "All runs")}</p>'
