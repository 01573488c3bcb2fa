"""Session arrivals for the logon-storm mode (``--shape arrivals``): an open model over a bounded pool.

Sessions arrive on a fixed global grid ``t0 + j / rate`` whether or not earlier sessions have finished.
Each load-generator process takes every ``slots``-th arrival (arrival ``j`` goes to process
``j % slots``), so the rate is split across processes without any coordination during the run. A user
of the pool calls :func:`next_arrival` before each session, sleeps until the time it gets, and records
that time as ``t_intended``: when every user is busy, the next arrival is already in the past, the
session starts late and the lateness shows up in latency measured from ``t_intended`` (no coordinated
omission).

The run controller installs a schedule at test start (:func:`install`); without one (any other shape)
:func:`next_arrival` returns None, meaning "start now" (closed loop).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_ATTR = "gateload_arrivals"


@dataclass
class ArrivalSchedule:
    """This process's share of the global arrival grid."""

    t0: float  # epoch of arrival 0 (the test start, the same on every process)
    rate: float  # sessions/s over the whole test
    slot: int = 0  # this process's index among ...
    slots: int = 1  # ... the load-generator processes
    _next: int | None = None  # the next global arrival index this process hands out
    _first: int = 0  # the first one it handed out
    claimed: int = 0  # how many it handed out

    @property
    def rate_per_process(self) -> float:
        return self.rate / self.slots

    def claim(self, now: float | None = None) -> float:
        """The intended start of the next session of this process (epoch seconds)."""
        if self._next is None:
            # Start at the first arrival of ours that is not already past (users spawn after t0).
            now = time.time() if now is None else now
            first = max(0, math.ceil((now - self.t0) * self.rate - 1e-9))
            self._next = self._first = first + (self.slot - first) % self.slots
        j = self._next
        self._next += self.slots
        self.claimed += 1
        return self.t0 + j / self.rate

    def claimed_by(self, t_end: float) -> int:
        """Arrivals this process handed out that were due by ``t_end`` (later ones never started)."""
        if not self.claimed:
            return 0
        due = math.floor(((t_end - self.t0) * self.rate - self._first) / self.slots + 1e-9) + 1
        return max(0, min(self.claimed, due))

    def planned_by(self, t_end: float) -> int:
        """Arrivals due on the whole test's grid by ``t_end``."""
        return max(0, math.floor((t_end - self.t0) * self.rate + 1e-9) + 1)


def summary(
    t0: float,
    rate: float,
    ended: float,
    finals: list[Mapping[str, Any]],
    local: ArrivalSchedule | None = None,
) -> dict[str, Any]:
    """Sessions planned on the grid vs handed to a user (a pool that is too small hands out fewer).

    ``finals``: each worker's final message (``arrivals_claimed``, ``arrivals_stopped_at``); ``local``:
    the schedule of a single-process run, which stopped at ``ended``. Workers go on starting sessions
    until the master's stop message reaches them, so the grid is counted up to the moment the last of
    them stopped (``until``), not up to the master's decision (``ended``).
    """
    until = max([ended, *(float(final.get("arrivals_stopped_at", ended)) for final in finals)])
    claimed = sum(int(final.get("arrivals_claimed", 0)) for final in finals)
    if local is not None:
        claimed = local.claimed_by(ended)
    planned = ArrivalSchedule(t0, rate).planned_by(until)
    return {"rate": rate, "planned": planned, "claimed": claimed, "until": until}


def install(environment: Any, schedule: ArrivalSchedule | None) -> None:
    """Use ``schedule`` for this process's sessions from now on (None: closed loop)."""
    setattr(environment, _ATTR, schedule)


def schedule_of(environment: Any) -> ArrivalSchedule | None:
    return getattr(environment, _ATTR, None)


def next_arrival(environment: Any) -> float | None:
    """The intended epoch start of this user's next session, or None when not in arrival mode."""
    schedule = getattr(environment, _ATTR, None)
    return None if schedule is None else schedule.claim()
