"""Ctrl-C lands in the main greenlet, not in the user greenlet that happened to run (interrupt.py).

Each case runs in its own interpreter: a SIGINT to the pytest process itself would be a risk to the
whole session. The signal is sent from inside a greenlet that keeps the CPU for 0.2 s, so Python runs
the handler in that greenlet: the case the default handler gets wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os, signal, sys, time

import gevent

from gateload.locustfiles.lib import interrupt

if sys.argv[2] == "installed":
    interrupt.install()
events = []


def user():
    for _ in range(int(sys.argv[1])):
        os.kill(os.getpid(), signal.SIGINT)
        t = time.monotonic()
        while time.monotonic() - t < 0.2:  # the handler runs here, in this greenlet
            pass
    events.append("user finished")


g = gevent.spawn(user)
try:
    g.join()
    events.append("main went on")
except KeyboardInterrupt:
    events.append("main interrupted")
gevent.sleep(0.05)
print(json.dumps({"events": events, "user_ok": g.successful(), "user_error": repr(g.exception)}))
"""


def run_case(ctrl_c: int, handler: str) -> tuple[dict[str, object], str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ctrl_c), handler], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_default_handler_kills_the_user_greenlet_that_ran() -> None:
    # the baseline this module exists for: the same script without it
    result, stderr = run_case(1, "default")
    assert result == {"events": ["main interrupted"], "user_ok": False, "user_error": "KeyboardInterrupt()"}
    assert "Traceback" in stderr


def test_one_ctrl_c_interrupts_main_and_lets_the_user_finish() -> None:
    result, stderr = run_case(1, "installed")
    assert result == {"events": ["user finished", "main interrupted"], "user_ok": True, "user_error": "None"}
    assert "Traceback" not in stderr, stderr


def test_a_second_ctrl_c_before_main_runs_interrupts_at_once() -> None:
    # a greenlet that never yields must not make Ctrl-C powerless
    result, _ = run_case(2, "installed")
    assert result == {"events": ["main interrupted"], "user_ok": False, "user_error": "KeyboardInterrupt()"}


@pytest.mark.parametrize("preset", ["ignored", "custom"])
def test_install_keeps_a_handler_someone_chose(preset: str) -> None:
    code = (
        "import signal, sys\n"
        "from gateload.locustfiles.lib import interrupt\n"
        "mine = signal.SIG_IGN if sys.argv[1] == 'ignored' else (lambda *a: None)\n"
        "signal.signal(signal.SIGINT, mine)\n"
        "interrupt.install()\n"
        "assert signal.getsignal(signal.SIGINT) is mine\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "interrupt.install()\n"
        "assert signal.getsignal(signal.SIGINT) is interrupt._on_sigint\n"
    )
    out = subprocess.run([sys.executable, "-c", code, preset], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
