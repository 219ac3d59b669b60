"""Cancel scopes, and the check for a cancelled one, without anyio's look-up of the running
back-end.

``anyio.CancelScope()`` finds the back-end each time it makes a scope (sniffio, then a second
``__init__``): about 10 k instructions of the ~30 k a scope costs, on every run's path (its
cancel watch, the shield around a shell spawn; a no-op run costs ~0.5 M). So does
``anyio.lowlevel.checkpoint_if_cancelled()``, which every run passes before it starts: ~7 k of
its ~13 k. The back-end runner runs on (asyncio's), found once, does both directly.
"""

from __future__ import annotations

from collections.abc import Awaitable

import anyio
import anyio.lowlevel
from anyio.abc import AsyncBackend

_scope_class: type[anyio.CancelScope] | None = None
_backend: type[AsyncBackend] | None = None


def cancel_scope(*, shield: bool = False) -> anyio.CancelScope:
    """``anyio.CancelScope(shield=shield)``, made directly; to call within the event loop."""
    global _scope_class
    if _scope_class is None:
        _scope_class = type(anyio.CancelScope())
    return _scope_class(shield=shield)


def checkpoint_if_cancelled() -> Awaitable[None]:
    """``anyio.lowlevel.checkpoint_if_cancelled()``, to await within the event loop: raises if
    the caller's scope is cancelled (letting the loop turn only then)."""
    global _backend
    if _backend is None:
        try:
            from anyio._core._eventloop import get_async_backend  # not public: it may move
        except ImportError:
            return anyio.lowlevel.checkpoint_if_cancelled()
        _backend = get_async_backend()
    return _backend.checkpoint_if_cancelled()
