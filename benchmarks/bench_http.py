"""Benchmark the HTTP API (issue 6): requests per second over loopback, and whether API load
slows the daemon's runs.

A real ``runner --log-format json daemon --http 127.0.0.1:0`` on a temporary project, driven by
httpx clients (``--clients`` threads, one keep-alive connection each):

1. **Busy daemon**: ``--tasks`` shell tasks (``true``) each ``schedule: {every: --every}``.
   For ``--seconds`` without API load, then ``--seconds`` with clients hammering
   ``GET /api/v1/runs?limit=50``, then ``--seconds`` on ``GET /health``: requests/s and latency
   (median, p95), and the fire lateness of the scheduled runs in each window (``started_at -
   scheduled_for``, read from the store with sqlite3; median, p95, worst).
2. **Idle daemon**: the same store (its runs stay), the schedules removed: requests/s of both
   endpoints.

Usage::

    .venv/bin/python benchmarks/bench_http.py [--tasks 50] [--every 1s] [--seconds 10] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx


def start(root: Path, log: Path, *more: str, within: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """A daemon serving HTTP on a free loopback port, its JSON log in ``log``, and its base URL."""
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "--project", str(root), "--log-format", "json", "daemon",
         "--http", "127.0.0.1:0", "--no-watch", "--retain", "0", "--retain-runs", "0", *more],
        stdout=subprocess.DEVNULL, stderr=handle,
    )
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            try:
                body = json.loads(line)
            except json.JSONDecodeError:
                continue
            if body.get("event") == "http_started":
                return process, f"http://127.0.0.1:{body['port']}"
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"the daemon did not start:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes], within: float = 60.0) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=within)


def hammer(base: str, path: str, seconds: float, clients: int) -> tuple[float, list[float], int]:
    """Requests/s, latencies (s) and non-2xx answers of ``clients`` threads for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    end = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as session:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                response = session.get(path)
                response.read()
                latencies[i].append(time.perf_counter() - t0)
                if response.status_code >= 300:
                    errors[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    flat = [x for part in latencies for x in part]
    return len(flat) / took, flat, sum(errors)


def lateness(db: Path, since: float, until: float) -> list[float]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT started_at - scheduled_for FROM runs WHERE scheduled_for >= ? AND scheduled_for < ?"
            " AND started_at IS NOT NULL", (since, until),
        ).fetchall()
    return [r[0] for r in rows]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def describe_latency(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms, p95 {pct(values, 0.95) * 1000:.1f} ms"


def describe_lateness(values: list[float]) -> str:
    if not values:
        return "no fires"
    return (f"{len(values)} fires: median {statistics.median(values) * 1000:.1f} ms, p95 "
            f"{pct(values, 0.95) * 1000:.1f} ms, worst {max(values) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--every", default="1s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        (root / "tasks.d").mkdir(parents=True)
        lines = ["version: 1", "tasks:"]
        for i in range(args.tasks):
            lines += [f"  t{i:03d}:", "    command: 'true'", f"    schedule: {{every: {args.every}}}"]
        tasks = root / "tasks.d" / "bench.yaml"
        tasks.write_text("\n".join(lines) + "\n")
        db = root / ".runner" / "runner.db"

        print(f"busy daemon: {args.tasks} tasks every {args.every}; {args.clients} clients, {args.seconds:g} s a window")
        process, base = start(root, Path(tmp) / "busy.log")
        try:
            time.sleep(3)  # past the first fires
            windows = []
            t0 = time.time()
            time.sleep(args.seconds)
            windows.append(("no API load", t0, time.time(), None))
            for path in ("/api/v1/runs?limit=50", "/health"):
                t0 = time.time()
                rps, lat, errors = hammer(base, path, args.seconds, args.clients)
                windows.append((f"GET {path}", t0, time.time(), (rps, lat, errors)))
            time.sleep(2)  # let the last window's runs be recorded
            for name, since, until, load in windows:
                if load is not None:
                    rps, lat, errors = load
                    print(f"  {name}: {rps:.0f} req/s ({describe_latency(lat)}; {errors} errors)")
                print(f"    fire lateness, {name}: {describe_lateness(lateness(db, since, until))}")
        finally:
            stop(process)

        tasks.write_text("\n".join(line for line in lines if "schedule" not in line) + "\n")
        print("idle daemon (same store, no schedules):")
        process, base = start(root, Path(tmp) / "idle.log")
        try:
            with closing(sqlite3.connect(db)) as conn:
                print(f"  store holds {conn.execute('SELECT count(*) FROM runs').fetchone()[0]} runs")
            for path in ("/api/v1/runs?limit=50", "/health"):
                rps, lat, errors = hammer(base, path, args.seconds, args.clients)
                print(f"  GET {path}: {rps:.0f} req/s ({describe_latency(lat)}; {errors} errors)")
        finally:
            stop(process)


if __name__ == "__main__":
    main()
