"""Keep docs/deployment.md in step with what it describes.

The unit file shown in the doc is docs/runner.service, byte for byte; its ExecStart parses as a
runner command line; the option tables for ``runner daemon`` and ``runner prune`` list exactly
the options those commands have; and every link to a section of a doc, in any doc, finds its heading.
The worker's unit in docs/distributed.md is docs/runner-worker.service, and parses too.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from runner.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs"
GUIDE = DOCS / "deployment.md"
UNIT = DOCS / "runner.service"


def _text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def _headings(text: str) -> list[tuple[int, str, int]]:
    """(level, title, offset of the line after it) of each heading outside code blocks."""
    found, fenced, offset = [], False, 0
    for line in text.splitlines(keepends=True):
        offset += len(line)
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#+) (.+)$", line.rstrip("\n"))):
            found.append((len(match.group(1)), match.group(2), offset))
    return found


def _section(heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    text = _text()
    headings = _headings(text)
    level, title = len(heading.split(" ", 1)[0]), heading.split(" ", 1)[1]
    at = next(i for i, (lv, t, _) in enumerate(headings) if (lv, t) == (level, title))
    start = headings[at][2]
    end = next((off for lv, t, off in headings[at + 1 :] if lv <= level), None)
    if end is None:
        return text[start:]
    return text[start : text.rindex("\n", 0, end - 1) + 1]


def test_the_unit_in_the_guide_is_the_unit_file() -> None:
    blocks = re.findall(r"```ini\n(.*?)```", _section("## The unit"), re.DOTALL)
    assert blocks, "no ```ini block under '## The unit'"
    assert blocks[0] == UNIT.read_text(encoding="utf-8")


def test_the_units_command_line_parses() -> None:
    line = next(x for x in UNIT.read_text(encoding="utf-8").splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert Path(argv[0]).name == "runner"
    at = next(i for i, arg in enumerate(argv) if arg in main.commands)
    group = main.make_context("runner", argv[1 : at + 1])
    main.commands[argv[at]].make_context(argv[at], argv[at + 1 :], parent=group)


def _documented_options(heading: str) -> set[str]:
    rows = re.findall(r"^\| `(--[a-z-]+)", _section(heading), re.MULTILINE)
    return set(rows)


def _options(command: str) -> set[str]:
    found = main.commands[command]
    return {opt for param in found.params if isinstance(param, click.Option) for opt in param.opts if opt.startswith("--")} - {"--help"}


@pytest.mark.parametrize(
    ("heading", "command"), [("## The daemon, in brief", "daemon"), ("### `runner prune`", "prune")]
)
def test_the_option_tables_list_every_option(heading: str, command: str) -> None:
    assert _documented_options(heading) == _options(command)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_to_sections_find_their_headings(doc: str) -> None:
    for target, anchor in re.findall(r"\]\(([\w.-]*\.md|)#([\w-]+)\)", (DOCS / doc).read_text(encoding="utf-8")):
        page = DOCS / (target or doc)
        headings = _headings(page.read_text(encoding="utf-8"))
        assert anchor in {_slug(title) for _, title, _ in headings}, f"{doc}: {target or doc}#{anchor}: no such heading"


WORKER_UNIT = DOCS / "runner-worker.service"


def test_the_worker_unit_in_the_distributed_guide_is_the_unit_file_and_parses() -> None:
    guide = (DOCS / "distributed.md").read_text(encoding="utf-8")
    assert WORKER_UNIT.read_text(encoding="utf-8") in re.findall(r"```ini\n(.*?)```", guide, re.DOTALL)
    line = next(x for x in WORKER_UNIT.read_text(encoding="utf-8").splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    at = argv.index("worker")
    group = main.make_context("runner", argv[1 : at + 1])
    main.commands["worker"].make_context("worker", argv[at + 1 :], parent=group)


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", [UNIT, WORKER_UNIT], ids=lambda p: p.name)
def test_systemd_verifies_the_unit_and_rates_it_4_or_better(unit: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this runner.
    runner_bin = Path(sys.executable).parent / "runner"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text(encoding="utf-8").replace("/opt/runner/venv/bin/runner", str(runner_bin)))
    assert SYSTEMD_ANALYZE is not None
    verified = subprocess.run([SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert (verified.returncode, verified.stderr) == (0, "")
    rated = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", rated.stdout)
    assert match, rated.stdout + rated.stderr
    assert float(match.group(1)) <= 4.0, rated.stdout
