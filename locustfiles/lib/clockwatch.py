"""Generator pauses: stretches in which a Locust process ran nothing, seen from its two clocks.

A virtual machine paused for a snapshot or a migration, a process stopped (SIGSTOP), a hub blocked by
code that never yields, a wall clock stepped by NTP: in each of them no user of the process worked, and
samples across the stretch measure the generator, not the target. A greenlet ticks every ``tick_s``
and compares how far the wall clock (which stamps the samples) and the monotonic clock (which times
them, and Locust's run time) moved since the last tick. It records a pause when either moved
``threshold_s`` more than the tick: the wall clock alone when a paused VM's monotonic clock stood
still (measured here: an 11 s snapshot pause moved the wall clock 11 s and the monotonic clock not at
all), both when the process was not scheduled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent

TICK_S = 0.25
# Long enough that a busy generator never counts (timers a few ms late on a starved core; a full garbage
# collection at density scale took up to 0.19 s, bench/README), short enough for a VM pause of seconds.
THRESHOLD_S = 2.0


class ClockWatch:
    """Records this process's pauses between :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        process: str,
        *,
        tick_s: float = TICK_S,
        threshold_s: float = THRESHOLD_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.process = process
        self.tick_s, self.threshold_s = tick_s, threshold_s
        self._wall = wall
        self._greenlet: gevent.Greenlet | None = None
        self.pauses: list[dict[str, Any]] = []

    def start(self) -> None:
        self.stop()
        self.pauses = []
        self._greenlet = gevent.spawn(self._watch)

    def stop(self) -> list[dict[str, Any]]:
        """Stop watching; the pauses recorded (a pause still going on when this is called is not)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True)
            self._greenlet = None
        return list(self.pauses)

    def _watch(self) -> None:
        wall, mono = self._wall(), time.monotonic()
        while True:
            gevent.sleep(self.tick_s)
            w, m = self._wall(), time.monotonic()
            if max(abs(w - wall), m - mono) - self.tick_s >= self.threshold_s:
                self.pauses.append(pause(self.process, wall, w, m - mono))
            wall, mono = w, m


def pause(process: str, wall_before: float, wall_after: float, monotonic_s: float) -> dict[str, Any]:
    """One pause as meta.json keeps it (``generator_pauses``): epoch ``start``/``end`` and both clocks."""
    return {
        "process": process,
        "start": wall_before,
        "end": wall_after,
        "wall_s": round(wall_after - wall_before, 3),
        "monotonic_s": round(monotonic_s, 3),
    }
