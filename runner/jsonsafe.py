"""Results as JSON: every value that JSON can hold stays, every other one gets a stand-in.

A stand-in is ``{"_type", "_module", "_repr"}`` in the value's own place, so the rest of a
result stays intact; the original object is kept pickled in the store for the Python API.
"""

from __future__ import annotations

import math
from typing import Any

REPR_LIMIT = 200


def placeholder(value: Any) -> dict[str, str]:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the run
        text = f"<repr failed: {type(exc).__name__}>"
    if len(text) > REPR_LIMIT:
        text = text[: REPR_LIMIT - 3] + "..."
    kind = type(value)
    return {"_type": kind.__qualname__, "_module": kind.__module__, "_repr": text}


def json_safe(value: Any, _depth: int = 0) -> Any:
    """``value`` with every leaf JSON cannot hold replaced by a stand-in."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else placeholder(value)
    if _depth > 100:
        return placeholder(value)
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: json_safe(v, _depth + 1) for k, v in value.items()}
        return placeholder(value)
    if isinstance(value, list | tuple):
        return [json_safe(v, _depth + 1) for v in value]
    return placeholder(value)
