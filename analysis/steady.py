"""Warm-up cut: which part of each load step is steady state.

A step starts with a ramp (users being spawned) and then a transient (cold caches, connection pools,
queues filling). Both are cut before any statistic:

1. the ramp, from the schedule: ``|users - previous users| / spawn_rate`` after the step start, extended
   to the first sample that reports the step's full user count;
2. the transient, by MSER-5 (White 1997) on the time-binned series of mean log latency and of
   throughput after the ramp; the larger of the two truncation points is cut.

The run's last step also loses its end: a sample is recorded only when its operation (or the paced
burst it belongs to) completes, so operations still in flight when the run stops are missing and the
last seconds look slower than they were (a 2-3 s fall in throughput, measured on the demo). That step's
window ends :func:`stop_horizon` before its end, cutting at most a fifth of it: a saturated farm's bursts
are in flight for 12 s and more, and cutting that much leaves only the step's transient start (the
analysis warns instead, ``stop_horizon_s``).

MSER picks the truncation ``d`` that minimises the squared standard error of the remaining batch means.
When that minimum lies in the second half of the series the step never settled: it is flagged
``steady = False`` (and only its second half is used). A run in which no step settles is refused.
A run without a step schedule is one window from the first to the last sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gateload.analysis.samples import RunData
from gateload.errors import InputError

BATCH = 5  # MSER-5
MIN_BINS = 50
MAX_BINS = 1000
TARGET_BIN_S = 0.2
STOP_QUANTILE = 95.0  # of the recording delay: the stop cut leaves ~5% of the late ones missing
MAX_STOP_CUT = 0.2  # of the steady window: a longer horizon is flagged (the window's start holds transients)


@dataclass(frozen=True)
class Window:
    """The steady part ``[steady_start, steady_end)`` of one step, seconds since the run origin."""

    index: int
    users: int
    start: float
    end: float
    steady_start: float
    ramp_s: float
    warmup_s: float
    steady: bool
    reached_users: bool
    steady_end: float  # ``end``, or earlier in the run's last step (the stop cut)
    stop_horizon_s: float = 0.0  # the last step's: seconds before the stop with operations in flight

    @property
    def duration(self) -> float:
        return self.steady_end - self.steady_start

    @property
    def stop_cut_s(self) -> float:
        return self.end - self.steady_end


def mser(
    series: np.ndarray, batch: int = BATCH, drift: float = 0.25, material: float = 0.1
) -> tuple[int, bool]:
    """MSER-``batch`` truncation point (in series elements) and whether the series settles.

    ``drift`` is the smallest level change that counts as not settling, and ``material`` the smallest
    difference between the cut part and the rest that justifies a cut, both in the series' units.
    """
    x = np.asarray(series, dtype=float)
    x = x[np.isfinite(x)]
    m = len(x) // batch
    if m < 4:
        return 0, True  # too short to judge: keep everything
    z = x[: m * batch].reshape(m, batch).mean(axis=1)
    # suffix sums give every MSER(d) in one pass
    s1 = np.cumsum(z[::-1])[::-1]
    s2 = np.cumsum((z * z)[::-1])[::-1]
    n = np.arange(m, 0, -1, dtype=float)
    sse = np.maximum(s2 - s1 * s1 / n, 0.0)
    stat = sse / (n * n)
    last = max(1, m - max(3, m // 10))  # the last few batches give a degenerate, tiny statistic
    d = int(np.argmin(stat[:last]))
    if d <= m / 2:
        return _material(z, d, material) * batch, True
    # MSER's minimum in the second half means "never settled" only if the level really moved: slow
    # wander in a short window also puts it there. Material drift = the two halves differ by more than
    # `drift` and by more than 4 standard errors; the error comes from 10 large batches, which are
    # nearly independent even when the series is autocorrelated.
    if m >= 10:
        big = z[: m // 10 * 10].reshape(10, -1).mean(axis=1)
        first, second = big[:5], big[5:]
        diff = abs(second.mean() - first.mean())
        se = math.sqrt((first.var(ddof=1) + second.var(ddof=1)) / 5.0)
        if diff > drift and diff > 4.0 * se:
            return d * batch, False
    d = int(np.argmin(stat[: m // 2 + 1]))
    return _material(z, d, material) * batch, True


def _material(z: np.ndarray, d: int, material: float) -> int:
    """Keep an MSER cut only if the cut part really differs from the rest.

    On an autocorrelated but stationary series MSER still cuts a few seconds that happen to wander;
    cutting them would make the retained window look less variable than it is (intervals too narrow).
    """
    if d == 0 or d >= len(z):
        return d
    return d if abs(z[:d].mean() - z[d:].mean()) > material else 0


def _binned(t: np.ndarray, y: np.ndarray, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray, float]:
    n_bins = int(np.clip(round((t1 - t0) / TARGET_BIN_S), MIN_BINS, MAX_BINS))
    width = (t1 - t0) / n_bins
    b = np.clip(((t - t0) / width).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(float)
    total = np.bincount(b, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return mean, count, width


def _transient(run: RunData, t0: float, t1: float) -> tuple[float, bool]:
    """Seconds to cut after ``t0`` (MSER-5) and whether the window settles."""
    s = run.samples
    a, b = np.searchsorted(s.t, [t0, t1])
    sel = ~s.op_is_session[s.op[a:b]]
    t = s.t[a:b][sel]
    if len(t) < 4 * BATCH or t1 - t0 <= 0:
        return 0.0, True
    mean, count, width = _binned(t, np.log(np.maximum(s.dur[a:b][sel], 1e-3)), t0, t1)
    nonempty = np.flatnonzero(count > 0)
    d_lat, ok_lat = mser(mean[nonempty])
    cut_lat = nonempty[d_lat] if d_lat < len(nonempty) else len(mean)
    d_thr, ok_thr = mser(count, drift=0.25 * float(count.mean()), material=0.1 * float(count.mean()))
    cut = max(int(cut_lat), int(d_thr))
    return cut * width, ok_lat and ok_thr


def _ramp_end(
    run: RunData,
    start: float,
    end: float,
    users: int,
    prev_users: int,
    spawn_rate: float,
    spawned: float | None,
) -> tuple[float, bool]:
    """End of a step's ramp: the planned spawn time, the recorder's "spawned" mark, and the first sample
    reporting the full user count, whichever is latest; and whether the step reached its users."""
    planned = start + (abs(users - prev_users) / spawn_rate if spawn_rate > 0 else 0.0)
    if spawned is not None:
        planned = max(planned, spawned)
    s = run.samples
    a, b = np.searchsorted(s.t, [start, end])
    full = np.flatnonzero(s.user_count[a:b] >= users)
    if users <= 0 or not np.any(s.user_count[a:b]):
        return min(planned, end), True  # the recorder did not report user counts: trust the plan
    if len(full) == 0:
        return min(planned, end), False
    return min(max(planned, float(s.t[a + full[0]])), end), True


def steady_windows(run: RunData) -> list[Window]:
    """Steady-state windows of a run, one per step of its schedule (or one for a run without steps).

    A step with no steady state gets its second half, ``steady`` False; the analysis warns when no
    step of a run settled, and a verdict on such a run is INCONCLUSIVE.
    """
    s = run.samples
    steps = run.steps
    plan: list[tuple[int, float, float, int, int, float, float | None]]
    if not steps:
        users = int(s.user_count.max()) if len(s) else 0
        plan = [(0, float(s.t[0]), float(s.t[-1]) + 1e-9, users, 0, 0.0, None)]
    else:
        plan = []
        prev = 0
        for st in steps:
            plan.append((st.index, st.start, st.end, st.users, prev, st.spawn_rate, st.spawned))
            prev = st.users
    windows = []
    for index, start, end, users, prev, rate, spawned in plan:
        ramp_end, reached = _ramp_end(run, start, end, users, prev, rate, spawned)
        cut, ok = _transient(run, ramp_end, end)
        steady_start = min(ramp_end + cut if ok else ramp_end + (end - ramp_end) / 2.0, end)
        steady_end, horizon = end, 0.0
        if index == plan[-1][0]:
            horizon = stop_horizon(run, steady_start, end)
            steady_end = end - min(horizon, MAX_STOP_CUT * (end - steady_start))
        windows.append(
            Window(
                index=index,
                users=users,
                start=start,
                end=end,
                steady_start=steady_start,
                ramp_s=ramp_end - start,
                warmup_s=steady_start - ramp_end,
                steady=ok,
                reached_users=reached,
                steady_end=steady_end,
                stop_horizon_s=horizon,
            )
        )
    windows = [w for w in windows if w.duration > 0 and _count(run, w) > 0]
    if not windows:
        raise InputError(f"{run.path}: no samples fall inside the run's step schedule; check meta.json steps")
    return windows


def _count(run: RunData, w: Window) -> int:
    a, b = np.searchsorted(run.samples.t, [w.steady_start, w.steady_end])
    return int(b - a)


def stop_horizon(run: RunData, t0: float, t1: float) -> float:
    """Seconds before a stop at ``t1`` in which samples are still missing: the 95th percentile, over
    the operations started in ``[t0, t1)``, of the delay from an operation's start until it was recorded.

    An operation is recorded when it completes; a paced one when its whole burst does (the protocol
    hands a burst over at once: catalogue ``burst``), so its delay runs to the end of the burst's last
    operation. Bursts are the runs of one user's operation whose intended starts follow at the pace.
    """
    s = run.samples
    a, b = np.searchsorted(s.t, [t0, t1])
    keep = ~s.op_is_session[s.op[a:b]]
    t, end = s.t[a:b][keep], s.t[a:b][keep] + s.dur[a:b][keep] / 1000.0
    if len(t) == 0:
        return 0.0
    recorded = end.copy()
    op = s.op[a:b][keep]
    codes = [c for c in (s.op_code(k) for k in run.catalogue.bursts) if c >= 0]
    ti = s.t_intended[a:b][keep]
    paced = np.flatnonzero(np.isin(op, codes) & np.isfinite(ti))
    if len(paced) > 1:
        user, bop = s.user[a:b][keep][paced], op[paced]
        srt = np.lexsort((ti[paced], bop, user))
        order = paced[srt]
        gap = np.diff(ti[order])
        pace = float(np.median(gap[gap > 0])) if np.any(gap > 0) else 0.0
        new = np.ones(len(order), dtype=bool)
        new[1:] = (np.diff(user[srt]) != 0) | (np.diff(bop[srt]) != 0) | (gap > 1.5 * pace)
        burst = np.cumsum(new) - 1
        last = np.full(int(burst[-1]) + 1, -np.inf)
        np.maximum.at(last, burst, end[order])
        recorded[order] = last[burst]
    return float(np.percentile(recorded - t, STOP_QUANTILE))


def describe(w: Window) -> str:
    state = "steady" if w.steady else "NO steady state (second half used)"
    return (
        f"step {w.index} ({w.users} users): ramp {w.ramp_s:.1f} s, warm-up {w.warmup_s:.1f} s cut, "
        f"{w.duration:.1f} s {state}"
    )
