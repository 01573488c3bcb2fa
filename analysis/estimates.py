"""Per-run composite estimates the criteria are built from: peaks, error rates, server shares, the
reference-load steps, latency estimates and criterion.rs-style change labels.

Each takes analysed runs (``metrics.RunStats``) and returns an :class:`~gateload.analysis.stats.Estimate`
whose bootstrap replicates are carried along, so a ratio or a pooled value gets an honest interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gateload.analysis import capacity
from gateload.analysis.acceptance import Acceptance
from gateload.analysis.metrics import RunStats, StepStats, clip_rate
from gateload.analysis.stats import Estimate, from_boot, ratio


def peak(rs: RunStats, attr: str = "throughput") -> tuple[Estimate, StepStats | None]:
    """Highest step value of ``attr`` (throughput or sessions) and the step it was reached at."""
    ests = [(getattr(st, attr), st) for st in rs.steps if math.isfinite(getattr(st, attr).value)]
    if not ests:
        return Estimate(math.nan), None
    best = max(ests, key=lambda e: e[0].value)
    boots = [e.boot for e, _ in ests]
    # the maximum over independently resampled steps: the replicate of "peak", not of one step
    boot = np.max(np.column_stack(boots), axis=1) if all(b is not None for b in boots) else None
    return from_boot(best[0].value, boot, rs.confidence, best[1].df, best[1].inflate), best[1]


def error_rate(rs: RunStats, max_users: float | None) -> Estimate:
    """Failed / all non-SESSION operations over the steps at or below ``max_users``."""
    steps = [st for st in rs.steps if max_users is None or st.users <= max_users] or rs.steps[:1]
    num = sum(float((st.blk_n - st.blk_ok).sum()) for st in steps)
    den = sum(float(st.blk_n.sum()) for st in steps)
    if den <= 0:
        return Estimate(math.nan)
    b_num = sum(st.weights @ (st.blk_n - st.blk_ok) for st in steps)
    b_den = sum(st.weights @ st.blk_n for st in steps)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(b_den > 0, b_num / b_den, np.nan)
    return clip_rate(
        from_boot(num / den, boot, rs.confidence, sum(st.df for st in steps), max(st.inflate for st in steps))
    )


def share_of_even(rs: RunStats, servers: Sequence[str]) -> dict[str, Estimate]:
    """Each server's share of the operations with a known server, over all steps, / (1 / len(servers)).

    A declared server that served nothing gets 0: a new server that takes no load must fail.
    """
    observed = rs.servers
    if not observed or not servers:
        return {}
    n_servers = len(servers)
    counts = sum(st.blk_server.sum(axis=0) for st in rs.steps)
    boot_counts = sum(st.weights @ st.blk_server for st in rs.steps)
    total = float(np.sum(counts))
    if total <= 0:
        return {}
    boot_total = boot_counts.sum(axis=1)
    out = {}
    for name in servers:
        if name in observed:
            j = observed.index(name)
            value = counts[j] / total * n_servers
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = boot_counts[:, j] / boot_total * n_servers
            out[name] = from_boot(
                float(value),
                boot,
                rs.confidence,
                sum(st.df for st in rs.steps),
                max(st.inflate for st in rs.steps),
            )
        else:
            out[name] = Estimate(0.0, 0.0, 0.0, np.zeros(rs.n_boot))
    return out


def min_share(shares: dict[str, Estimate], confidence: float) -> tuple[Estimate, str]:
    """The smallest share of even (and whose), with the replicate-wise minimum as its interval."""
    if not shares:
        return Estimate(math.nan), ""
    name = min(shares, key=lambda k: shares[k].value)
    boots = [e.boot for e in shares.values() if e.boot is not None]
    if len(boots) < len(shares):
        return Estimate(shares[name].value), name
    df = min(e.df for e in shares.values())
    inflate = max(e.inflate for e in shares.values())
    return from_boot(
        shares[name].value, np.min(np.column_stack(boots), axis=1), confidence, df, inflate
    ), name


def ref_steps(side: Sequence[RunStats], acc: Acceptance) -> tuple[list[StepStats], str]:
    """Each run's step at the reference load; ([], reason) when a run has none."""
    if acc.reference_users is None:
        return [], "no reference load declared (load.reference_users)"
    out = []
    for rs in side:
        st = rs.step_near(acc.reference_users, acc.reference_tolerance)
        if st is None:
            loads = ", ".join(str(s.users) for s in rs.steps)
            return [], (
                f"run {rs.run.name} has no step within {acc.reference_tolerance:.0%} of the reference load "
                f"{acc.reference_users:g} (steps: {loads}); add that load to the step schedule"
            )
        out.append(st)
    return out, ""


def latency_estimates(steps: Sequence[StepStats], op: str, q: str = "p95") -> list[Estimate]:
    return [
        e
        for e in (capacity.latency_of(st, op, q) for st in steps)
        if e is not None and math.isfinite(e.value)
    ]


def change_label(r: Estimate, noise: float, lower_is_better: bool) -> str:
    """criterion.rs-style description of a ratio: improved / regressed / within noise / no change."""
    if not r.has_ci:
        return "no interval"
    if r.lo > 1.0 + noise:
        return "regressed" if lower_is_better else "improved"
    if r.hi < 1.0 - noise:
        return "improved" if lower_is_better else "regressed"
    if r.lo > 1.0 or r.hi < 1.0:
        return "within noise"
    return "no change detected"


def unsaturated(rs: RunStats, noise: float) -> str | None:
    """Why the run's peak may not be its capacity: the peak is at its highest load and still rising."""
    steps = sorted(rs.steps, key=lambda st: st.users)
    if len(steps) < 2:
        return None
    last, prev = steps[-1], steps[-2]
    if max(steps, key=lambda st: st.throughput.value) is not last:
        return None
    rise = ratio([last.throughput], [prev.throughput], rs.confidence)
    if rise.has_ci and rise.lo > 1.0 + noise:
        return f"{rs.run.name} (throughput still rising at its highest load, {last.users} users)"
    return None


def logon_op(side: Sequence[RunStats]) -> str | None:
    """The logon operation of a side's runs, as their catalogue declares it (meta.json)."""
    return side[0].run.catalogue.logon if side else None
