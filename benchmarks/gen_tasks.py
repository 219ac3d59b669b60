"""Write a synthetic runner project: N tasks in F files under ``DIR/tasks.d``.

The mix imitates hand-written task files (deterministic for a given ``--seed``):

- mostly shell tasks with ``command`` (a string, a ``|`` block or an argv list), ``description``,
  ``tags``, ``timeout``, ``retries`` (a count or ``{count, backoff}``) and ``env`` (plain strings
  and the occasional ``{from_env: NAME}`` secret);
- about a fifth with ``needs`` on 1-3 earlier tasks (so the graph is acyclic by construction);
- about one in twenty with a ``schedule`` (a cron string, ``{cron, timezone}`` or ``{every}``);
- a few ``enabled: false`` tasks, a few shell ``parameters``;
- ``--python`` python tasks (default 20) calling ``plugins.bench:add``, a tiny plugin module that
  the generator writes too (``--python 0`` for none).

Usage::

    python benchmarks/gen_tasks.py DIR [--tasks 10000] [--files 100] [--python 20] [--seed 1]

The project is valid: ``runner --project DIR validate`` prints ``ok: N tasks in F files``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

DOMAINS = ("billing", "etl", "reports", "ml", "infra", "search", "mail", "audit", "cache", "users")
VERBS = ("extract", "load", "build", "clean", "refresh", "export", "check", "sync", "rotate", "index")
TAGS = ("nightly", "hourly", "critical", "team-a", "team-b", "team-c", "slow", "io", "cpu", "beta")
ZONES = ("UTC", "Europe/Oslo", "America/New_York", "Asia/Tokyo")
CRONS = ("30 2 * * *", "*/15 * * * *", "0 * * * *", "0 6 * * 1-5", "@daily", "5 4 1 * *")
DURATIONS = ("30s", "5m", "10m", "1h", "1h30m", "90", "2h", "45s")

PLUGIN = '''"""A tiny plugin for the definitions benchmark (written by benchmarks/gen_tasks.py)."""


def add(a: int, b: int) -> int:
    return a + b
'''


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text)


def task_name(i: int) -> str:
    return f"{DOMAINS[i % len(DOMAINS)]}.{VERBS[(i // len(DOMAINS)) % len(VERBS)]}_{i:05d}"


def _shell_task(rng: random.Random, i: int) -> list[str]:
    lines: list[str] = []
    domain = DOMAINS[i % len(DOMAINS)]
    style = rng.random()
    if style < 0.65:
        lines.append(f"    command: {_q(f'./bin/{domain} --step {i} --out /var/tmp/{domain}-{i}.json')}")
    elif style < 0.85:
        lines.append("    command: |")
        lines.append("      set -eu")
        lines.append(f"      cd jobs/{domain}")
        lines.append(f"      ./run.sh --id {i} \"$PARAM_DAY\"")
    else:
        lines.append(f"    command: [python3, -m, jobs.{domain}, --id, {_q(str(i))}]")
    if rng.random() < 0.9:
        lines.append(f"    description: {_q(f'{VERBS[i % len(VERBS)].title()} the {domain} data, part {i}')}")
    if rng.random() < 0.8:
        tags = rng.sample(TAGS, rng.randint(1, 3))
        if rng.random() < 0.5:
            lines.append(f"    tags: [{', '.join(tags)}]")
        else:
            lines.append("    tags:")
            lines.extend(f"      - {tag}" for tag in tags)
    if rng.random() < 0.7:
        lines.append(f"    timeout: {rng.choice(DURATIONS)}")
    roll = rng.random()
    if roll < 0.4:
        lines.append(f"    retries: {rng.randint(1, 5)}")
    elif roll < 0.6:
        lines.append(f"    retries: {{count: {rng.randint(1, 5)}, backoff: {rng.choice(DURATIONS)}}}")
    if rng.random() < 0.6:
        lines.append("    env:")
        lines.append(f"      LOG_LEVEL: {rng.choice(('info', 'debug', 'warning'))}")
        lines.append(f"      TARGET: {_q(f's3://bucket-{domain}/out/{i}')}")
        if rng.random() < 0.3:
            lines.append(f"      API_TOKEN: {{from_env: {domain.upper()}_TOKEN}}")
    if rng.random() < 0.1:
        lines.append(f"    parameters: {{day: {_q('2024-01-01')}, limit: {rng.randint(1, 1000)}}}")
    return lines


def _common(rng: random.Random, i: int, names: list[str]) -> list[str]:
    lines: list[str] = []
    if names and rng.random() < 0.2:
        window = names[-200:]
        needs = rng.sample(window, min(len(window), rng.randint(1, 3)))
        lines.append(f"    needs: [{', '.join(needs)}]")
    roll = rng.random()
    if roll < 0.02:
        lines.append(f"    schedule: {_q(rng.choice(CRONS))}")
    elif roll < 0.04:
        lines.append("    schedule:")
        lines.append(f"      cron: {_q(rng.choice(CRONS))}")
        lines.append(f"      timezone: {rng.choice(ZONES)}")
    elif roll < 0.05:
        lines.append(f"    schedule: {{every: {rng.choice(DURATIONS)}}}")
    if rng.random() < 0.03:
        lines.append("    enabled: false")
    return lines


def generate(root: Path, tasks: int = 10_000, files: int = 100, python: int = 20, seed: int = 1) -> None:
    """Write ``tasks`` tasks in ``files`` files (and the plugin, if any python task) under ``root``."""
    if tasks < 0 or files < 1:
        raise ValueError("need tasks >= 0 and files >= 1")
    rng = random.Random(seed)
    python = min(python, tasks)
    python_at = set(rng.sample(range(tasks), python)) if python else set()
    tasks_dir = root / "tasks.d"
    if tasks_dir.exists():
        shutil.rmtree(tasks_dir)
    names: list[str] = []
    per_file, extra = divmod(tasks, files)
    i = 0
    for f in range(files):
        count = per_file + (1 if f < extra else 0)
        # Ten files per directory, to exercise the walk as a larger repository would.
        path = tasks_dir / f"group-{f // 10:03d}" / f"{DOMAINS[f % len(DOMAINS)]}-{f:04d}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        out = [
            "# yaml-language-server: $schema=../../schemas/tasks.schema.json",
            "version: 1",
            "tasks:",
        ]
        if count == 0:
            out[-1] = "tasks: {}"
        for _ in range(count):
            name = task_name(i)
            out.append(f"  {name}:")
            if i in python_at:
                out.append("    type: python")
                out.append("    callable: plugins.bench:add")
                out.append(f"    parameters: {{a: {i}, b: {rng.randint(0, 99)}}}")
                out.append(f"    description: {_q(f'Add numbers for task {i}')}")
            else:
                out.extend(_shell_task(rng, i))
            out.extend(_common(rng, i, names))
            names.append(name)
            i += 1
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
    if python:
        plugins = root / "plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        (plugins / "__init__.py").write_text("", encoding="utf-8")
        (plugins / "bench.py").write_text(PLUGIN, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="project directory (tasks.d/ is replaced)")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--python", type=int, default=20, help="python tasks among them (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generate(args.directory, args.tasks, args.files, args.python, args.seed)
    print(f"wrote {args.tasks} tasks in {args.files} files under {args.directory / 'tasks.d'}")


if __name__ == "__main__":
    main()
