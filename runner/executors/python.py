"""Call one python task: inject what its type hints ask for, then await it or run it in a thread.

Async callables run on the event loop and are cancelled at their deadline. Sync callables run
in a thread of a pool of reused daemon threads, one call at a time each, with a copy of the
caller's context variables (the current run, where its print() and logging go). Python cannot
kill a thread, so at the deadline of a sync callable the run is recorded ``timed_out``, its
concurrency slot is freed, and the thread is abandoned: runner raises ``TaskTimeout`` inside it
(which stops code that is running Python bytecode, but not a blocking call such as
``time.sleep`` or a socket read), the thread leaves the pool (the next call gets another one),
and as a daemon it never keeps the process from exiting. Where a hard stop matters, use a shell
task. A thread's own state (``threading.local``) may outlive a call, as in any thread pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import ctypes
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio

from runner import inject
from runner.errors import RunnerError, TaskTimeout
from runner.signature import CallableSignature


@dataclass(frozen=True, slots=True)
class PythonOutcome:
    """What a python callable did: returned ``value``, or raised ``error``, or ran out of time."""

    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False


_RETURNED_NONE = PythonOutcome()  # what most calls return: not made anew each time


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
        if sig.injected:
            async with AsyncExitStack() as stack:
                arguments = dict(kwargs)
                for param in sig.injected:
                    assert param.inject is not None
                    arguments[param.name] = await _provide(param.inject, scope, stack)
                value = await _call(fn, sig, arguments, time_limit, thread_name)
        else:  # nothing to enter or leave
            value = await _call(fn, sig, kwargs, time_limit, thread_name)
        return PythonOutcome(value=value) if value is not None else _RETURNED_NONE
    except TaskTimeout as exc:
        return PythonOutcome(error=exc, timed_out=True)
    except (Exception, SystemExit) as exc:  # a task's sys.exit() fails the run, not runner
        return PythonOutcome(error=exc)


async def _call(
    fn: Callable[..., Any], sig: CallableSignature, arguments: Mapping[str, Any], time_limit: float | None,
    thread_name: str,
) -> Any:
    if sig.is_async:
        if time_limit is None:  # one coroutine fewer
            return await fn(**arguments)
        return await _await_within(fn(**arguments), time_limit)
    value = await _call_in_thread(fn, arguments, time_limit, thread_name)
    if value is not None and inspect.isawaitable(value):  # None: what most return (~3 k to ask)
        value = await _await_within(value, time_limit)
    return value


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


async def _await_within(awaitable: Any, time_limit: float | None) -> Any:
    if time_limit is None:  # no cancel scope to enter and leave: ~5% of a no-op run's instructions
        return await awaitable
    with anyio.move_on_after(time_limit) as deadline:
        return await awaitable
    assert deadline.cancelled_caught
    raise TaskTimeout(f"timed out after {time_limit:g}s")


async def _call_in_thread(
    fn: Callable[..., Any], arguments: Mapping[str, Any], time_limit: float | None, name: str
) -> Any:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    # current_run and the run's print()/logging routing, as on the loop; copied per call, so a
    # reused thread carries nothing over from the run before.
    call = _Call(fn, arguments, contextvars.copy_context(), name, _returns(loop), done)
    _POOL.start(call)
    try:
        if time_limit is None:  # no cancel scope to enter and leave
            await done
            timed_out = False
        else:
            with anyio.move_on_after(time_limit) as deadline:
                await done
            timed_out = deadline.cancelled_caught
    except anyio.get_cancelled_exc_class():
        call.abandon()
        raise
    if timed_out and call.abandon():
        raise TaskTimeout(f"timed out after {time_limit:g}s; the thread was abandoned")
    # Finished (perhaps just at the deadline, its hand-back still queued): its outcome stands.
    if call.error is not None:
        raise call.error
    return call.value


_QUEUED, _RUNNING, _DONE, _ABANDONED = range(4)


class _Call:
    """One sync call handed to the pool, and what came of it."""

    __slots__ = ("arguments", "context", "done", "error", "fn", "lock", "name", "returns", "state", "thread", "value")

    def __init__(
        self,
        fn: Callable[..., Any],
        arguments: Mapping[str, Any],
        context: contextvars.Context,
        name: str,
        returns: _Returns,
        done: asyncio.Future[None],
    ) -> None:
        self.fn = fn
        self.arguments = arguments
        self.context = context
        self.name = name
        self.returns = returns
        self.done = done
        self.value: Any = None
        self.error: BaseException | None = None
        self.state = _QUEUED
        self.thread: threading.Thread | None = None
        # Orders "a thread took it", "it finished" and "the loop gave up on it": TaskTimeout is
        # only ever raised into a thread still running this call, never into its next one.
        self.lock = threading.Lock()

    def run(self, worker: _Thread) -> None:
        """In ``worker``'s thread: call, hand the outcome to the loop (unless abandoned meanwhile)."""
        with self.lock:
            if self.state == _ABANDONED:  # given up on while it waited for a thread
                worker.pool.free()
                return
            self.state = _RUNNING
            self.thread = worker.thread
        threading.current_thread().name = self.name
        try:
            self.value = self.context.run(self.fn, **self.arguments)
        except BaseException as exc:
            self.error = exc
        with self.lock:
            if self.state == _ABANDONED:
                raise _Abandoned
            self.state = _DONE
        # Free again before the loop hears of it, so that the call the freed slot lets in is
        # taken by this thread rather than by one more woken for it.
        worker.pool.free()
        self.returns.put(self.done)

    def abandon(self) -> bool:
        """On the loop, at the deadline or on cancel: give up on a call not yet done (True)."""
        with self.lock:
            if self.state == _DONE or self.state == _ABANDONED:
                return False
            if self.state == _RUNNING:
                assert self.thread is not None
                _raise_in_thread(self.thread, TaskTimeout)
            self.state = _ABANDONED
        return True


class _Abandoned(Exception):
    """Ends a thread whose call was given up on: it leaves the pool."""


class _Returns:
    """The calls of one event loop that ended, handed back to it: the first to end wakes the
    loop, and those that end before it has looked ride along (a thread that runs several short
    calls in a row wakes the loop once, not once each)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # not kept alive by its entry in _RETURNS
        self._lock = threading.Lock()
        self._ended: list[asyncio.Future[None]] = []

    def put(self, done: asyncio.Future[None]) -> None:
        with self._lock:
            self._ended.append(done)
            if len(self._ended) > 1:  # the loop is told already
                return
        loop = self._loop()
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._hand_back)

    def _hand_back(self) -> None:
        with self._lock:
            ended, self._ended = self._ended, []
        # A call's printed text was queued on the loop before the call ended, so before this
        # looked; a future's waiter is woken by a callback queued now, behind that text.
        for done in ended:
            _settle(done)


_RETURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Returns] = weakref.WeakKeyDictionary()


def _returns(loop: asyncio.AbstractEventLoop) -> _Returns:
    returns = _RETURNS.get(loop)
    if returns is None:
        returns = _RETURNS[loop] = _Returns(loop)
    return returns


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():  # not when its waiter was cancelled meanwhile
        done.set_result(None)


class _Pool:
    """Daemon threads for sync calls, reused (starting a thread per call cost ~100 us of a
    no-op run), taking calls from one queue.

    A thread is woken (or made) for a call only when no thread is free, that is awake and
    between calls; a thread that takes a call and leaves others queued wakes one more for them.
    So a call never waits behind another that blocks, there are never more threads than calls
    at once (the engine's concurrency bounds them), and short calls queued together are run by
    one thread in a row rather than by one woken thread each (each wake-up also moves the GIL
    between threads). A thread asleep for ``IDLE_SECONDS`` ends. A thread whose call was
    abandoned leaves the pool: it may stay stuck in a blocking call for good."""

    IDLE_SECONDS = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: collections.deque[_Call] = collections.deque()
        self._asleep: list[_Thread] = []
        self._free = 0

    def forget(self) -> None:
        """In a forked child: no thread of the parent's is there."""
        self.__init__()  # type: ignore[misc]

    def start(self, call: _Call) -> None:
        with self._lock:
            self._calls.append(call)
            if not self._free:
                self._wake_one()

    def _wake_one(self) -> None:
        self._free += 1
        if self._asleep:
            self._asleep.pop().wake.release()
        else:
            _Thread(self)

    def free(self) -> None:
        with self._lock:
            self._free += 1

    def take(self, worker: _Thread) -> _Call | None:
        """A free ``worker``'s next call, or None: it is asleep now, until woken."""
        with self._lock:
            self._free -= 1
            if not self._calls:
                self._asleep.append(worker)
                return None
            call = self._calls.popleft()
            if self._calls and not self._free:
                self._wake_one()
            return call

    def retire(self, worker: _Thread) -> bool:
        """Take a sleeping ``worker`` out of the pool; False if it was woken meanwhile."""
        with self._lock:
            if worker not in self._asleep:
                return False
            self._asleep.remove(worker)
            return True


class _Thread:
    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.wake = threading.Lock()
        self.wake.acquire()
        self.thread = threading.Thread(target=self._serve, name="runner-task", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while True:
                call = self.pool.take(self)
                if call is not None:
                    call.run(self)
                elif not self.wake.acquire(timeout=self.pool.IDLE_SECONDS):
                    if self.pool.retire(self):
                        return
                    self.wake.acquire()  # woken just now: the release is on its way
        except (_Abandoned, TaskTimeout):
            return  # TaskTimeout: raised into an abandoned call after its callable had returned


_POOL = _Pool()
# A forked child has none of the parent's threads: an idle one handed a call would never run it.
os.register_at_fork(after_in_child=_POOL.forget)


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    """Ask ``thread`` to raise ``exc_type`` at its next bytecode (best effort)."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))
