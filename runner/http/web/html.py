"""HTML as Python strings: escaping, the page shell, and the small pieces every page shares.

Everything that came from a task file, a run or a request goes through :func:`esc` (or
:func:`attr`); the rest is this package's own markup. No inline script or style anywhere: the
Content-Security-Policy (``views.py``) forbids both, so the markup carries data in ``data-``
attributes and classes, and ``static/runner.js`` and ``static/runner.css`` do the rest.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from runner.models import RunStatus, format_duration


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def attr(**values: object) -> str:
    """`` name="value"`` pairs (``data_x`` becomes ``data-x``); None and False are left out,
    True is a bare attribute."""
    out = []
    for key, value in values.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        out.append(f" {name}" if value is True else f' {name}="{esc(value)}"')
    return "".join(out)


def link(href: str, text: str, **more: object) -> str:
    return f"<a{attr(href=href, **more)}>{esc(text)}</a>"


# -- static files -------------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    version: str  # a digest of the body: its URL changes with it, so it may be cached for good


_MEDIA = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def load_assets() -> dict[str, Asset]:
    found = {}
    for entry in resources.files("runner.http.web").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if suffix in _MEDIA:
            body = entry.read_bytes()
            found[entry.name] = Asset(body, _MEDIA[suffix], hashlib.sha256(body).hexdigest()[:12])
    return found


ASSETS = load_assets()


def asset_url(name: str) -> str:
    return f"/static/{name}?v={ASSETS[name].version}"


# -- shared pieces ------------------------------------------------------------------------

STATUS_CLASS = {
    RunStatus.QUEUED: "queued",
    RunStatus.RUNNING: "running",
    RunStatus.SUCCEEDED: "ok",
    RunStatus.FAILED: "bad",
    RunStatus.TIMED_OUT: "bad",
    RunStatus.CANCELLED: "warn",
    RunStatus.INTERRUPTED: "warn",
    RunStatus.SKIPPED: "muted",
}


def status_badge(status: RunStatus | str, **more: object) -> str:
    """A status as a word on a coloured ground: readable without the colour."""
    status = RunStatus(status)
    return f'<span{attr(class_=f"badge s-{STATUS_CLASS[status]}", data_status=status.value, **more)}>{esc(status.value.replace("_", " "))}</span>'


def state_badge(state: str) -> str:
    kind = {"enabled": "ok", "disabled": "muted", "orphaned": "warn", "invalid": "bad", "removed": "muted"}[state]
    return f'<span class="badge s-{kind}">{esc(state)}</span>'


def when(timestamp: float | None, *, empty: str = "\u2013") -> str:
    """A time as UTC text with its ISO form: runner.js shows it in the viewer's zone, with the
    UTC time on hover; without the script it stays UTC."""
    if timestamp is None:
        return esc(empty)
    moment = datetime.fromtimestamp(timestamp, UTC)
    return (
        f'<time datetime="{moment.isoformat(timespec="milliseconds")}" title="{moment:%Y-%m-%d %H:%M:%S} UTC">'
        f"{moment:%Y-%m-%d %H:%M:%S} UTC</time>"
    )


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "\u2013"
    if seconds < 10:
        return f"{seconds:.2f}s"
    return format_duration(round(seconds)) if seconds >= 60 else f"{seconds:.1f}s"


def json_block(value: Any, **more: object) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)
    return f"<pre{attr(class_='code', **more)}>{esc(text)}</pre>"


def definition_list(rows: Iterable[tuple[str, str]], **more: object) -> str:
    """A ``<dl>`` of (label, already-escaped HTML) pairs."""
    body = "".join(f"<dt>{esc(label)}</dt><dd>{value}</dd>" for label, value in rows)
    return f"<dl{attr(class_='facts', **more)}>{body}</dl>"


def query_string(params: Mapping[str, str | None]) -> str:
    from urllib.parse import urlencode

    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(kept) if kept else ""


def page(title: str, body: str, *, health: str, current: str = "", status: str = "") -> str:
    """A whole document around ``body`` (already HTML); ``status``: the digest of its corner and
    reload banner, which the page's first ``/-/status`` poll sends so that it waits for a change."""

    def nav(href: str, label: str, key: str) -> str:
        return link(href, label, aria_current="page" if current == key else None)

    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        + (f'<meta name="runner-status" content="{esc(status)}">' if status else "")
        + f"<title>{esc(title)} · runner</title>"
        f'<link rel="stylesheet" href="{asset_url("runner.css")}">'
        f'<link rel="icon" href="{asset_url("icon.svg")}" type="image/svg+xml">'
        f'<script src="{asset_url("runner.js")}" defer></script>'
        "</head><body>"
        '<header class="top"><a class="brand" href="/">runner</a>'
        f'<nav aria-label="Pages">{nav("/", "Tasks", "tasks")}{nav("/runs", "Runs", "runs")}</nav>'
        f"{health}</header>"
        f'<main id="main">{body}</main></body></html>'
    )
