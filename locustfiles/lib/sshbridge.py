"""The gevent/asyncio bridge: one asyncio loop in a real OS thread, awaited from greenlets.

Locust runs users as greenlets under gevent's monkey patching; asyncssh is asyncio. What measured
accurate on this machine (see DESIGN.md): one asyncio loop per process in a **real** OS thread (the
original ``_thread.start_new_thread``, an epoll selector from the unpatched ``selectors``), coroutines
submitted with :func:`asyncio.run_coroutine_threadsafe`, the result handed back to the waiting greenlet
through the gevent hub's thread-safe callback, and every operation timed **inside the coroutine**
(:func:`timed`), because timing around the bridge in the greenlet adds 7-20 ms under load.

The loop starts lazily on first use, so ``locust --processes N`` (which forks) gets one loop per child.
A greenlet killed while it waits (a stopped user) cancels its coroutine. At interpreter exit the loop
is stopped and its thread joined.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import gevent
from gevent.hub import Waiter
from gevent.monkey import get_original

T = TypeVar("T")

# asyncssh logs every channel open/close at INFO: megabytes per run and a cost on the hot path.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

_start_new_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")
_get_ident = get_original("_thread", "get_ident")
_EpollSelector = get_original("selectors", "EpollSelector")
_SimpleQueue = get_original("queue", "SimpleQueue")
_getaddrinfo = get_original("socket", "getaddrinfo")
_getnameinfo = get_original("socket", "getnameinfo")

#: Seconds the GIL is held before another thread may run: short, so the loop thread's timestamps are
#: taken close to the moment its data arrives even while greenlets burn CPU.
SWITCH_INTERVAL_S = 0.001
EXECUTOR_WORKERS = 4
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Timed(Generic[T]):
    """An operation's outcome, timed in the loop thread."""

    start_time: float  # epoch seconds when the operation started
    duration_ms: float
    value: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def timed(aw: Awaitable[T], timeout: float | None = None) -> Timed[T]:
    """Await ``aw`` and time it with ``perf_counter``; failures (and timeouts) are captured, not raised.

    Cancellation is not captured: a cancelled operation produces no outcome.
    """
    start_time = time.time()
    t0 = time.perf_counter()
    try:
        value = await asyncio.wait_for(aw, timeout) if timeout else await aw
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Timed(start_time, (time.perf_counter() - t0) * 1000.0, None, exc)
    return Timed(start_time, (time.perf_counter() - t0) * 1000.0, value, None)


class RealThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """A fixed pool of real OS threads (not greenlets) for the loop's blocking calls.

    Under gevent patching the stdlib pool's workers are greenlets; asyncssh's ``connect()`` runs its
    option parsing there, and such a pool hung the interpreter at exit. It subclasses
    ThreadPoolExecutor only because ``loop.set_default_executor`` insists; none of its (patched)
    internals are used.
    """

    def __init__(self, workers: int = EXECUTOR_WORKERS) -> None:  # no super().__init__() on purpose
        self._queue = _SimpleQueue()
        self._workers = workers
        self._shutdown = False
        for _ in range(workers):
            _start_new_thread(self._work, ())

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        if self._shutdown:
            raise RuntimeError("executor is shut down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # Workers are raw threads: the interpreter does not wait for them, so "wait" is not needed.
        if not self._shutdown:
            self._shutdown = True
            for _ in range(self._workers):
                self._queue.put(None)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)


class _Loop(asyncio.SelectorEventLoop):
    """A selector loop whose name lookups use the unpatched resolver in a real thread."""

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):  # type: ignore[override]
        return await self.run_in_executor(None, _getaddrinfo, host, port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr, flags=0):  # type: ignore[override]
        return await self.run_in_executor(None, _getnameinfo, sockaddr, flags)


class Bridge:
    """One asyncio loop in a real OS thread, and the way greenlets wait for its coroutines."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.executor = RealThreadExecutor()
        self.loop = _Loop(_EpollSelector())
        self.loop.set_default_executor(self.executor)
        self._thread_id: int | None = None
        self._done = _allocate_lock()
        self._done.acquire()
        started = _allocate_lock()
        started.acquire()
        _start_new_thread(self._main, (started,))
        started.acquire()  # a real lock: the thread signals within microseconds

    def _main(self, started: Any) -> None:
        self._thread_id = _get_ident()
        asyncio.set_event_loop(self.loop)
        started.release()
        try:
            self.loop.run_forever()
            self._cancel_pending()
        finally:
            self.loop.close()
            self._done.release()

    def _cancel_pending(self) -> None:
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop without waiting (e.g. closing a connection of a stopped user)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it in this greenlet; its exception is re-raised here.

        Only this greenlet blocks: the hub keeps running the others. If the greenlet is killed while
        waiting, the coroutine is cancelled and nothing is returned.
        """
        if _get_ident() == self._thread_id:
            coro.close()
            raise RuntimeError("Bridge.run called from the loop thread; await the coroutine instead")
        future = self.submit(coro)
        hub = gevent.get_hub()
        waiter = Waiter(hub)
        # An async watcher is the hub's thread-safe doorbell; while started it also keeps the hub
        # from concluding that nothing can wake it (LoopExit). Started before the callback is added,
        # because a send() to a watcher not yet started is lost.
        watcher = hub.loop.async_()
        watcher.start(waiter.switch, None)

        def ring(_: concurrent.futures.Future[T]) -> None:
            # Runs in the loop thread (or here, if already done); the watcher may be closed by then
            # if the waiting greenlet was killed.
            with contextlib.suppress(Exception):
                watcher.send()

        future.add_done_callback(ring)
        try:
            waiter.get()
        except BaseException:
            future.cancel()
            raise
        finally:
            watcher.close()
        return future.result()

    def call_timed(self, aw: Awaitable[T], timeout: float | None = None) -> Timed[T]:
        """Run one operation on the loop, timed inside it; failures come back in ``Timed.error``."""
        return self.run(timed(aw, timeout))

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop the loop (cancelling what still runs) and join its thread; True if it ended in time."""
        if self._done.locked():
            with contextlib.suppress(RuntimeError):  # already closed
                self.loop.call_soon_threadsafe(self.loop.stop)
        ended = self._done.acquire(timeout=timeout)
        if ended:
            self._done.release()
        self.executor.shutdown(wait=False)
        return ended


_bridge: Bridge | None = None


def get_bridge() -> Bridge:
    """This process's bridge, started on first use (after a fork, the child starts its own)."""
    global _bridge
    if _bridge is None or _bridge.pid != os.getpid():
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        _bridge = Bridge()
    return _bridge


def stop_bridge(timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop this process's bridge if it runs; True if nothing is left running."""
    global _bridge
    bridge, _bridge = _bridge, None
    if bridge is None or bridge.pid != os.getpid():
        return True
    return bridge.stop(timeout)


def _forget_after_fork() -> None:
    # The child has no loop thread: it must start its own on first use.
    global _bridge
    _bridge = None


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(stop_bridge)
