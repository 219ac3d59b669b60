"""The store: where tasks and runs are kept. SQLite by default, any SQLAlchemy async URL later.

``Store`` is the only code that talks SQL. Its methods are named for what the caller means
(``sync_tasks``, ``record_runs_finished``), and they return frozen records from ``runner.models``.
"""

from runner.store.store import CURRENT_VERSION, Store, database_url, open_store

__all__ = ["CURRENT_VERSION", "Store", "database_url", "open_store"]
