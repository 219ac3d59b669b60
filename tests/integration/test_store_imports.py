"""The store opens and reads without SQLAlchemy's ORM (its asyncio package is put in place
without the ``__init__`` that imports ``AsyncSession``: ~70 ms of start-up), and that package
still gives everything it exports, ``AsyncSession`` included, to whoever asks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

PROBE = """
import asyncio, json, sys
from runner.store import open_store

async def main(path):
    async with open_store(path) as store:
        await store.tasks()

asyncio.run(main(sys.argv[1]))
orm_after_store = "sqlalchemy.orm" in sys.modules
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
import sqlalchemy.ext.asyncio as package
import sqlalchemy.ext.asyncio.session as session
print(json.dumps({
    "orm_after_store": orm_after_store,
    "session_class": AsyncSession is session.AsyncSession is package.AsyncSession,
    "sessionmaker": async_sessionmaker is session.async_sessionmaker,
    "engine": create_async_engine.__module__,
}))
"""


def test_the_store_reads_without_the_orm_and_asyncio_exports_stay_whole(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "store.db")],
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "orm_after_store": False,
        "session_class": True,
        "sessionmaker": True,
        "engine": "sqlalchemy.ext.asyncio.engine",
    }
