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
    users: float  # concurrency measured (mean user count in the window)
    throughput: float  # all non-session operations per second
    response_s: float  # mean response time of those operations
    think_s: float  # declared mean think time per operation
    tolerance: float = LITTLE_TOLERANCE

    @property
    def predicted(self) -> float:
        return self.throughput * (self.response_s + self.think_s)

    @property
    def ratio(self) -> float:
        return self.predicted / self.users if self.users > 0 else math.nan

    @property
    def ok(self) -> bool:
        return not math.isfinite(self.ratio) or abs(self.ratio - 1.0) <= self.tolerance

    def describe(self) -> str:
        return (
            f"N = {self.users:.1f} users vs X (R + Z) = {self.throughput:.1f}/s x "
            f"({self.response_s * 1000:.0f} ms"
            f" + {self.think_s:.2f} s) = {self.predicted:.1f} (ratio {self.ratio:.2f})"
        )
