"""The criteria of an acceptance file, evaluated on analysed runs: a before/after comparison
(:func:`evaluate_compare`) or a single-configuration check (:func:`evaluate_check`).

Intervals: circular block bootstrap over time within each run, or, with 3 or more replicates per side,
between-run variance (Student t / Welch on the log ratio). A peak that under-states capacity (a saturated
load generator, one that stood still in a measured window, a staircase that stopped too early) cannot
carry the verdict it would give. An incomplete run cannot pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gateload.analysis.acceptance import Acceptance
from gateload.analysis.estimates import (
    change_label,
    error_rate,
    latency_estimates,
    logon_op,
    min_share,
    peak,
    ref_steps,
    share_of_even,
    unsaturated,
)
from gateload.analysis.faults import fault_metrics, fault_warnings
from gateload.analysis.metrics import RunStats, StepStats, clip_rate, pauses_in
from gateload.analysis.stats import Estimate, interval_method, pooled, ratio
from gateload.analysis.tables import (
    errors_by_class,
    est_json,
    health_table,
    knee_table,
    num,
    op_table,
    server_table,
    step_rows,
    usl_table,
)
from gateload.analysis.verdict import (
    FAIL,
    INCONCLUSIVE,
    NONE,
    PASS,
    Criterion,
    Verdict,
    criterion,
    missing,
    overall,
    unsettled,
)

# ----------------------------------------------------------------------------------------- compare


def evaluate_compare(before: list[RunStats], after: list[RunStats], acc: Acceptance) -> Verdict:
    """Criteria and metrics of a before/after comparison (runs already analysed)."""
    sides = {"before": before, "after": after}
    metrics: dict[str, Any] = {"interval_method": interval_method(len(before), len(after))}
    criteria = _throughput_part(before, after, acc, metrics)
    b_ref, b_why = ref_steps(before, acc)
    a_ref, a_why = ref_steps(after, acc)
    metrics["reference"] = {
        "users": acc.reference_users,
        "before_step_users": [st.users for st in b_ref],
        "after_step_users": [st.users for st in a_ref],
    }
    # latency: the after side must meet the SLAs at the reference load; ratios per operation
    criteria += _sla_criteria(a_ref, a_why, acc, len(after), logon_op(after))
    metrics["operations"] = op_table(b_ref, a_ref, acc) if b_ref and a_ref else {}
    criteria += _latency_ratio_criteria(b_ref, a_ref, b_why or a_why, acc, min(len(before), len(after)))
    criteria += _error_part(sides, "after", acc, metrics)
    # the new servers must take their share
    servers_before, servers_after = before[0].run.servers, after[0].run.servers
    new = [s for s in servers_after if s not in set(servers_before)]
    what = "every new server" if new else "every server (no new servers)"
    criteria += _share_part(after, servers_after, new, a_ref, acc, metrics, "new_server_share", what)
    metrics.update(_capacity_metrics(sides, acc))
    return _finish("compare", criteria, metrics, _side_warnings(sides), acc, sides)


def _throughput_part(
    before: list[RunStats], after: list[RunStats], acc: Acceptance, metrics: dict[str, Any]
) -> list[Criterion]:
    """Peak throughput and sessions per side, their ratios, and the scaling efficiency."""
    conf = acc.confidence
    runs = min(len(before), len(after))
    b_peak = [peak(rs)[0] for rs in before]
    a_peak = [peak(rs)[0] for rs in after]
    gain = ratio(a_peak, b_peak, conf)
    pb, pa = pooled(b_peak, conf), pooled(a_peak, conf)
    metrics["peak_throughput"] = {
        "unit": "successful operations/s",
        "before": num(pb.value),
        "after": num(pa.value),
        "ratio": num(gain.value),
        "ci": [num(gain.lo), num(gain.hi)],
        "before_ci": [num(pb.lo), num(pb.hi)],
        "after_ci": [num(pa.lo), num(pa.hi)],
        "change": change_label(gain, acc.noise, lower_is_better=False),
    }
    b_sess = [peak(rs, "sessions")[0] for rs in before]
    a_sess = [peak(rs, "sessions")[0] for rs in after]
    sess_gain = ratio(a_sess, b_sess, conf)
    metrics["peak_sessions_per_s"] = {
        "before": num(pooled(b_sess, conf).value),
        "after": num(pooled(a_sess, conf).value),
        "ratio": num(sess_gain.value),
        "ci": [num(sess_gain.lo), num(sess_gain.hi)],
    }
    n_before, n_after = len(before[0].run.servers), len(after[0].run.servers)
    expected = n_after / n_before if n_before and n_after else math.nan
    eff = (
        Estimate(gain.value / expected, gain.lo / expected, gain.hi / expected)
        if math.isfinite(expected)
        else Estimate(math.nan)
    )
    metrics["scaling_efficiency"] = {
        "servers_before": n_before,
        "servers_after": n_after,
        "expected_gain": num(expected),
        "observed_gain": num(gain.value),
        **est_json(eff),
    }
    flags = _guard_flags(before, after, acc.noise)
    criteria = []
    if acc.min_peak_gain is not None:
        desc = "peak throughput after / before (successful ops/s, best step)"
        c = criterion("peak_throughput_gain", desc, gain, acc.min_peak_gain, ">=", "x", runs)
        criteria.append(_generator_guard(c, flags))
    if acc.min_scaling_efficiency is not None:
        desc = f"observed gain / expected gain ({n_before} -> {n_after} servers)"
        if math.isfinite(expected):
            c = criterion("scaling_efficiency", desc, eff, acc.min_scaling_efficiency, ">=", "", runs)
            criteria.append(_generator_guard(c, flags))
        else:
            why = "server counts unknown: meta.profile.servers is empty and no sample names a server"
            criteria.append(missing("scaling_efficiency", desc, acc.min_scaling_efficiency, ">=", "", why))
    return criteria


def _latency_ratio_criteria(
    b_ref: list[StepStats], a_ref: list[StepStats], why: str, acc: Acceptance, runs: int
) -> list[Criterion]:
    out = []
    for op, limit in acc.max_latency_ratio.items():
        name = f"latency_ratio[{op}]"
        desc = f"p95 of {op} after / before at {acc.reference_users:g} users"
        if not (b_ref and a_ref):
            out.append(missing(name, desc, limit, "<=", "x", why))
            continue
        r = ratio(latency_estimates(a_ref, op), latency_estimates(b_ref, op), acc.confidence)
        if math.isfinite(r.value):
            out.append(criterion(name, desc, r, limit, "<=", "x", runs))
        else:
            out.append(missing(name, desc, limit, "<=", "x", f"no successful {op} at the reference load"))
    return out


def _error_part(
    sides: dict[str, list[RunStats]], judged: str, acc: Acceptance, metrics: dict[str, Any]
) -> list[Criterion]:
    """Error rate per side at loads up to the reference load, by class; the criterion on ``judged``."""
    ref_max = acc.reference_users * (1 + acc.reference_tolerance) if acc.reference_users else None
    rates = {  # the between-run t interval of 3+ replicates can reach below 0 as well
        side: clip_rate(pooled([error_rate(rs, ref_max) for rs in runs], acc.confidence))
        for side, runs in sides.items()
    }
    metrics["error_rate"] = {"scope_max_users": ref_max, **{side: est_json(e) for side, e in rates.items()}}
    metrics["errors_by_class"] = {side: errors_by_class(runs) for side, runs in sides.items()}
    if acc.max_error_rate is None:
        return []
    scope = f"at loads <= {ref_max:g} users" if ref_max else "over all steps"
    desc = f"failed / all operations{' after' if judged == 'after' else ''}, {scope}"
    return [criterion("error_rate", desc, rates[judged], acc.max_error_rate, "<=", "", len(sides[judged]))]


def _share_part(
    side: list[RunStats],
    servers: list[str],
    judged: list[str],
    ref: list[StepStats],
    acc: Acceptance,
    metrics: dict[str, Any],
    name: str,
    what: str,
) -> list[Criterion]:
    """Per-server shares of an even split; the criterion on the lowest of ``judged`` (all if empty)."""
    conf = acc.confidence
    shares = [share_of_even(rs, servers) for rs in side]
    metrics["servers"] = server_table(shares, judged if name == "new_server_share" else [], conf, ref)
    if acc.min_share_of_even is None:
        return []
    judged = judged or servers
    mins = [min_share({k: v for k, v in s.items() if k in judged}, conf) for s in shares]
    if not any(math.isfinite(m.value) for m, _ in mins):
        why = "no sample names its server (column server is empty); the target must reveal backends"
        return [missing(name, f"{what}: share / even share", acc.min_share_of_even, ">=", "", why)]
    who = ", ".join(sorted({n for _, n in mins if n}))
    est = pooled([m for m, _ in mins], conf)
    desc = f"{what}: share / even share (lowest: {who})"
    return [criterion(name, desc, est, acc.min_share_of_even, ">=", "", len(side))]


def _capacity_metrics(sides: dict[str, list[RunStats]], acc: Acceptance) -> dict[str, Any]:
    return {
        "usl": {side: usl_table(runs) for side, runs in sides.items()},
        "knees": {side: knee_table(runs, acc) for side, runs in sides.items()},
        "steps": {side: [step_rows(rs) for rs in runs] for side, runs in sides.items()},
        "health": {side: [health_table(rs) for rs in runs] for side, runs in sides.items()},
        "faults": fault_metrics(sides),
    }


def _guard_flags(before: list[RunStats], after: list[RunStats], noise: float) -> dict[str, list[str]]:
    """Runs whose peak throughput under-states their capacity: a saturated load generator (Locust CPU
    warnings), a generator that stood still in a measured window, or a staircase that stopped before
    the target saturated."""
    flags: dict[str, list[str]] = {}
    for side, runs in (("before", before), ("after", after)):
        flags[side] = [
            f"{rs.run.name} (load generator saturated: {rs.run.cpu_warnings} Locust CPU warnings)"
            for rs in runs
            if rs.run.cpu_warnings
        ]
        flags[side] += [pause for rs in runs if (pause := _paused(rs))]
        flags[side] += [why for rs in runs if (why := unsaturated(rs, noise))]
    return flags


def _paused(rs: RunStats) -> str:
    """A generator pause inside a step's measured window: that step lost the pause's throughput."""
    inside = {p for st in rs.steps for p in pauses_in(rs.run, st.window)}
    if not inside:
        return ""
    lost = sum(p.end - p.start for p in inside)
    return f"{rs.run.name} (load generator stood still {lost:.1f} s in its measured windows: re-run it)"


def _generator_guard(c: Criterion, flags: dict[str, list[str]]) -> Criterion:
    """A peak that under-states capacity cannot carry the verdict it would give: a PASS resting on a low
    'before', or a FAIL resting on a low 'after', becomes INCONCLUSIVE."""
    suspect = flags["before"] if c.verdict == PASS else flags["after"] if c.verdict == FAIL else []
    if suspect:
        c.note = (
            f"would be {c.verdict}, but the peak under-states capacity in {'; '.join(suspect)}: add load "
            "generator processes (--processes) or extend the staircase, and re-run"
        )
        c.verdict = INCONCLUSIVE
    return c


def _at(ref: Sequence[StepStats], acc: Acceptance) -> str:
    """'the reference load (N users)', naming the step actually used when it differs."""
    used = sorted({st.users for st in ref})
    if not used or used == [acc.reference_users]:
        return f"{acc.reference_users:g} users"
    return f"{'/'.join(map(str, used))} users (reference load {acc.reference_users:g})"


def _sla_criteria(
    ref: list[StepStats], why: str, acc: Acceptance, runs: int, logon: str | None
) -> list[Criterion]:
    out = []
    for op, limit in acc.sla_limits(logon).items():
        name = (
            "logon_p95"
            if op == logon and acc.max_logon_p95_ms is not None and op not in acc.sla
            else f"sla_p95[{op}]"
        )
        paced = bool(ref) and op in ref[0].paced
        desc = f"p95 of {op}{' (from intended start)' if paced else ''} at {_at(ref, acc)}"
        if not ref:
            out.append(missing(name, desc, limit, "<=", "ms", why))
            continue
        ests = latency_estimates(ref, op)
        if not ests:
            out.append(missing(name, desc, limit, "<=", "ms", f"no successful {op} at the reference load"))
            continue
        out.append(criterion(name, desc, pooled(ests, acc.confidence), limit, "<=", "ms", runs))
    return out


def _finish(
    kind: str,
    criteria: list[Criterion],
    metrics: dict[str, Any],
    warnings: list[str],
    acc: Acceptance,
    sides: dict[str, list[RunStats]],
) -> Verdict:
    incomplete = any(not rs.run.complete for runs in sides.values() for rs in runs)
    warnings += fault_warnings(metrics.get("faults"))
    if kind == "report":  # describes the runs and judges nothing: gateload check is the gate
        return Verdict(kind, NONE, [], metrics, warnings, acc, sides, incomplete)
    unsettled_runs = [rs.run.name for runs in sides.values() for rs in runs if not rs.steady]
    if unsettled_runs:  # a trending run's intervals bound nothing: judge nothing, say what would
        criteria = [unsettled(c) for c in criteria]
        warnings.append(
            f"no verdict: {', '.join(unsettled_runs)} never reached a steady state (MSER-5: latency or "
            "throughput keeps trending), so every criterion is INCONCLUSIVE; run longer steps, or check "
            "the target for a leak or an overload"
        )
    verdict = overall(criteria)
    if not criteria and acc.path is not None:
        warnings.append(f"{acc.name} declares no criteria: nothing to pass")
    if incomplete and verdict == PASS:
        verdict = INCONCLUSIVE
        warnings.append("PASS downgraded to INCONCLUSIVE: an incomplete run cannot pass acceptance")
    return Verdict(kind, verdict, criteria, metrics, warnings, acc, sides, incomplete)


def _side_warnings(sides: dict[str, list[RunStats]]) -> list[str]:
    return [f"{side} {rs.run.name}: {w}" for side, runs in sides.items() for rs in runs for w in rs.warnings]


# ------------------------------------------------------------------------------------------- check


def evaluate_check(side: list[RunStats], acc: Acceptance, kind: str = "check") -> Verdict:
    """Criteria and metrics of a single-configuration check (runs already analysed); ``kind="report"``
    keeps the metrics and drops the verdict."""
    conf = acc.confidence
    sides = {"run": side}
    metrics: dict[str, Any] = {"interval_method": interval_method(len(side))}
    p = pooled([peak(rs)[0] for rs in side], conf)
    metrics["peak_throughput"] = {
        "unit": "successful operations/s",
        "run": num(p.value),
        "ci": [num(p.lo), num(p.hi)],
    }
    ref, why = ref_steps(side, acc)
    metrics["reference"] = {"users": acc.reference_users, "step_users": [st.users for st in ref]}
    criteria: list[Criterion] = []
    if acc.min_ops_per_s is not None:
        desc = f"throughput at {_at(ref, acc)} (successful ops/s)"
        if ref:
            est = pooled([st.throughput for st in ref], conf)
            criteria.append(criterion("throughput", desc, est, acc.min_ops_per_s, ">=", "ops/s", len(side)))
        else:
            criteria.append(missing("throughput", desc, acc.min_ops_per_s, ">=", "ops/s", why))
    criteria += _sla_criteria(ref, why, acc, len(side), logon_op(side))
    criteria += _error_part(sides, "run", acc, metrics)
    servers = side[0].run.servers
    criteria += _share_part(side, servers, [], ref, acc, metrics, "server_share", "every server")
    metrics["operations"] = op_table([], ref, acc) if ref else {}
    metrics.update(_capacity_metrics(sides, acc))
    return _finish(kind, criteria, metrics, _side_warnings(sides), acc, sides)
