"""The web page without a browser: what a client that runs no script gets from a real daemon
(every page is a permalink with its content in the HTML), the headers every answer carries, bad
input answered with a page instead of a traceback, and the read auth of ``--http-auth-read``
as a browser meets it (HTTP Basic, the token as the password). The browser itself is in
tests/browser/test_web.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from conftest import Cli, ProjectDir, ok

from tests.acceptance.test_http import TOKEN, Api, make_project

pytestmark = pytest.mark.timeout(60)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Cli]]:
    cli = Cli(make_project(tmp_path_factory.mktemp("web") / "project"))
    served = Api(cli, "--no-watch")
    yield served, cli
    served.close()
    cli.cleanup()


def html(response: httpx.Response, status: int = 200) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "Traceback" not in response.text
    return response.text


def test_every_page_is_whole_without_javascript(site: tuple[Api, Cli]) -> None:
    served, cli = site
    ok(cli("run", "add", "-p", "a=40"))
    ok(cli("run", "hello"))
    add_run = cli.runs("--task", "add")[0]["id"]

    overview = html(served.get("/"))
    for name, state in (("add", "enabled"), ("off", "disabled"), ("orphan", "orphaned"), ("gated", "enabled")):
        row = re.search(rf'<tr><th scope="row"><a href="/tasks/{name}">{name}</a></th>(.*?)</tr>', overview)
        assert row is not None and f">{state}<" in row.group(1), name
    assert "tasks.d/a.yaml:7" in overview
    assert re.search(r"task files synced <time datetime=", overview)
    assert '<span class="vh">succeeded</span>' in overview  # the strip says it in words too
    assert re.search(r"<script(?![^>]*\bsrc=)", overview) is None  # no inline script
    assert " style=" not in overview
    assert [m for m in re.findall(r'href="/tasks/([^"]+)"', html(served.get("/?state=orphaned")))] == ["orphan"]
    assert re.findall(r'<th scope="row"><a href="/tasks/([^"]+)"', html(served.get("/?q=AD"))) == ["add"]

    task = html(served.get("/tasks/add"))
    assert re.search(r'<th scope="row" class="mono">a</th><td class="mono">int</td><td class="mono">1</td>', task)
    assert "plugins.calc:add" in task and add_run[-8:] in task
    assert 'id="trigger"' not in task  # read-only: no form without --http-allow-trigger

    runs = html(served.get("/runs"))
    assert add_run in runs
    assert '<time datetime="' in runs and " UTC</time>" in runs  # UTC until the script shows local time
    assert add_run not in html(served.get("/runs?task=hello"))
    assert add_run in html(served.get("/runs?status=succeeded&task=add"))
    assert add_run not in html(served.get("/runs?status=failed"))

    run = html(served.get(f"/runs/{add_run}"))
    assert '<pre class="code">42</pre>' in run and "&quot;a&quot;: 40" in run and "succeeded" in run
    assert "data-events" not in run  # finished: nothing to follow


def test_bad_input_gets_a_page_saying_what_is_wrong(site: tuple[Api, Cli]) -> None:
    served, _cli = site
    assert "No task named" in html(served.get("/tasks/nope"), 404)
    assert "is not a run id" in html(served.get("/runs/xyz"), 404)
    assert "No run" in html(served.get("/runs/" + "0" * 32), 404)
    assert "status must be one of" in html(served.get("/runs?status=bogus"), 400)
    assert "No run" in html(served.get("/runs?before=" + "0" * 32), 404)
    assert "offset must be" in html(served.get("/?offset=-1"), 400)
    assert "given 2 times" in html(served.get("/?q=a&q=b"), 400)
    assert "state must be" in html(served.get("/?state=asleep"), 400)
    html(served.get("/static/nothing.js"), 404)
    # The API keeps answering problem documents, never a page.
    assert served.get("/api/v1/nothing").headers["content-type"] == "application/problem+json"


def test_files_are_served_by_version_with_the_same_headers(site: tuple[Api, Cli]) -> None:
    served, _cli = site
    page = html(served.get("/"))
    script = re.search(r'<script src="(/static/runner\.js\?v=[0-9a-f]+)" defer>', page)
    assert script is not None
    answer = served.get(script.group(1))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert served.get("/static/runner.js?v=old").headers["cache-control"] == "no-cache"


def test_read_auth_asks_a_browser_for_the_token_and_never_lets_it_trigger(project: ProjectDir, cli: Cli) -> None:
    make_project(project.root)
    served = Api(cli, "--http-auth-read", "--http-allow-trigger", "--no-watch")
    basic = httpx.BasicAuth("anyone", TOKEN)
    to_login = served.get("/runs?task=add")
    assert to_login.status_code == 303 and to_login.headers["location"] == "/login?next=/runs%3Ftask%3Dadd"
    asked = served.get("/login?next=/runs")
    assert asked.status_code == 401 and asked.headers["www-authenticate"] == 'Basic realm="runner", charset="UTF-8"'
    assert served.get("/-/status").status_code == 401
    assert served.get("/login?next=/runs", auth=basic).headers["location"] == "/runs"
    assert served.get("/login?next=//elsewhere.example/", auth=basic).headers["location"] == "/"
    assert served.get("/", auth=httpx.BasicAuth("anyone", "wrong")).status_code == 303
    assert "add" in html(served.get("/", auth=basic))
    assert served.get("/api/v1/tasks", auth=basic).json()["tasks"][0]["name"] == "add"
    assert served.get("/health", auth=basic).json()["store"]["ok"] is True
    # A browser sends Basic credentials by itself, so another site's form could ride on them:
    # a trigger takes the bearer token only.
    assert served.post("/api/v1/tasks/hello/runs", auth=basic).status_code == 401
    assert served.trigger("hello").status_code == 202
    assert 'id="trigger"' in html(served.get("/tasks/hello", auth=basic))
    assert served.close() == 0
