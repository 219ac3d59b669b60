"""Instructions per run of a fan-in, counted with callgrind (which the machine's load does not
move, where CPU time moves by 10-20%).

A fresh project with a fan-in of WIDTH no-op python tasks (``async def``, or ``def`` with
``--def``), or of shell tasks running ``true`` (``--shell``), synced into a fresh SQLite store
and run once in process as ``runner run`` runs it (``oneshot.run_once``; the garbage collector
tuned as ``runner run`` tunes it). Run it under callgrind at two widths; the difference over the
difference of the widths is the cost of one run, start-up and imports cancelling out::

    for w in 200 1000; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python benchmarks/count_fanin.py $w 2>&1 | grep Collected
    done
    # instructions per run = (I(1000) - I(200)) / 800

The parent process only: a shell run's child is not traced (widths 40 and 200 do for shell).
Under callgrind a run lasts ~50 times longer, so the cancel watch would look for requests every
few runs; with ``--shell`` it does not look (on a real machine it looks a few times per
thousand runs). The per-task part of the project's syncs is in the figure (~0.6 M per task,
``--sync-only`` counts it alone).

To count another checkout, run it from outside both with ``PYTHONPATH`` set to that checkout.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import anyio


def write_project(root: Path, width: int, *, sync: bool, shell: bool = False) -> None:
    (root / "tasks.d").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "plugins" / "__init__.py").write_text("")
    (root / "plugins" / "noop.py").write_text(
        "def noop_def() -> None:\n    return None\n\n\nasync def noop() -> None:\n    return None\n"
    )
    callable_ = "plugins.noop:noop_def" if sync else "plugins.noop:noop"
    body = ['    command: ["true"]'] if shell else ["    type: python", f"    callable: {callable_}"]
    fans = [f"fan{i}" for i in range(width)]
    lines = ["version: 1", "tasks:"]
    for name in fans:
        lines += [f"  {name}:", *body]
    lines += ["  fanin:", *body, f"    needs: [{', '.join(fans)}]"]
    (root / "tasks.d" / "fan.yaml").write_text("\n".join(lines) + "\n")


async def run(root: Path, db: Path, sync_only: bool) -> None:
    from runner.oneshot import run_once
    from runner.store import open_store
    from runner.sync import sync_project

    async with open_store(db) as store:
        await sync_project(root, store)
        if sync_only:  # what run_once does before the runs: sync again, read the tasks, check
            from runner.engine import Engine

            await sync_project(root, store, warn_unchanged=False)
            async with Engine(store, root) as engine:
                engine.workflow("fanin")
            return
        outcome = await run_once(root, store, "fanin", handle_signals=False)
    assert outcome.target is not None and outcome.target.succeeded, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("width", type=int)
    parser.add_argument("--def", dest="sync", action="store_true", help="plain def tasks (run in threads)")
    parser.add_argument("--shell", action="store_true", help="shell tasks running true (no cancel looks)")
    parser.add_argument("--sync-only", action="store_true", help="only what comes before the runs")
    args = parser.parse_args()
    if args.shell:
        from runner.cancels import CancelWatch

        async def no_look(self: CancelWatch) -> None:
            pass

        CancelWatch.check = no_look  # type: ignore[method-assign]
    try:
        from runner.processes import tune_gc
    except ImportError:  # a checkout from before it
        pass
    else:
        tune_gc()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "project"
        write_project(root, args.width, sync=args.sync, shell=args.shell)
        anyio.run(run, root, Path(scratch) / "store.db", args.sync_only)


if __name__ == "__main__":
    main()
