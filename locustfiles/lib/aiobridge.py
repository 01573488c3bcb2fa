"""The gevent/asyncio bridge: one asyncio loop in a real OS thread, awaited from greenlets.

Locust runs users as greenlets under gevent's monkey patching; asyncssh, like the asyncio clients other
remote-access protocols need (SSL-VPN tunnels, RDP), is asyncio. What measured accurate on this machine
(see DESIGN.md): one asyncio loop per process in a **real** OS thread (the original
``_thread.start_new_thread``, an epoll selector from the unpatched ``selectors``), coroutines started
with ``call_soon_threadsafe``, the result handed back to the waiting greenlet through the gevent hub's
thread-safe callback, and every operation timed **inside the coroutine** (:func:`timed`), because timing
around the bridge in the greenlet adds 7-20 ms under load.

The loop starts lazily on first use, so ``locust --processes N`` (which forks) gets one loop per child.
A greenlet killed while it waits (a stopped user) cancels its coroutine and does not wait for it. At
interpreter exit the loop is stopped and its thread joined.

**No gevent lock may be shared with a real thread.** Under monkey patching every ``threading`` lock is a
gevent lock, and a greenlet parked on one that a real thread releases can miss its wake-up and sleep
forever (gevent 26.9; gevent issue #2013). So what the greenlets and the loop thread both touch uses real
locks only: the hand-over of each result (:class:`_Call`, no ``concurrent.futures.Future``), the
executor's futures, and ``logging`` (:func:`share_logging_with_real_threads`), through which the loop
thread reports asyncio's and asyncssh's errors.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
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
_RealRLock = get_original("_thread", "RLock")
_get_ident = get_original("_thread", "get_ident")
_EpollSelector = get_original("selectors", "EpollSelector")
_select = get_original("select", "select")
_SimpleQueue = get_original("queue", "SimpleQueue")
_getaddrinfo = get_original("socket", "getaddrinfo")
_getnameinfo = get_original("socket", "getnameinfo")

#: Seconds the GIL is held before another thread may run: short, so the loop thread's timestamps are
#: taken close to the moment its data arrives even while greenlets burn CPU.
SWITCH_INTERVAL_S = 0.001
EXECUTOR_WORKERS = 4
STOP_TIMEOUT_S = 5.0


def _real_handler_lock(self: logging.Handler) -> None:
    # logging.Handler.createLock, with a real lock (still re-initialised in a forked child).
    self.lock = _RealRLock()
    logging._register_at_fork_reinit_lock(self)  # type: ignore[attr-defined]


def share_logging_with_real_threads() -> None:
    """Give ``logging`` real locks: its module lock, every handler's lock, and those of later handlers.

    The loop thread logs through the same handlers as the greenlets (asyncio's "Task exception was
    never retrieved" when stopped users' connections are torn down, asyncssh's warnings). With gevent
    locks, a greenlet waiting for a handler the loop thread had just used could sleep forever: Locust's
    main greenlet at its "shutting down" log line, so the process never exited. A real lock is held
    only while a record is written, and a greenlet never switches away while holding it.
    """
    if not isinstance(logging._lock, _RealRLock):  # type: ignore[attr-defined]
        old = logging._lock  # type: ignore[attr-defined]
        if old.acquire(blocking=False):  # nobody inside logging's bookkeeping right now
            logging._lock = _RealRLock()  # type: ignore[attr-defined]
            old.release()
    logging.Handler.createLock = _real_handler_lock  # type: ignore[method-assign]
    for ref in list(logging._handlerList):  # type: ignore[attr-defined]
        handler = ref()
        lock = getattr(handler, "lock", None)
        if lock is not None and not isinstance(lock, _RealRLock) and lock.acquire(blocking=False):
            handler.lock = _RealRLock()  # type: ignore[union-attr]
            lock.release()


share_logging_with_real_threads()


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

    Cancellation is not captured: a cancelled operation produces no outcome. ``aw`` runs in the calling
    task (``asyncio.timeout``, not ``wait_for``'s inner task, whose error after a cancellation nobody
    collects: asyncio then logs "Task exception was never retrieved" from the loop thread).
    """
    start_time = time.time()
    t0 = time.perf_counter()
    try:
        if timeout:
            async with asyncio.timeout(timeout):
                value = await aw
        else:
            value = await aw
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
        started = _allocate_lock()
        for _ in range(workers):
            started.acquire()
            _start_new_thread(self._work, (started,))
        started.acquire()  # the last worker is registered too
        started.release()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        if self._shutdown:
            raise RuntimeError("executor is shut down")
        future: concurrent.futures.Future[T] = _RealFuture()
        self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # Workers are raw threads: the interpreter does not wait for them, so "wait" is not needed.
        if not self._shutdown:
            self._shutdown = True
            for _ in range(self._workers):
                self._queue.put(None)

    def _work(self, started: Any) -> None:
        _register_thread(started)
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)


class _RealFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """A Future whose condition is a real lock: set in a worker thread, read in the loop thread."""

    def __init__(self) -> None:
        super().__init__()
        self._condition = threading.Condition(_RealRLock())


def _register_thread(started: Any) -> None:
    """Register this real thread with ``threading`` (its first log record would, under a gevent lock)
    while the thread that started it waits on ``started``, a real lock; then release it."""
    threading.current_thread()
    started.release()


class _Call(Generic[T]):
    """One coroutine run on the loop for one waiting greenlet; the threads share only a real lock.

    The loop thread starts the task, stores its outcome and rings the greenlet's doorbell (a gevent
    async watcher, the hub's thread-safe wake-up). The greenlet, if killed while waiting, marks the call
    abandoned and has the task cancelled without waiting for it.
    """

    __slots__ = ("_abandoned", "_lock", "_outcome", "_task", "_watcher")

    def __init__(self, watcher: Any) -> None:
        self._lock = _allocate_lock()  # real; held for a few bytecodes, never across a switch
        self._watcher: Any = watcher  # None once the greenlet stopped waiting
        self._task: asyncio.Task[T] | None = None
        self._abandoned = False
        self._outcome: tuple[T | None, BaseException | None] | None = None

    # --- loop thread ------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> None:
        task = loop.create_task(coro)
        task.add_done_callback(self._finished)
        with self._lock:
            self._task = task
            abandoned = self._abandoned
        if abandoned:  # killed before the loop got here; after its first step (no "never awaited")
            loop.call_soon(task.cancel)

    def _finished(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            outcome: tuple[T | None, BaseException | None] = (None, concurrent.futures.CancelledError())
        else:
            error = task.exception()  # retrieved even when nobody waits any more: no "never retrieved"
            outcome = (None if error is not None else task.result(), error)
        with self._lock:
            self._outcome = outcome
            if self._watcher is not None:
                self._watcher.send()

    # --- greenlet side ----------------------------------------------------------------------------

    def abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop waiting: the coroutine is cancelled (or never started); nothing waits for that."""
        with self._lock:
            self._abandoned = True
            task = self._task
        if task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                loop.call_soon_threadsafe(task.cancel)

    def detach(self) -> None:
        """The greenlet no longer listens: close its doorbell (never while the loop thread rings it)."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
        watcher.close()

    def result(self) -> T:
        with self._lock:
            outcome = self._outcome
        if outcome is None:
            raise RuntimeError("Bridge: woken before the coroutine finished")
        value, error = outcome
        if error is not None:
            raise error
        return value  # type: ignore[return-value]


def _ignore_at_exit(_loop: asyncio.AbstractEventLoop, _context: dict[str, Any]) -> None:
    """The loop's exception handler once it stops (see ``Bridge._main``)."""


_ORPHAN_ERRORS: tuple[type[BaseException], ...] = ()
_orphans = logging.getLogger("gateload.bridge")


def quiet_orphans(*errors: type[BaseException]) -> None:
    """Report a task that nobody awaited and that ended with one of ``errors`` at DEBUG, not ERROR.

    For a protocol module to name what its library leaves behind when a connection drops (asyncssh's
    SFTP read-ahead tasks end with ``SFTPConnectionLost``, never collected): the operation that owned
    them has recorded the failure already, and a traceback per orphan buried the log of every fault run.
    """
    global _ORPHAN_ERRORS
    _ORPHAN_ERRORS = tuple(dict.fromkeys((*_ORPHAN_ERRORS, *errors)))


def _report(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler while it runs: orphans of :func:`quiet_orphans` at DEBUG."""
    error = context.get("exception")
    # An unawaited task comes as "future" from the C tasks, "task" from the pure-Python ones.
    if ("future" in context or "task" in context) and isinstance(error, _ORPHAN_ERRORS):
        _orphans.debug("unawaited task ended with %r", error)
        return
    loop.default_exception_handler(context)


class _PreciseEpollSelector(_EpollSelector):  # type: ignore[misc,valid-type]
    """epoll, with timer wake-ups to within a thread wake-up instead of up to 1 ms late.

    ``epoll_wait`` counts its timeout in whole milliseconds, and the stdlib rounds up: every asyncio
    timer (a paced keystroke's planned start) fired 0-1 ms late, half the 1 ms p50 budget of
    bench_timing/bench_density. Here a timeout is rounded down to whole milliseconds for epoll (the
    loop wakes at most 1 ms early and finds its timer not yet due), and the sub-millisecond rest is
    waited for with ``select()`` on the epoll descriptor itself (microsecond timeout; readable as
    soon as any registered socket is), then collected without blocking. Only waits for a timer take
    the second syscall; a busy loop (timeout 0) or one waiting for I/O alone is unchanged.
    """

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout > 0:
            whole_ms = int(timeout * 1000.0)
            if whole_ms >= 1:
                # (whole_ms - 0.5) ms: the stdlib's ceiling makes it exactly whole_ms
                return super().select((whole_ms - 0.5) / 1000.0)
            fd = self._selector.fileno()
            if fd < _FD_SETSIZE:
                with contextlib.suppress(InterruptedError):
                    _select([fd], [], [], timeout)
                timeout = 0
        return super().select(timeout)  # type: ignore[no-any-return]


_FD_SETSIZE = 1024  # select() takes descriptors below this; above, the plain epoll wait is used


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
        self.loop = _Loop(_PreciseEpollSelector())
        self.loop.set_default_executor(self.executor)
        self.loop.set_exception_handler(_report)
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
        _register_thread(started)
        try:
            self.loop.run_forever()
            # Stopping at exit: what torn-down connections leave behind (asyncssh's SFTP read-ahead
            # tasks ending with SFTPConnectionLost, never collected) is reported when garbage-collected,
            # mostly during interpreter finalization, where logging fails with a traceback per report
            # ("Exception ignored ... greenlet is being finalized"). Nothing of it is actionable now.
            self.loop.set_exception_handler(_ignore_at_exit)
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
        """Start ``coro`` on the loop without waiting for it (greenlets wait with :meth:`run`)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it in this greenlet; its exception is re-raised here.

        Only this greenlet blocks: the hub keeps running the others. If the greenlet is killed while
        waiting, the coroutine is cancelled (not waited for) and nothing is returned.
        """
        if _get_ident() == self._thread_id:
            coro.close()
            raise RuntimeError("Bridge.run called from the loop thread; await the coroutine instead")
        hub = gevent.get_hub()
        waiter: Waiter[Any] = Waiter(hub)
        # An async watcher is the hub's thread-safe doorbell; while started it also keeps the hub
        # from concluding that nothing can wake it (LoopExit). Started before the coroutine is handed
        # over, because a send() to a watcher not yet started is lost.
        watcher = hub.loop.async_()
        watcher.start(waiter.switch, None)
        call: _Call[T] = _Call(watcher)
        try:
            self.loop.call_soon_threadsafe(call.start, self.loop, coro)
        except BaseException:  # the loop is closed
            coro.close()
            call.detach()
            raise
        try:
            waiter.get()
        except BaseException:
            call.abandon(self.loop)
            raise
        finally:
            call.detach()
        return call.result()

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
