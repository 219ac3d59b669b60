"""Instructions per run of a fan-in, counted with callgrind (which the machine's load does not
move, where CPU time moves by 10-20%).

A fresh project with a fan-in of WIDTH no-op python tasks (``async def``, or ``def`` with
``--def``), synced into a fresh SQLite store and run once in process as ``runner run`` runs it
(``oneshot.run_once``; the garbage collector tuned as ``runner run`` tunes it). Run it under
callgrind at two widths; the difference over the difference of the widths is the cost of one
run, start-up and imports cancelling out::

    for w in 200 1000; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python benchmarks/count_fanin.py $w 2>&1 | grep Collected
    done
    # instructions per run = (I(1000) - I(200)) / 800

To count another checkout, run it from outside both with ``PYTHONPATH`` set to that checkout.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import anyio


def write_project(root: Path, width: int, *, sync: bool) -> None:
    (root / "tasks.d").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "plugins" / "__init__.py").write_text("")
    (root / "plugins" / "noop.py").write_text(
        "def noop_def() -> None:\n    return None\n\n\nasync def noop() -> None:\n    return None\n"
    )
    callable_ = "plugins.noop:noop_def" if sync else "plugins.noop:noop"
    fans = [f"fan{i}" for i in range(width)]
    lines = ["version: 1", "tasks:"]
    for name in fans:
        lines += [f"  {name}:", "    type: python", f"    callable: {callable_}"]
    lines += ["  fanin:", "    type: python", f"    callable: {callable_}", f"    needs: [{', '.join(fans)}]"]
    (root / "tasks.d" / "fan.yaml").write_text("\n".join(lines) + "\n")


async def run(root: Path, db: Path) -> None:
    from runner.oneshot import run_once
    from runner.store import open_store
    from runner.sync import sync_project

    async with open_store(db) as store:
        await sync_project(root, store)
        outcome = await run_once(root, store, "fanin", handle_signals=False)
    assert outcome.target is not None and outcome.target.succeeded, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("width", type=int)
    parser.add_argument("--def", dest="sync", action="store_true", help="plain def tasks (run in threads)")
    args = parser.parse_args()
    try:
        from runner.processes import tune_gc
    except ImportError:  # a checkout from before it
        pass
    else:
        tune_gc()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "project"
        write_project(root, args.width, sync=args.sync)
        anyio.run(run, root, Path(scratch) / "store.db")


if __name__ == "__main__":
    main()
