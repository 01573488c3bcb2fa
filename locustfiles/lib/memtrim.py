"""Keeps a long run's memory flat: Locust's per-second counters and the memory malloc keeps free.

Every ``StatsEntry`` counts requests and failures per second in ``num_reqs_per_sec`` and
``num_fail_per_sec``: one key a second per request name, never dropped on a local runner or a master
(workers reset theirs with every report). Locust reads only the last 12 s of them (``current_rps``,
``current_fail_per_sec``) and gateload's samples hold the whole record, so keys older than ``KEEP_S``
are dropped every ``EVERY_S``; without this they grow by about 40 kB a minute at 25 request names.
Every ``RELEASE_EVERY_S`` the free memory malloc keeps goes back to the system (``gateload.memory``).
"""

from __future__ import annotations

import time
from typing import Any

import gevent

from gateload.memory import RELEASE_EVERY_S, release_free_memory

KEEP_S = 60
EVERY_S = 10.0


def trim(stats: Any, now: float) -> int:
    """Drop per-second counts older than ``KEEP_S`` from every entry of ``stats``; how many went."""
    cutoff = int(now) - KEEP_S
    dropped = 0
    for entry in (stats.total, *stats.entries.values()):
        for per_sec in (entry.num_reqs_per_sec, entry.num_fail_per_sec):
            old = [t for t in per_sec if t < cutoff]
            for t in old:
                del per_sec[t]
            dropped += len(old)
    return dropped


def keep_trimmed(environment: Any) -> gevent.Greenlet:
    """Trim ``environment.runner.stats`` every ``EVERY_S`` and release free memory until quitting."""

    def loop() -> None:
        released_at = time.monotonic()
        while True:
            gevent.sleep(EVERY_S)
            if environment.runner is not None:
                trim(environment.runner.stats, time.time())
            if time.monotonic() - released_at >= RELEASE_EVERY_S:
                release_free_memory()
                released_at = time.monotonic()

    greenlet = gevent.spawn(loop)
    environment.events.quitting.add_listener(lambda **_kw: greenlet.kill(block=False))
    return greenlet
