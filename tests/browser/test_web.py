"""The web page in a real headless Chromium, against a real daemon on a loopback port serving
the example project (and one task of ours that waits for a gate file), as a person uses it:
the overview lists the tasks; a run triggered from the form shows up in the runs list and its
page streams the output, then says ``succeeded``, without a reload; a running run is cancelled from its page; a broken task file shows on
the overview with ``path:line:col`` within a second. On every page: no console error, no request
leaving the machine, no serious or critical axe-core violation.

``RUNNER_SCREENSHOTS=1`` saves the screenshots docs/web.md shows (docs/images/).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli, ProjectDir, poll

from tests.acceptance.test_http import TOKEN, Api
from tests.browser.browser import ROOT, Browser

pytestmark = pytest.mark.timeout(60)

GATED = """
    version: 1
    tasks:
      slow:
        description: Prints a line, waits for the file ./gate, prints another.
        command: 'echo "line 1 for $PARAM_WHO"; until [ -e gate ]; do sleep 0.02; done; echo "line 2"'
        parameters: {who: nobody}
        tags: [web]
      held:
        description: Prints a line, then waits for the file ./release.
        command: 'echo "held"; until [ -e release ]; do sleep 0.02; done'
"""
BROKEN = """
    version: 1
    tasks:
      slow:
        command: echo hi
        timeout: soon
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    opened = Browser()
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("web") / "project"
    for part in ("tasks.d", "plugins", "secrets"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    project = ProjectDir(root)
    project.tasks("web.yaml", GATED)
    cli = Cli(project)
    api = Api(cli, "--http-allow-trigger")
    yield api
    for gate in ("gate", "release"):
        (root / gate).touch()  # a run a failed test left waiting would hold the daemon's stop
    api.close()
    cli.cleanup()


def text_of(browser: Browser, css: str) -> str:
    """The text a person sees in the elements ``css`` selects, read in one go in the page (a
    region the page replaces meanwhile cannot go stale under it)."""
    text: str = browser.driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText).join(' ').trim()", css
    )
    return text


def test_the_overview_lists_the_example_tasks(served: Api, browser: Browser) -> None:
    tasks = served.get("/api/v1/tasks").json()["tasks"]
    assert {"hello", "greet", "add", "report", "publish"} <= {task["name"] for task in tasks}
    for name in ("hello", "greet", "add", "hello"):
        served.wait_run(served.trigger(name).json()["id"])
    browser.driver.get(served.base + "/")
    rows = text_of(browser, "#tasks tbody")
    for task in tasks:
        assert task["name"] in rows and task["source"] in rows
    assert "disabled" in text_of(browser, "#tasks tbody tr:has(a[href='/tasks/publish'])")
    assert "At 02:30 every day (Europe/Oslo)" in rows  # report's schedule, in words
    hello = text_of(browser, "#tasks tbody tr:has(a[href='/tasks/hello'])")
    assert hello.count("succeeded") == 3  # two runs in the strip (as hidden text), the last one's badge
    assert "succeeded 4" in text_of(browser, ".counts")  # runs in the last 24 h
    assert text_of(browser, "#health").startswith("up")
    browser.screenshot("web-overview")
    browser.check_page(served.base)


def test_a_run_triggered_from_the_form_streams_and_then_succeeds_without_a_reload(served: Api, browser: Browser) -> None:
    from selenium.webdriver.common.by import By

    driver = browser.driver
    driver.get(served.base + "/runs?task=slow")
    driver.execute_script("window.notReloaded = true")
    driver.switch_to.new_window("tab")  # the runs list stays open in the first tab
    driver.get(served.base + "/tasks/slow")
    browser.check_page(served.base)
    who = driver.find_element(By.CSS_SELECTOR, "#trigger input[name=who]")
    who.clear()
    who.send_keys("the web")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#trigger button[type=submit]").click()
    poll(lambda: "/runs/" in driver.current_url, within=5, what="the run's page")
    run_id = driver.current_url.rsplit("/", 1)[1]
    driver.execute_script("window.notReloaded = true")
    poll(lambda: "line 1 for the web" in text_of(browser, "#stdout"), within=5, what="the first line, streamed")
    assert text_of(browser, "h1 [data-live=status]") == "running"
    assert "line 2" not in text_of(browser, "#stdout")
    browser.screenshot("web-run-live")
    browser.check_page(served.base)

    (served.daemon.cli.project.root / "gate").touch()
    poll(lambda: text_of(browser, "h1 [data-live=status]") == "succeeded", within=5, what="succeeded, without a reload")
    assert "line 2" in text_of(browser, "#stdout")
    assert driver.execute_script("return window.notReloaded") is True
    poll(lambda: text_of(browser, "#run dd time") != "", within=5, what="the final timings")

    driver.close()
    driver.switch_to.window(driver.window_handles[0])
    poll(lambda: run_id[-8:] in text_of(browser, "#runs tbody"), within=5, what="the new run in the open runs list")
    poll(lambda: "succeeded" in text_of(browser, f"#runs tr:has(a[href='/runs/{run_id}'])"), within=5, what="its status")
    assert driver.execute_script("return window.notReloaded") is True
    browser.check_page(served.base)

    driver.get(served.base + "/tasks/slow")  # its history and duration chart now have the run
    assert run_id[-8:] in text_of(browser, "#history") and "last 1 run ·" in text_of(browser, ".chart")
    browser.screenshot("web-task")
    browser.check_page(served.base)


def test_a_running_run_is_cancelled_from_its_page_without_a_reload(served: Api, browser: Browser) -> None:
    from selenium.webdriver.common.by import By

    driver = browser.driver
    run_id = served.trigger("held").json()["id"]
    driver.get(f"{served.base}/runs/{run_id}")
    poll(lambda: "held" in text_of(browser, "#stdout"), within=5, what="the run's first line")
    driver.execute_script("window.notReloaded = true")
    poll(lambda: driver.find_element(By.ID, "cancel").is_displayed(), within=5, what="the cancel button, shown by the script")
    driver.find_element(By.ID, "cancel-token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#cancel button[type=submit]").click()
    poll(lambda: text_of(browser, "h1 [data-live=status]") == "cancelled", within=5, what="cancelled, without a reload")
    assert driver.execute_script("return window.notReloaded") is True
    assert served.get(f"/api/v1/runs/{run_id}").json()["status"] == "cancelled"
    assert not driver.find_elements(By.ID, "cancel")  # the finished run's page has no button
    browser.check_page(served.base)


def test_a_broken_task_file_shows_on_the_overview_within_a_second(served: Api, browser: Browser) -> None:
    project: Path = served.daemon.cli.project.root
    driver = browser.driver
    driver.get(served.base + "/")
    poll(lambda: driver.execute_script("return document.readyState") == "complete", what="the page")
    assert text_of(browser, "#sync") == ""
    good = (project / "tasks.d" / "web.yaml").read_text()
    try:
        ProjectDir(project).tasks("web.yaml", BROKEN)
        written = time.monotonic()
        banner = poll(lambda: text_of(browser, "#sync"), within=3, what="the reload's problem on the page")
        took = time.monotonic() - written
        assert "tasks.d/web.yaml:5:" in banner and "timeout" in banner, banner
        assert took < 1.0, f"the problem showed after {took:.2f}s"
        assert "reload failed" in text_of(browser, "#health")
        browser.check_page(served.base)
    finally:
        (project / "tasks.d" / "web.yaml").write_text(good)
    poll(lambda: text_of(browser, "#sync") == "", within=3, what="the banner to go once the file is fixed")

