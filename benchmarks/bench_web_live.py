"""Benchmark the web page's live updates (issue 16): do 100 open pages following live runs slow
the daemon's fires?

A real ``runner daemon --http 127.0.0.1:0 --http-allow-trigger`` fires ``--tasks`` shell tasks
(``true``) each ``schedule: {every: 1s}``, while ``--live`` runs of a task that prints a line
every 0.1 s go on for the whole benchmark. Then, for ``--seconds``, nobody watches; then
``--pages`` pages follow those runs as a browser showing a run's page does: each holds the
run's event stream (``/api/v1/runs/ID/events``, read to the end of every event) and the
corner's long poll (``/-/status``), all from one asyncio client thread at the lowest CPU priority (nice 19: the
browsers would be on other machines). The fire lateness of
the scheduled runs (``started_at - scheduled_for``, from the store) in each window: median,
p95, worst.

Usage::

    .venv/bin/python benchmarks/bench_web_live.py [--tasks 20] [--live 10] [--pages 100] [--seconds 20] [--parts events,status]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import describe_lateness, lateness, pct, start, stop

TOKEN = "bench-token"
TALKER = "for i in $(seq 100000); do echo \"line $i\"; sleep 0.1; done"


async def follow(
    client: httpx.AsyncClient, run_id: str, until: float, counts: list[int], parts: str, shown: str
) -> None:
    async def events() -> None:
        async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
            async for chunk in response.aiter_raw():
                counts[0] += chunk.count(b"\nevent: ")

    async def corner() -> None:
        have = shown  # what the page's HTML carries (runner.js starts from it)
        while True:
            answer = await client.get(f"/-/status?have={have}")
            have = answer.json()["digest"]
            counts[1] += 1

    tasks = [asyncio.create_task(events())] if "events" in parts else []
    tasks += [asyncio.create_task(corner())] if "status" in parts else []
    await asyncio.sleep(max(0.0, until - time.time()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def pages(base: str, run_ids: list[str], count: int, seconds: float, parts: str) -> list[int]:
    counts = [0, 0]  # events read, status answers

    async def main() -> None:
        until = time.time() + seconds
        # One client for all the pages (each request on a connection of its own): a client
        # each cost this thread, at nice 19 on a busy machine, seconds of setting up before
        # the first page asked anything.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            # The corner's digest as the pages would have it in their HTML (`runner-status`):
            # read once here instead of rendering a hundred run pages.
            shown = (await client.get("/-/status")).json()["digest"]
            await asyncio.gather(
                *(follow(client, run_ids[i % len(run_ids)], until, counts, parts, shown) for i in range(count))
            )

    def run() -> None:
        # The pages' browsers are on other machines: here they run at the lowest priority, so
        # that what is measured is the daemon serving them, not this client taking its CPU.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        asyncio.run(main())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return counts


class LoopLag:
    """The daemon's event-loop lag, seen from outside: the answer time of a static file (no
    store read, no rendering) asked for every 50 ms from a thread at normal priority."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.times: list[float] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._probe, daemon=True)
        self.thread.start()

    def _probe(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stopping.wait(0.05):
                t = time.perf_counter()
                client.get("/static/icon.svg")
                self.times.append(time.perf_counter() - t)

    def take(self) -> str:
        times, self.times = self.times, []
        if not times:
            return "no answers"
        return f"median {pct(times, 0.5) * 1000:.1f} ms, p95 {pct(times, 0.95) * 1000:.1f} ms, worst {max(times) * 1000:.0f} ms"

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--live", type=int, default=10)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--parts", default="events,status", help="what each page holds open: events, status or both")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-web-live-") as tmp:
        root = Path(tmp) / "project"
        (root / "tasks.d").mkdir(parents=True)
        lines = ["version: 1", "tasks:", "  talker:", f"    command: '{TALKER}'"]
        for i in range(args.tasks):
            lines += [f"  t{i:03d}:", "    command: 'true'", "    schedule: {every: 1s}"]
        (root / "tasks.d" / "bench.yaml").write_text("\n".join(lines) + "\n")
        db = root / ".runner" / "runner.db"
        os.environ["RUNNER_HTTP_TOKEN"] = TOKEN
        process, base = start(root, Path(tmp) / "daemon.log", "--http-allow-trigger")
        try:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            run_ids = [httpx.post(f"{base}/api/v1/tasks/talker/runs", headers=auth).json()["id"] for _ in range(args.live)]
            time.sleep(3)  # past the first fires; the talkers are talking
            lag = LoopLag(base)
            t0, cpu0 = time.time(), cpu_seconds(process.pid)
            time.sleep(args.seconds)
            quiet, quiet_cpu, quiet_lag = (t0, time.time()), cpu_seconds(process.pid) - cpu0, lag.take()
            t0, cpu0 = time.time(), cpu_seconds(process.pid)
            events, answers = pages(base, run_ids, args.pages, args.seconds, args.parts)
            watched, watched_cpu, watched_lag = (t0, time.time()), cpu_seconds(process.pid) - cpu0, lag.take()
            lag.stop()
            time.sleep(2)  # the last fires are recorded
            with closing(sqlite3.connect(db)) as conn:
                (running,) = conn.execute("SELECT count(*) FROM runs WHERE task = 'talker' AND status = 'running'").fetchone()
            print(f"{args.tasks} tasks every 1s, {running} of {args.live} live runs still going at the end; {args.seconds:g} s a window")
            base_late = lateness(db, *quiet)
            watched_late = lateness(db, *watched)
            print(f"  nobody watching: {describe_lateness(base_late)}; daemon CPU {quiet_cpu / args.seconds:.0%} of a core")
            print(
                f"  {args.pages} pages following: {describe_lateness(watched_late)}; daemon CPU "
                f"{watched_cpu / args.seconds:.0%} of a core; {events} events and {answers} status answers read"
            )
            print(f"  loop lag (a static file's answer time): nobody watching {quiet_lag}; watched {watched_lag}")
            print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
            print(f"  p95 difference: {(pct(watched_late, 0.95) - pct(base_late, 0.95)) * 1000:+.1f} ms")
            with closing(sqlite3.connect(db)) as conn:
                rows = conn.execute(
                    "SELECT scheduled_for, started_at - scheduled_for FROM runs WHERE scheduled_for >= ? AND scheduled_for < ?"
                    " AND started_at IS NOT NULL", watched,
                ).fetchall()
            worst: dict[int, float] = {}
            for at, late in rows:
                second = int(at - watched[0])
                worst[second] = max(worst.get(second, 0.0), late)
            print("  the worst fire of each second while watched (ms):", " ".join(f"{worst[k] * 1000:.0f}" for k in sorted(worst)))
            logged = [json.loads(line) for line in (Path(tmp) / "daemon.log").read_text().splitlines() if line.startswith("{")]
            trouble = Counter(entry.get("event") or entry["message"][:80] for entry in logged if entry["level"] in ("warning", "error"))
            print(f"  warnings and errors the daemon logged: {dict(trouble) or 'none'}")
            for entry in logged:
                if entry["level"] == "error":
                    print(json.dumps(entry)[:4000])
        finally:
            stop(process)


if __name__ == "__main__":
    main()
