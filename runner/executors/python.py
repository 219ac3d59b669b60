"""Call one python task: inject what its type hints ask for, then await it or run it in a thread.

Async callables run on the event loop and are cancelled at their deadline. Sync callables run
in a thread of their own. Python cannot kill a thread, so at the deadline of a sync callable
the run is recorded ``timed_out``, its concurrency slot is freed, and the thread is abandoned:
runner raises ``TaskTimeout`` inside it (which stops code that is running Python bytecode, but
not a blocking call such as ``time.sleep`` or a socket read), and the thread is a daemon, so it
never keeps the process from exiting. Where a hard stop matters, use a shell task.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import inspect
import threading
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio

from runner import inject
from runner.errors import RunnerError, TaskTimeout
from runner.signature import CallableSignature


@dataclass(frozen=True)
class PythonOutcome:
    """What a python callable did: returned ``value``, or raised ``error``, or ran out of time."""

    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False


async def call_python(
    fn: Callable[..., Any],
    sig: CallableSignature,
    kwargs: Mapping[str, Any],
    *,
    scope: Any,
    time_limit: float | None,
    thread_name: str = "runner-task",
) -> PythonOutcome:
    """Call ``fn`` with ``kwargs`` plus its injected parameters, within ``time_limit`` seconds.

    ``scope`` is handed to each injection provider. A provider may return the instance, an
    awaitable of it, or an async context manager; a context manager is left with the task's
    exception (or none), so a session can commit on success and roll back on failure. An
    instance of the requested type is handed over as it is, even when it is a context manager
    itself (the ``Engine``): entering it again would start and then close a second engine.
    """
    try:
        async with AsyncExitStack() as stack:
            arguments = dict(kwargs)
            for param in sig.injected:
                assert param.inject is not None
                arguments[param.name] = await _provide(param.inject, scope, stack)
            if sig.is_async:
                value = await _call_async(fn, arguments, time_limit)
            else:
                value = await _call_in_thread(fn, arguments, time_limit, thread_name)
                if inspect.isawaitable(value):
                    value = await _await_within(value, time_limit)
        return PythonOutcome(value=value)
    except TaskTimeout as exc:
        return PythonOutcome(error=exc, timed_out=True)
    except (Exception, SystemExit) as exc:  # a task's sys.exit() fails the run, not runner
        return PythonOutcome(error=exc)


async def _provide(key: str, scope: Any, stack: AsyncExitStack) -> Any:
    provider = inject.provider_for(key)
    if provider is None:
        raise RunnerError(f"nothing provides {inject.display_name(key)} in this runner")
    value = provider(scope)
    if inspect.isawaitable(value):
        value = await value
    is_instance = any(inject.key_of(cls) == key for cls in type(value).__mro__)
    if not is_instance and hasattr(value, "__aenter__") and hasattr(value, "__aexit__"):
        value = await stack.enter_async_context(value)
    return value


async def _call_async(fn: Callable[..., Any], arguments: dict[str, Any], time_limit: float | None) -> Any:
    return await _await_within(fn(**arguments), time_limit)


async def _await_within(awaitable: Any, time_limit: float | None) -> Any:
    with anyio.move_on_after(time_limit) as deadline:
        return await awaitable
    assert deadline.cancelled_caught
    raise TaskTimeout(f"timed out after {time_limit:g}s")


async def _call_in_thread(
    fn: Callable[..., Any], arguments: dict[str, Any], time_limit: float | None, name: str
) -> Any:
    done = anyio.Event()
    box: dict[str, Any] = {}
    token = anyio.lowlevel.current_token()
    context = contextvars.copy_context()  # current_run and friends, as on the loop

    def target() -> None:
        try:
            box["value"] = context.run(fn, **arguments)
        except BaseException as exc:
            box["error"] = exc
        finally:
            with contextlib.suppress(anyio.RunFinishedError):
                anyio.from_thread.run_sync(done.set, token=token)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        with anyio.move_on_after(time_limit):
            await done.wait()
    except anyio.get_cancelled_exc_class():
        _raise_in_thread(thread, TaskTimeout)
        raise
    if not done.is_set():
        _raise_in_thread(thread, TaskTimeout)
        raise TaskTimeout(f"timed out after {time_limit:g}s; the thread was abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    """Ask ``thread`` to raise ``exc_type`` at its next bytecode (best effort)."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))
