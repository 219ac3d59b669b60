"""SQLAlchemy's asyncio engine without the ORM, for start-up time.

``import sqlalchemy.ext.asyncio`` runs that package's ``__init__``, which imports its
``AsyncSession`` and with it all of ``sqlalchemy.orm``: 70 ms of a ``runner run``'s ~450 ms
start on a quiet machine, for a part that runner's store never uses (only a python task that
asks for an ``AsyncSession`` does). So the package is put in ``sys.modules`` here without its
``__init__`` having run: it holds the engine's names at once (``AsyncEngine``,
``AsyncConnection``, ``create_async_engine`` ...) from the submodules that define them, and runs
the real ``__init__`` the first time anything else is asked of it (``from
sqlalchemy.ext.asyncio import AsyncSession`` works as ever, and loads the ORM then).

Imported by ``runner.store`` before anything that imports SQLAlchemy's asyncio package. If the
package was imported already, or its layout is not the one this expects, nothing is changed.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from typing import Any

_NAME = "sqlalchemy.ext.asyncio"
_EAGER = {
    "engine": (
        "AsyncConnection", "AsyncEngine", "AsyncTransaction", "async_engine_from_config", "create_async_engine",
        "create_async_pool_from_url",
    ),
    "result": ("AsyncMappingResult", "AsyncResult", "AsyncScalarResult", "AsyncTupleResult"),
}


def _install() -> None:
    if _NAME in sys.modules:
        return
    spec = importlib.util.find_spec(_NAME)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    submodules = {module.name for module in pkgutil.iter_modules(spec.submodule_search_locations)}

    def rest(name: str) -> Any:
        """Anything but the engine's names: the package's real ``__init__``, run now."""
        if name in submodules:  # ``from . import exc``: the import system imports it on this answer
            raise AttributeError(name)
        del package.__getattr__
        spec.loader.exec_module(package)  # type: ignore[union-attr]
        return getattr(package, name)

    package.__getattr__ = rest  # type: ignore[method-assign]
    sys.modules[_NAME] = package
    try:
        for submodule, names in _EAGER.items():
            defined = importlib.import_module(f"{_NAME}.{submodule}")
            for name in names:
                setattr(package, name, getattr(defined, name))
        # What the real ``__init__`` does last: SQLAlchemy's await-from-sync bridge (greenlet).
        from sqlalchemy.util import concurrency

        concurrency._concurrency_shim._initialize()
    except (ImportError, AttributeError):  # another layout: leave the package to import whole
        for name in [n for n in sys.modules if n == _NAME or n.startswith(f"{_NAME}.")]:
            del sys.modules[name]
        return
    importlib.import_module("sqlalchemy.ext").asyncio = package  # type: ignore[attr-defined]


_install()
