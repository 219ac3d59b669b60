"""Cancel scopes made without anyio's look-up of the running back-end.

``anyio.CancelScope()`` finds the back-end each time it makes a scope (sniffio, then a second
``__init__``): about 10 k instructions of the ~30 k a scope costs, on every run's path (its
cancel watch, the shield around a shell spawn; a no-op run costs ~0.5 M). The class of the
back-end runner runs on (asyncio's), found once, makes them directly.
"""

from __future__ import annotations

import anyio

_scope_class: type[anyio.CancelScope] | None = None


def cancel_scope(*, shield: bool = False) -> anyio.CancelScope:
    """``anyio.CancelScope(shield=shield)``, made directly; to call within the event loop."""
    global _scope_class
    if _scope_class is None:
        _scope_class = type(anyio.CancelScope())
    return _scope_class(shield=shield)
