"""The gevent/asyncio bridge: results, errors, concurrency, real threads, cancellation, clean exit."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncssh
import gevent
import pytest
import users_support  # noqa: F401  (gevent monkey-patching first)
from gevent.monkey import get_original
from users_support import wait_until

from gateload.locustfiles.lib import (
    aiobridge,
    sshops,  # noqa: F401  (registers its orphans)
)
from gateload.locustfiles.lib.aiobridge import Timed, get_bridge

REPO = Path(__file__).resolve().parent.parent
_real_sleep = get_original("time", "sleep")
_real_ident = get_original("_thread", "get_ident")


def test_run_returns_the_result_and_reraises_the_exception() -> None:
    bridge = get_bridge()

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def fail() -> None:
        raise KeyError("boom")

    assert bridge.run(double(21)) == 42
    with pytest.raises(KeyError):
        bridge.run(fail())


def test_timed_measures_inside_the_loop_and_captures_failures() -> None:
    bridge = get_bridge()
    ok = bridge.call_timed(asyncio.sleep(0.05, result="done"))
    assert isinstance(ok, Timed) and ok.ok and ok.value == "done"
    assert 50.0 <= ok.duration_ms < 1000.0
    assert abs(ok.start_time - time.time()) < 5.0
    late = bridge.call_timed(asyncio.sleep(5), timeout=0.05)
    assert not late.ok and isinstance(late.error, TimeoutError)
    assert late.duration_ms < 4000.0


def test_greenlets_wait_concurrently_and_the_hub_keeps_running() -> None:
    bridge = get_bridge()
    t0 = time.perf_counter()
    waits = [gevent.spawn(bridge.call_timed, asyncio.sleep(0.2)) for _ in range(200)]
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(10)])
    gevent.joinall([*waits, ticker], timeout=30)
    elapsed = time.perf_counter() - t0
    assert all(g.successful() and g.value.ok for g in waits)
    assert min(g.value.duration_ms for g in waits) >= 200.0
    assert len(ticks) == 10  # other greenlets ran while 200 were waiting on the loop
    assert elapsed < 200 * 0.2 / 4  # far from serial: they waited together


def test_the_loop_runs_in_a_real_thread() -> None:
    bridge = get_bridge()
    stamps: list[float] = []

    async def tick() -> None:
        for _ in range(30):
            stamps.append(time.perf_counter())
            await asyncio.sleep(0.01)

    fut = bridge.submit(tick())
    _real_sleep(0.2)  # blocks this thread and its hub, not the loop thread
    assert len(stamps) >= 5
    fut.result(timeout=10)

    async def idents() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        return _real_ident(), await loop.run_in_executor(None, _real_ident)

    loop_ident, worker_ident = bridge.run(idents())
    assert len({loop_ident, worker_ident, _real_ident()}) == 3


def test_a_killed_greenlet_cancels_its_coroutine() -> None:
    bridge = get_bridge()
    seen: list[str] = []

    async def long() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("finished")

    g = gevent.spawn(bridge.run, long())
    gevent.sleep(0.05)
    t0 = time.perf_counter()
    g.kill(block=True, timeout=5)
    assert g.dead and time.perf_counter() - t0 < 2.0
    assert wait_until(lambda: seen == ["cancelled"], 5.0)


def test_run_from_the_loop_thread_is_refused() -> None:
    bridge = get_bridge()

    async def nested() -> str:
        try:
            bridge.run(asyncio.sleep(0))
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "loop thread" in bridge.run(nested())


def test_the_interpreter_exits_cleanly_with_work_still_pending(tmp_path: Path) -> None:
    script = tmp_path / "exit_with_pending.py"
    script.write_text(
        textwrap.dedent(
            """
            import locust  # gevent patching, as under the locust command
            import asyncio, gevent
            from gateload.locustfiles.lib.aiobridge import get_bridge

            bridge = get_bridge()
            bridge.submit(asyncio.sleep(3600))           # never finishes on its own
            gevent.spawn(bridge.run, asyncio.sleep(3600))  # a greenlet still waiting
            gevent.sleep(0.05)

            async def blocking():
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(None, sum, [1, 2, 3])

            assert bridge.run(blocking()) == 6
            print("done", flush=True)
            """
        )
    )
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert time.monotonic() - t0 < 30


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_orphans_a_protocol_names_are_debug_and_any_other_stays_an_error() -> None:
    """A dropped SFTP transfer's read-ahead tasks are DEBUG; an unawaited task's ValueError is still ERROR."""
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("asyncio", "gateload.bridge")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(records)
        logger.setLevel(logging.DEBUG)

    async def orphan(error: BaseException) -> None:
        async def fail() -> None:
            raise error

        task = asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0)
        assert task.done()
        del task
        gc.collect()  # the unawaited task is reported when it is collected

    handler = get_bridge().loop.get_exception_handler()
    assert handler is aiobridge._report, f"the bridge's exception handler was replaced by {handler}"
    try:
        get_bridge().run(orphan(asyncssh.SFTPConnectionLost("Connection closed")))
        get_bridge().run(orphan(ValueError("a bug")))
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(records)
            logger.setLevel(level)
    seen = [
        (r.name, r.levelname, repr(r.exc_info[1]) if r.exc_info else r.getMessage()) for r in records.records
    ]
    assert [x for x in seen if "SFTPConnectionLost" in x[2]] == [
        ("gateload.bridge", "DEBUG", "unawaited task ended with SFTPConnectionLost('Connection closed')")
    ], seen
    assert [x for x in seen if "ValueError" in x[2]] == [("asyncio", "ERROR", "ValueError('a bug')")], seen
