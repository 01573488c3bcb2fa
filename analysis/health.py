"""Generator health: coordinated omission, paced-rate shortfall, Little's law, Locust CPU warnings.

A closed-loop generator that stalls waits with the system it measures and hides the stall
(coordinated omission). For paced operations the recorder keeps the *intended* start; latency measured
from it (``t_start + duration - t_intended``) is what a human typing at that pace would feel, and is
reported beside the raw figure. A paced user whose achieved rate falls short of its plan means the
generator (or the target) could not keep the pace: flagged.

Little's law ``N = X (R + Z)`` must hold for a closed system whose users only work or think. When the
users measured fewer operations than ``N / (R + Z)``, they spent time somewhere unmeasured, typically
waiting for the generator's own CPU: a saturated generator must not be mistaken for a saturated gateway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PACED_TOLERANCE = 0.10  # achieved rate may fall this far short of the plan before it is flagged
LITTLE_TOLERANCE = 0.25  # |X (R + Z) / N - 1| above this is flagged


@dataclass
class PacedRate:
    planned: float  # ops/s per user (meta.paced, else from the intended schedule)
    achieved: float  # ops/s per user while pacing
    gaps: int  # consecutive pairs the rate is based on

    @property
    def shortfall(self) -> float:
        if not (self.planned > 0 and math.isfinite(self.achieved)):
            return math.nan
        return max(0.0, 1.0 - self.achieved / self.planned)


def corrected_latency(t_start: np.ndarray, dur_ms: np.ndarray, t_intended: np.ndarray) -> np.ndarray:
    """Latency from the intended start (ms); the raw duration where no intended start was recorded."""
    late_ms = (t_start - t_intended) * 1000.0
    return np.where(np.isfinite(late_ms), dur_ms + np.maximum(late_ms, 0.0), dur_ms)


def paced_rate(
    user: np.ndarray, t_start: np.ndarray, t_intended: np.ndarray, planned: float | None
) -> PacedRate:
    """Achieved vs planned per-user rate of a paced operation.

    Within each user's sequence, consecutive operations whose intended gap is at most 1.5 planned
    intervals belong to one burst; the rate is the count of in-burst gaps over the time they actually
    took (sum of actual start-to-start gaps), against the plan.
    """
    ok = (user >= 0) & np.isfinite(t_intended)
    if ok.sum() < 3:
        return PacedRate(planned or math.nan, math.nan, 0)
    u, ts, ti = user[ok], t_start[ok], t_intended[ok]
    order = np.lexsort((ti, u))
    u, ts, ti = u[order], ts[order], ti[order]
    same = u[1:] == u[:-1]
    gi = np.diff(ti)
    ga = np.diff(ts)
    interval = (
        1.0 / planned
        if planned and planned > 0
        else float(np.median(gi[same & (gi > 0)]))
        if np.any(same & (gi > 0))
        else math.nan
    )
    if not math.isfinite(interval):
        return PacedRate(planned or math.nan, math.nan, 0)
    burst = same & (gi > 0) & (gi <= 1.5 * interval)
    if burst.sum() == 0:
        return PacedRate(planned or 1.0 / interval, math.nan, 0)
    achieved = float(burst.sum() / np.sum(np.maximum(ga[burst], 1e-9)))
    plan = planned if planned and planned > 0 else float(burst.sum() / np.sum(gi[burst]))
    return PacedRate(plan, achieved, int(burst.sum()))


@dataclass
class LittleCheck:
    """Little's law for a closed system, in per-user time-accounting form.

    Every user is always either in an operation, between operations of one activity (pacing, short
    gaps) or in a think pause, so ``N T = sum(R) + sum(short gaps) + sum(pauses)``. Replacing the
    observed pauses by the declared think time ``Z`` gives the concurrency the plan accounts for,
    ``X (R + Z)`` in Little's terms; its ratio to ``N`` is 1 when users pause as declared. Below 1 the
    users lost time somewhere unmeasured (a generator that wakes its users late); above 1 they paused
    less than declared. Think pauses are the per-user gaps of at least half the declared think time,
    which holds whether ``think_time_s`` is per operation or per activity of several operations.
    """

    users: float  # concurrency measured (mean user count in the window)
    think_s: float  # declared mean think time
    pauses: int  # think pauses observed
    pause_mean_s: float  # their mean length
    busy_s: float  # user time in operations and short gaps
    pause_s: float  # user time in think pauses
    tolerance: float = LITTLE_TOLERANCE

    @property
    def ratio(self) -> float:
        """Accounted concurrency / measured concurrency: (busy + pauses x Z) / (busy + observed pauses)."""
        observed = self.busy_s + self.pause_s
        return (self.busy_s + self.pauses * self.think_s) / observed if observed > 0 else math.nan

    @property
    def predicted(self) -> float:
        return self.ratio * self.users

    @property
    def ok(self) -> bool:
        return not math.isfinite(self.ratio) or abs(self.ratio - 1.0) <= self.tolerance

    def describe(self) -> str:
        return (
            f"{self.pauses} think pauses averaged {self.pause_mean_s:.2f} s against {self.think_s:.2f} s "
            "declared; "
            f"X (R + Z) accounts for {self.predicted:.1f} of {self.users:.1f} users (ratio {self.ratio:.2f})"
        )


def little_check(
    user: np.ndarray,
    t_start: np.ndarray,
    dur_ms: np.ndarray,
    think_s: float,
    users: float,
    tolerance: float = LITTLE_TOLERANCE,
) -> LittleCheck | None:
    """Time accounting of each user's operations in a window; None without enough think pauses."""
    ok = user >= 0
    if think_s <= 0 or ok.sum() < 10:
        return None
    u, ts, d = user[ok], t_start[ok], dur_ms[ok] / 1000.0
    order = np.lexsort((ts, u))
    u, ts, d = u[order], ts[order], d[order]
    same = u[1:] == u[:-1]
    gap = np.maximum(ts[1:] - (ts[:-1] + d[:-1]), 0.0)
    pause = same & (gap >= think_s / 2.0)
    n = int(pause.sum())
    if n < 10:
        return None
    # only the time between a user's first and last operation in the window is accounted for
    last_of_user = np.append(~same, True)
    busy = float(d[~last_of_user].sum() + gap[same & ~pause].sum())
    pauses = float(gap[pause].sum())
    return LittleCheck(users, think_s, n, pauses / n, busy, pauses, tolerance)
