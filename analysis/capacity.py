"""Capacity from a step run: X(N) and latency per step, the knee, and the USL fit with intervals.

The *knee* of an operation is the first step (in increasing load) whose p95 interval lies wholly above
the SLA: the lowest load at which the SLA is broken beyond sampling doubt. The USL is fitted to the
steps' (concurrency, throughput) points; its intervals come from refitting the bootstrap replicates of
the step throughputs (each step resampled by its own block bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateload.analysis.metrics import RunStats, StepStats
from gateload.analysis.stats import Estimate
from gateload.analysis.usl import UslFit, fit_usl_boot
from gateload.errors import InputError

USL_BOOT_FITS = 200


@dataclass
class Knee:
    op: str
    limit_ms: float
    users: int | None  # None: the SLA holds at every step
    step_index: int | None
    p95: Estimate | None  # at the knee step

    def describe(self) -> str:
        if self.users is None or self.p95 is None:
            return f"{self.op}: p95 within {self.limit_ms:g} ms at every step (no knee)"
        return (
            f"{self.op}: knee at {self.users} users (step {self.step_index}), p95 {self.p95.value:.0f} ms "
            f"[{self.p95.lo:.0f}, {self.p95.hi:.0f}] > {self.limit_ms:g} ms"
        )


def latency_of(step: StepStats, op: str, name: str = "p95") -> Estimate | None:
    """A step's latency percentile of ``op``; for paced operations measured from the intended start."""
    if op in step.paced:
        return step.paced[op].corrected.get(name)
    s = step.op(op)
    return s.q.get(name) if s is not None else None


def find_knee(steps: Sequence[StepStats], op: str, limit_ms: float) -> Knee:
    """First step (by load) whose p95 interval lies wholly above ``limit_ms``."""
    for st in sorted(steps, key=lambda s: s.users):
        p95 = latency_of(st, op)
        if p95 is None:
            continue
        low = p95.lo if p95.has_ci else p95.value  # without an interval only the point can speak
        if math.isfinite(low) and low > limit_ms and p95.has_ci:
            return Knee(op, limit_ms, st.users, st.window.index, p95)
    return Knee(op, limit_ms, None, None, None)


def knees(rs: RunStats, sla: dict[str, float]) -> list[Knee]:
    return [find_knee(rs.steps, op, limit) for op, limit in sla.items()]


def usl_points(runs: Sequence[RunStats]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, X, X replicates) over the steps of every run (replicates pooled as extra points)."""
    n, x, boots = [], [], []
    for rs in runs:
        for st in rs.steps:
            if st.throughput.boot is None:
                continue
            n.append(st.concurrency)
            x.append(st.throughput.value)
            boots.append(st.throughput.boot)
    if not n:
        return np.zeros(0), np.zeros(0), np.zeros((0, 0))
    return np.asarray(n), np.asarray(x), np.column_stack(boots)


def fit_runs(runs: Sequence[RunStats], max_fits: int = USL_BOOT_FITS) -> tuple[UslFit | None, str]:
    """USL fit of one side (a run or its replicates); (None, why) when it cannot be fitted."""
    n, x, boot = usl_points(runs)
    if len(np.unique(np.round(n))) < 3:
        return None, f"a USL fit needs 3 or more load steps, this side has {len(np.unique(np.round(n)))}"
    try:
        return fit_usl_boot(n, x, boot, runs[0].confidence, max_fits=max_fits), ""
    except InputError as exc:
        return None, str(exc)


def logon_p95(step: StepStats) -> Estimate | None:
    """p95 of the step's logon operation (its run's catalogue names it), if the run has one."""
    return latency_of(step, step.logon) if step.logon else None
