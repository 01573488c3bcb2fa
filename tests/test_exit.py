"""Locust exits once the run is over, including a Ctrl-C in the middle of heavy SSH work.

The hang this guards against: a headless run printed its last line and never exited. Under gevent's
patching, ``logging``'s locks were gevent locks, and the bridge's loop thread (a real thread) logs
through the same handlers as the greenlets: when stopped users' SFTP transfers are torn down, asyncio
reports "Task exception was never retrieved" from the loop thread just as Locust's main greenlet logs
"shutting down". A greenlet waiting for a handler lock that a real thread released could miss its
wake-up and sleep for ever (gevent 26.9; gevent issue #2013), with an idle hub and an idle loop thread.
The bridge now gives ``logging`` real locks and hands results over with real locks only.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import pytest
import users_support  # noqa: F401  (gevent monkey-patching first)
from needs import seeded_rng

from gateload.locustfiles.lib.aiobridge import get_bridge

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "homeoffice.py"
EXIT_WITHIN_S = 20.0

# Document-heavy employees: at any moment most users are in the middle of an SFTP download, so a stop
# tears transfers down under the loop thread, which then has errors to report.
SFTP_HEAVY = {
    "farm__accounts": 100,
    "farm__service__sftp_mb_per_s": 1.0,
    "farm__documents": {"memo.pdf": 1_048_576, "report.xlsx": 524_288},
    "workload__mix": {"sftp_get": 1.0, "typing": 0.2},
    "workload__think_min_s": 0.2,
    "workload__think_max_s": 0.5,
}

LOGGING_PROBE = """
import locust  # gevent patching, as under the locust command
import asyncio, logging, os, sys, time
import gevent
from gevent.monkey import get_original
from locust.log import setup_logging
from gateload.locustfiles.lib.aiobridge import get_bridge

setup_logging("INFO", logfile=os.devnull)  # Locust's handlers
last, records = [time.monotonic()], [0]

async def loop_thread_logs():  # bursts of errors, as when stopped users' transfers are torn down
    n = 0
    while True:
        logging.getLogger("asyncio").error("from the loop thread %d", n)
        n += 1
        await asyncio.sleep(0.05 if n % 100 == 0 else 0)

def greenlet_logs(i):
    while True:
        logging.getLogger("gateload.probe").info("from greenlet %d", i)
        records[0] += 1
        last[0] = time.monotonic()
        gevent.sleep(0)

def watchdog():  # a real thread: the hub may be what is stuck
    while True:
        get_original("time", "sleep")(0.2)
        if time.monotonic() - last[0] > STALL_S:
            os.write(1, f"stuck after {records[0]} records\\n".encode())
            os._exit(3)

get_bridge().submit(loop_thread_logs())
for i in range(4):
    gevent.spawn(greenlet_logs, i)
get_original("_thread", "start_new_thread")(watchdog, ())
gevent.sleep(RUN_S)
os.write(1, f"ok {records[0]} records\\n".encode())
os._exit(0)
"""


def test_greenlets_keep_logging_while_the_loop_thread_logs(tmp_path: Path) -> None:
    # Before the fix, all four greenlets parked for good on a free handler lock within ~2 s (5 of 5).
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(LOGGING_PROBE).replace("STALL_S", "3.0").replace("RUN_S", "6.0"))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), (proc.stdout, proc.stderr[-2000:])


def test_a_killed_greenlet_does_not_wait_for_its_coroutine_nor_leave_its_error_unretrieved() -> None:
    bridge = get_bridge()
    reported: list[str] = []
    previous = bridge.loop.get_exception_handler()  # the bridge's own, put back for the tests after this
    bridge.loop.set_exception_handler(lambda _loop, ctx: reported.append(str(ctx.get("message"))))
    ended: list[str] = []

    async def torn_down() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # the connection is being aborted under it
            ended.append("failed")
            raise ConnectionError("connection lost") from None

    try:
        g = gevent.spawn(bridge.call_timed, torn_down(), 30.0)  # as SSHSession runs its operations
        gevent.sleep(0.05)
        g.kill(block=True, timeout=5)
        # did not wait for the cancellation: the kill returned before the coroutine's 0.5 s teardown ended
        assert g.dead and ended == []
        deadline = time.monotonic() + 5
        while not ended and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert ended == ["failed"]
        bridge.run(asyncio.sleep(0.05))  # the loop has run the task's callbacks
        del g  # the dead greenlet's traceback no longer keeps the coroutine's tasks alive
        gc.collect()
        bridge.run(asyncio.sleep(0.05))
        assert not [m for m in reported if "never retrieved" in m], reported
    finally:
        bridge.loop.set_exception_handler(previous)


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return time.monotonic()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the log:\n{log.read_text(errors='replace')[-3000:]}")


def _exit_within(proc: subprocess.Popen[bytes], since: float, log: Path, code: int) -> None:
    try:
        proc.wait(timeout=max(0.1, since + EXIT_WITHIN_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"Locust still ran {EXIT_WITHIN_S} s after its run ended:\n{log.read_text()[-3000:]}")
    assert proc.returncode == code, log.read_text()[-3000:]


@pytest.mark.load
def test_locust_exits_after_its_run_ends_and_after_ctrl_c_mid_transfer(
    reference_farm: Callable[..., Path], tmp_path: Path
) -> None:
    profile = reference_farm("reference-after", **SFTP_HEAVY)
    rng = seeded_rng("Ctrl-C moments")  # printed with a failure; GATELOAD_TEST_SEED replays them
    for attempt, stop in enumerate(("end", "ctrl-c", "ctrl-c")):
        results, log = tmp_path / f"res-{attempt}", tmp_path / f"locust-{attempt}.log"
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
        cmd += ["--shape", "step", "--step-users", "30,80", "--step-hold", "3", "--step-ramp", "2"]
        cmd += ["--profile", str(profile), "--results-dir", str(results), "--label", "exit"]
        cmd += ["--exit-code-on-error", "0", "HomeofficeUser"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            if stop == "end":
                ended = _wait_for_line(log, " completed: ", proc, 60)
            else:  # Ctrl-C (the whole process group) at a random moment of the 80-user step
                _wait_for_line(log, "step 2/2", proc, 60)
                time.sleep(rng.uniform(2.5, 4.5))
                os.killpg(proc.pid, signal.SIGINT)
                ended = time.monotonic()
            _exit_within(proc, ended, log, 0 if stop == "end" else 1)  # a headless run cut short: 1
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        (run,) = (results / "exit").iterdir()
        meta = json.loads((run / "meta.json").read_text())
        assert meta["status"] == ("completed" if stop == "end" else "interrupted"), meta["status"]
        assert meta["recorder"]["complete"] and meta["sample_count"] > 0
        text = log.read_text()
        assert "coro=<GatewayConnection." not in text  # our operations' errors are all collected
        assert "Exception ignored" not in text, text[-3000:]  # no reports during finalization
