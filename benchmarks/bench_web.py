"""Benchmark the web page (issue 16): the server time of its pages over a big store.

A project of ``--tasks`` tasks (``gen_tasks.py``; their schedules moved to once a year, so that
no fire runs during the measurement while the overview still shows schedules and next fire
times) and a SQLite store with ``--runs`` runs spread over 30 days (written straight into the
store file with sqlite3, in the store's own schema: about 30,000 runs in the last 24 h with the
defaults), served by a real ``runner daemon --http 127.0.0.1:0``. Each page is fetched
``--repeat`` times over loopback; the server's time comes from the ``Server-Timing`` header the
page handlers set (the handler from the request to the finished HTML), the client's is the
whole request. The overview's counts of the last 24 h are cached for 2 s, so most repeats reuse
them: the max column has the renders that counted.

Usage::

    .venv/bin/python benchmarks/bench_web.py [--tasks 10000] [--runs 1000000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import start, stop
from gen_tasks import generate

DAY = 86_400.0
STATUSES = ("succeeded",) * 90 + ("failed",) * 6 + ("timed_out", "cancelled", "interrupted", "skipped")


def fill(db: Path, runs: int, tasks: list[str], now: float, seed: int = 1) -> None:
    """``runs`` finished runs of ``tasks`` over the 30 days before ``now``, oldest first."""
    rng = random.Random(seed)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous = OFF")
    step = 30 * DAY / runs
    batch: list[tuple[object, ...]] = []
    for i in range(runs):
        queued = now - 30 * DAY + i * step
        took = rng.uniform(0.05, 30.0)
        status = rng.choice(STATUSES)
        run_id = f"{int(queued * 1000):012x}{rng.getrandbits(80):020x}"
        batch.append((run_id, rng.choice(tasks), "shell", status, 1, "schedule", "{}", queued, queued + 0.01,
                      queued + 0.01 + took, took, 0 if status == "succeeded" else 1, "bench", 1))
        if len(batch) == 50_000:
            conn.executemany(
                "INSERT INTO runs (id, task, type, status, attempt, trigger, parameters, queued_at, started_at,"
                " finished_at, duration_s, exit_code, host, pid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                batch,
            )
            conn.commit()
            batch.clear()
    if batch:
        conn.executemany(
            "INSERT INTO runs (id, task, type, status, attempt, trigger, parameters, queued_at, started_at,"
            " finished_at, duration_s, exit_code, host, pid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            batch,
        )
        conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()


def measure(base: str, path: str, repeat: int) -> tuple[list[float], list[float], int]:
    server, client = [], []
    size = 0
    with httpx.Client(base_url=base, timeout=60) as session:
        session.get(path)  # warm: the first request of a kind fills caches
        for _ in range(repeat):
            t0 = time.perf_counter()
            response = session.get(path)
            client.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{path}: HTTP {response.status_code}\n{response.text[:500]}")
            timing = re.search(r"app;dur=([0-9.]+)", response.headers.get("server-timing", ""))
            assert timing is not None, path
            server.append(float(timing.group(1)))
            size = len(response.content)
    return server, client, size


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        root = Path(tmp) / "project"
        generate(root, tasks=args.tasks)
        for path in (root / "tasks.d").rglob("*.yaml"):
            text = re.sub(r"(?m)^    schedule: .*$", '    schedule: "0 3 1 1 *"', path.read_text())
            path.write_text(text)
        t0 = time.perf_counter()
        process, _base = start(root, Path(tmp) / "sync.log", within=600)
        stop(process, within=120)
        print(f"synced {args.tasks} tasks in {time.perf_counter() - t0:.1f}s", flush=True)
        db = root / ".runner" / "runner.db"
        with sqlite3.connect(db) as conn:
            tasks = [name for (name,) in conn.execute("SELECT name FROM tasks ORDER BY name")]
        t0 = time.perf_counter()
        fill(db, args.runs, tasks, time.time())
        print(f"wrote {args.runs} runs in {time.perf_counter() - t0:.1f}s ({db.stat().st_size / 1e6:.0f} MB)", flush=True)
        with sqlite3.connect(db) as conn:
            (some_run,) = conn.execute("SELECT id FROM runs ORDER BY queued_at DESC LIMIT 1").fetchone()
            (busy_task,) = conn.execute("SELECT task FROM runs GROUP BY task ORDER BY count(*) DESC LIMIT 1").fetchone()
            (last_day,) = conn.execute("SELECT count(*) FROM runs WHERE queued_at > ?", (time.time() - DAY,)).fetchone()
        print(f"{last_day} runs in the last 24 h; the busiest task: {busy_task}", flush=True)

        process, base = start(root, Path(tmp) / "daemon.log", within=600)
        try:
            pages = [
                ("/", "overview, first page of 100 tasks"),
                ("/?offset=9900", "overview, last page"),
                ("/?q=etl", "overview filtered by name"),
                ("/?tag=nightly&state=enabled", "overview filtered by tag and state"),
                (f"/tasks/{busy_task}", "a task (history, chart, graph)"),
                ("/runs", "runs, newest 50"),
                (f"/runs?task={busy_task}", "runs of one task"),
                ("/runs?status=failed", "runs by status"),
                (f"/runs/{some_run}", "a run"),
            ]
            print("\n| page | server median | server p95 | server max | client median | size |\n|---|---|---|---|---|---|")
            for path, what in pages:
                server, client, size = measure(base, path, args.repeat)
                print(
                    f"| {what} (`{path if len(path) < 40 else path[:37] + '...'}`) | {statistics.median(server):.1f} ms "
                    f"| {p95(server):.1f} ms | {max(server):.1f} ms | {statistics.median(client):.1f} ms | {size / 1000:.0f} KB |",
                    flush=True,
                )
        finally:
            stop(process, within=120)


if __name__ == "__main__":
    main()
