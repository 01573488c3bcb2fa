"""Ctrl-C in a Locust process lands in the main greenlet, never in a user's.

Python runs a SIGINT handler in whichever greenlet holds the main thread when the signal arrives.
The default handler raises ``KeyboardInterrupt`` right there: in a user's greenlet that kills the user
mid-operation, and gevent prints the traceback before the main greenlet (Locust's own ``except
KeyboardInterrupt``) shuts the run down. This handler raises it at once only in the main greenlet;
elsewhere (a user's greenlet, the hub) it has the hub throw it into the main greenlet at its next
turn, as gevent does with a system error. A second Ctrl-C before that turn (a greenlet that never
yields) raises at once, as before.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import gevent
from greenlet import getcurrent

_throw: Any = None  # the hub's callback that throws the last Ctrl-C into the main greenlet


def _on_sigint(_signum: int, _frame: FrameType | None) -> None:
    global _throw
    hub = gevent.get_hub()
    main = hub.parent
    if main is None or getcurrent() is main:
        raise KeyboardInterrupt
    if _throw is not None and _throw.pending:
        # a second Ctrl-C before the main greenlet ran: raise here, as the default does; gevent hands a
        # greenlet's KeyboardInterrupt to the main greenlet itself, so ours must not arrive as well
        _throw.stop()
        raise KeyboardInterrupt
    _throw = hub.loop.run_callback(main.throw, KeyboardInterrupt)


def install() -> None:
    """Take SIGINT in this process, if it still has Python's default handler (nobody chose another)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
