"""A real headless Chromium driven by selenium, and what the tests ask of every page: no
console error, no request leaving the machine, no serious or critical axe-core violation.

Debian's ``chromium`` and ``chromium-driver`` (installed by .ci/run). Without them a test that
needs the browser fails under CI (``CI`` set) and is skipped elsewhere, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "tests" / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "images"
# Flags for a closed network: without the background-networking ones Chromium phones home
# (component updates, sync, variations), which the sandbox refuses and the console reports.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
)


def _missing(what: str) -> None:
    message = f"{what}; install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


def find_browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        _missing("no chromium" if chromium is None else "no chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[test]')")
    if not AXE.exists():
        _missing(f"axe-core is not installed: npm ci --prefix tests/a11y (looked for {AXE})")
    assert chromium is not None and driver is not None
    return chromium, driver


class Browser:
    """One Chromium for a module, with a fresh profile."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        chromium, driver = find_browser()
        self.profile = tempfile.mkdtemp(prefix="runner-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        # The browser log (console errors) and the performance log (every request the page made).
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(driver))
        self.driver.set_page_load_timeout(10)
        self.driver.set_script_timeout(10)

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def console_errors(self) -> list[dict[str, Any]]:
        return [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def requested(self) -> list[str]:
        """The URLs of every request the browser's pages sent since the last call."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def axe_violations(self) -> list[dict[str, Any]]:
        """axe-core's serious and critical violations on the page as it is now. The script is
        put in through WebDriver, which the page's Content-Security-Policy does not govern."""
        self.driver.execute_script(AXE.read_text(encoding="utf-8"))
        result: dict[str, Any] = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(r => done(r), e => done({error: String(e)}));"
        )
        assert "error" not in result, result
        return [
            {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["html"][:200] for n in v["nodes"][:3]]}
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]

    def check_page(self, base: str) -> None:
        """What every page must be: nothing in red in the console, every request to the
        daemon, nothing serious for axe-core."""
        assert self.console_errors() == []
        host = urlsplit(base).netloc
        elsewhere = [url for url in self.requested() if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).netloc != host]
        assert elsewhere == [], f"requests left the machine: {elsewhere}"
        violations = self.axe_violations()
        assert violations == [], "\n".join(f"{v['impact']}: {v['id']}: {v['help']}: {v['nodes']}" for v in violations)

    def screenshot(self, name: str) -> None:
        """Saved into docs/images/ when RUNNER_SCREENSHOTS=1 (so CI leaves the tree clean)."""
        if os.environ.get("RUNNER_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

