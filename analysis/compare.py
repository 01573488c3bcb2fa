"""Before/after comparison and single-run checks against an acceptance file.

Each criterion gets an estimate, a confidence interval and a verdict, the way criterion.rs decides:

- **PASS** only when the whole interval clears the margin;
- **FAIL** when the whole interval lies on the wrong side;
- **INCONCLUSIVE** otherwise, with a note saying how much more data would settle it if the estimate holds.

The overall verdict is FAIL if any criterion fails, else INCONCLUSIVE if any is inconclusive (or a run
is incomplete), else PASS. Intervals: circular block bootstrap over time within each run, or, with 3 or
more replicates per side, between-run variance (Student t / Welch on the log ratio).

Python entry points (the campaign calls these): :func:`compare_runs` and :func:`check_runs`;
:func:`report_runs` gives a check's metrics with no verdict (``gateload report``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis import capacity
from analysis.acceptance import Acceptance, load_acceptance
from analysis.faults import fault_metrics, fault_warnings
from analysis.metrics import ALL, RunStats, StepStats, analyze_run, clip_rate
from analysis.runs import Run, load_runs
from analysis.stats import (
    DEFAULT_BOOT,
    MIN_REPLICATES,
    Estimate,
    from_boot,
    interval_method,
    pooled,
    ratio,
)

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
NONE = "none"  # a report's verdict: it describes runs and judges nothing (verdict.json "verdict": "none")
EXIT_CODES = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3, NONE: 0}
SETTLE_LIMIT = 25.0  # beyond this many times the data, "more data" is not a practical answer


@dataclass
class Criterion:
    name: str
    description: str
    estimate: float
    ci_low: float
    ci_high: float
    margin: float
    direction: str  # ">=" or "<="
    unit: str
    verdict: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "estimate": _num(self.estimate),
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
            "margin": _num(self.margin),
            "direction": self.direction,
            "unit": self.unit,
            "verdict": self.verdict,
            "note": self.note,
        }


@dataclass
class Verdict:
    kind: str  # "compare" | "check" | "report"
    verdict: str  # PASS | FAIL | INCONCLUSIVE, or NONE for a report
    criteria: list[Criterion]
    metrics: dict[str, Any]
    warnings: list[str]
    acceptance: Acceptance
    sides: dict[str, list[RunStats]] = field(repr=False)  # "before"/"after", or "run" for a check
    incomplete: bool = False
    elapsed_s: float = 0.0  # reading, analysing and judging the runs (JUnit's time)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "kind": self.kind,
            "incomplete": self.incomplete,
            "confidence": self.acceptance.confidence,
            "acceptance": self.acceptance.name,
            "criteria": [c.as_dict() for c in self.criteria],
            "metrics": self.metrics,
            "warnings": self.warnings,
            "runs": {
                side: [
                    {
                        "label": rs.run.label,
                        "run_id": rs.run.run_id,
                        "path": str(rs.run.path),
                        "status": rs.run.status,
                        "complete": rs.run.complete,
                        "samples": len(rs.run.samples),
                    }
                    for rs in runs
                ]
                for side, runs in self.sides.items()
            },
        }


def _num(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _est(e: Estimate | None) -> dict[str, float | None]:
    return e.as_dict() if e is not None else {"value": None, "ci_low": None, "ci_high": None}


# -------------------------------------------------------------------------------------- judging


def judge(est: Estimate, margin: float, direction: str) -> str:
    """PASS / FAIL / INCONCLUSIVE of an interval against a margin."""
    if not est.has_ci:
        return INCONCLUSIVE
    if direction == ">=":
        if est.lo >= margin:
            return PASS
        if est.hi < margin:
            return FAIL
    else:
        if est.hi <= margin:
            return PASS
        if est.lo > margin:
            return FAIL
    return INCONCLUSIVE


def settle_note(est: Estimate, margin: float, direction: str, runs_per_side: int) -> str:
    """What would settle an inconclusive criterion, if the estimate holds."""
    if not math.isfinite(est.value):
        return "no estimate: the runs hold no data for it"
    if not est.has_ci:
        return "too few samples for an interval; run longer steps"
    v = est.value
    leans_pass = v >= margin if direction == ">=" else v <= margin
    toward = (v - est.lo) if (direction == ">=") == leans_pass else (est.hi - v)
    dist = abs(v - margin)
    outcome = PASS if leans_pass else FAIL
    if dist == 0 or toward <= 0 or (toward / dist) ** 2 > SETTLE_LIMIT:
        return (
            f"the estimate {v:.4g} sits on the margin {margin:.4g}: more data will hardly settle it, "
            "the true "
            "value is within measurement noise of the margin"
        )
    factor = (toward / dist) ** 2
    if runs_per_side >= MIN_REPLICATES:
        how = f"about {math.ceil(runs_per_side * factor)} replicates per side (now {runs_per_side})"
    else:
        how = (
            f"steps about {max(factor, 1.1):.1f}x longer, or {MIN_REPLICATES}+ replicates per side "
            "(between-run variance)"
        )
    return f"leans {outcome}; if the estimate holds, {how} would settle it"


def _criterion(
    name: str,
    description: str,
    est: Estimate,
    margin: float,
    direction: str,
    unit: str,
    runs: int,
    note: str = "",
) -> Criterion:
    verdict = judge(est, margin, direction)
    if verdict == INCONCLUSIVE:
        note = (
            f"{note}; {settle_note(est, margin, direction, runs)}"
            if note
            else settle_note(est, margin, direction, runs)
        )
    return Criterion(name, description, est.value, est.lo, est.hi, margin, direction, unit, verdict, note)


def _missing(name: str, description: str, margin: float, direction: str, unit: str, why: str) -> Criterion:
    return Criterion(
        name, description, math.nan, math.nan, math.nan, margin, direction, unit, INCONCLUSIVE, why
    )


def overall(criteria: Sequence[Criterion]) -> str:
    verdicts = {c.verdict for c in criteria}
    if FAIL in verdicts:
        return FAIL
    if INCONCLUSIVE in verdicts or not criteria:
        return INCONCLUSIVE
    return PASS


# ----------------------------------------------------------------------- per-run composite estimates


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
    boots = [e.boot for e in shares.values()]
    if any(b is None for b in boots):
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


def _latency(steps: Sequence[StepStats], op: str, q: str = "p95") -> list[Estimate]:
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


# ----------------------------------------------------------------------------------------- loading


def _as_runs(items: Sequence[str | Path | Run] | str | Path | Run, allow_incomplete: bool) -> list[Run]:
    if isinstance(items, str | Path | Run):
        items = [items]
    runs = [r for r in items if isinstance(r, Run)]
    paths = [p for p in items if not isinstance(p, Run)]
    if paths:
        runs += load_runs(paths, allow_incomplete=allow_incomplete)
    return runs


def _acceptance(acceptance: str | Path | Acceptance | None) -> Acceptance:
    if acceptance is None:
        return Acceptance()
    if isinstance(acceptance, Acceptance):
        return acceptance
    return load_acceptance(acceptance)


def _analyze(runs: Sequence[Run], acc: Acceptance, n_boot: int, seed: int) -> list[RunStats]:
    return [
        analyze_run(
            r,
            n_boot=n_boot,
            confidence=acc.confidence,
            seed=seed,
            little_tolerance=acc.max_littles_law_error,
            paced_tolerance=acc.max_paced_shortfall,
        )
        for r in runs
    ]


# ----------------------------------------------------------------------------------------- compare


def compare_runs(
    before: Sequence[str | Path | Run] | str | Path | Run,
    after: Sequence[str | Path | Run] | str | Path | Run,
    acceptance: str | Path | Acceptance | None = None,
    out_dir: str | Path | None = None,
    *,
    allow_incomplete: bool = False,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> Verdict:
    """Compare before and after runs (run or label folders, or loaded runs) against an acceptance file.

    Writes report.html, summary.md, junit.xml and verdict.json into ``out_dir`` when given.
    Raises :class:`~gateload.errors.InputError` for bad input.
    """
    started = time.perf_counter()
    acc = _acceptance(acceptance)
    before_stats = _analyze(_as_runs(before, allow_incomplete), acc, n_boot, seed)
    after_stats = _analyze(_as_runs(after, allow_incomplete), acc, n_boot, seed)
    verdict = evaluate_compare(before_stats, after_stats, acc)
    verdict.elapsed_s = time.perf_counter() - started
    if out_dir is not None:
        from analysis.report import write_reports

        write_reports(verdict, Path(out_dir))
    return verdict


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
    metrics["operations"] = _op_table(b_ref, a_ref, acc) if b_ref and a_ref else {}
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
        "before": _num(pb.value),
        "after": _num(pa.value),
        "ratio": _num(gain.value),
        "ci": [_num(gain.lo), _num(gain.hi)],
        "before_ci": [_num(pb.lo), _num(pb.hi)],
        "after_ci": [_num(pa.lo), _num(pa.hi)],
        "change": change_label(gain, acc.noise, lower_is_better=False),
    }
    b_sess = [peak(rs, "sessions")[0] for rs in before]
    a_sess = [peak(rs, "sessions")[0] for rs in after]
    sess_gain = ratio(a_sess, b_sess, conf)
    metrics["peak_sessions_per_s"] = {
        "before": _num(pooled(b_sess, conf).value),
        "after": _num(pooled(a_sess, conf).value),
        "ratio": _num(sess_gain.value),
        "ci": [_num(sess_gain.lo), _num(sess_gain.hi)],
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
        "expected_gain": _num(expected),
        "observed_gain": _num(gain.value),
        **_est(eff),
    }
    flags = _guard_flags(before, after, acc.noise)
    criteria = []
    if acc.min_peak_gain is not None:
        desc = "peak throughput after / before (successful ops/s, best step)"
        c = _criterion("peak_throughput_gain", desc, gain, acc.min_peak_gain, ">=", "x", runs)
        criteria.append(_generator_guard(c, flags))
    if acc.min_scaling_efficiency is not None:
        desc = f"observed gain / expected gain ({n_before} -> {n_after} servers)"
        if math.isfinite(expected):
            c = _criterion("scaling_efficiency", desc, eff, acc.min_scaling_efficiency, ">=", "", runs)
            criteria.append(_generator_guard(c, flags))
        else:
            why = "server counts unknown: meta.profile.servers is empty and no sample names a server"
            criteria.append(_missing("scaling_efficiency", desc, acc.min_scaling_efficiency, ">=", "", why))
    return criteria


def _latency_ratio_criteria(
    b_ref: list[StepStats], a_ref: list[StepStats], why: str, acc: Acceptance, runs: int
) -> list[Criterion]:
    out = []
    for op, limit in acc.max_latency_ratio.items():
        name = f"latency_ratio[{op}]"
        desc = f"p95 of {op} after / before at {acc.reference_users:g} users"
        if not (b_ref and a_ref):
            out.append(_missing(name, desc, limit, "<=", "x", why))
            continue
        r = ratio(_latency(a_ref, op), _latency(b_ref, op), acc.confidence)
        if math.isfinite(r.value):
            out.append(_criterion(name, desc, r, limit, "<=", "x", runs))
        else:
            out.append(_missing(name, desc, limit, "<=", "x", f"no successful {op} at the reference load"))
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
    metrics["error_rate"] = {"scope_max_users": ref_max, **{side: _est(e) for side, e in rates.items()}}
    metrics["errors_by_class"] = {side: _errors_by_class(runs) for side, runs in sides.items()}
    if acc.max_error_rate is None:
        return []
    scope = f"at loads <= {ref_max:g} users" if ref_max else "over all steps"
    desc = f"failed / all operations{' after' if judged == 'after' else ''}, {scope}"
    return [_criterion("error_rate", desc, rates[judged], acc.max_error_rate, "<=", "", len(sides[judged]))]


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
    metrics["servers"] = _server_table(shares, judged if name == "new_server_share" else [], conf, ref)
    if acc.min_share_of_even is None:
        return []
    judged = judged or servers
    mins = [min_share({k: v for k, v in s.items() if k in judged}, conf) for s in shares]
    if not any(math.isfinite(m.value) for m, _ in mins):
        why = "no sample names its server (column server is empty); the target must reveal backends"
        return [_missing(name, f"{what}: share / even share", acc.min_share_of_even, ">=", "", why)]
    who = ", ".join(sorted({n for _, n in mins if n}))
    est = pooled([m for m, _ in mins], conf)
    desc = f"{what}: share / even share (lowest: {who})"
    return [_criterion(name, desc, est, acc.min_share_of_even, ">=", "", len(side))]


def _capacity_metrics(sides: dict[str, list[RunStats]], acc: Acceptance) -> dict[str, Any]:
    return {
        "usl": {side: _usl(runs) for side, runs in sides.items()},
        "knees": {side: _knees(runs, acc) for side, runs in sides.items()},
        "steps": {side: [_step_rows(rs) for rs in runs] for side, runs in sides.items()},
        "health": {side: [_health(rs) for rs in runs] for side, runs in sides.items()},
        "faults": fault_metrics(sides),
    }


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


def _guard_flags(before: list[RunStats], after: list[RunStats], noise: float) -> dict[str, list[str]]:
    """Runs whose peak throughput under-states their capacity: a saturated load generator (Locust CPU
    warnings), or a staircase that stopped before the target saturated."""
    flags: dict[str, list[str]] = {}
    for side, runs in (("before", before), ("after", after)):
        flags[side] = [
            f"{rs.run.name} (load generator saturated: {rs.run.cpu_warnings} Locust CPU warnings)"
            for rs in runs
            if rs.run.cpu_warnings
        ]
        flags[side] += [why for rs in runs if (why := unsaturated(rs, noise))]
    return flags


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


def logon_op(side: Sequence[RunStats]) -> str | None:
    """The logon operation of a side's runs, as their catalogue declares it (meta.json)."""
    return side[0].run.catalogue.logon if side else None


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
            out.append(_missing(name, desc, limit, "<=", "ms", why))
            continue
        ests = _latency(ref, op)
        if not ests:
            out.append(_missing(name, desc, limit, "<=", "ms", f"no successful {op} at the reference load"))
            continue
        out.append(_criterion(name, desc, pooled(ests, acc.confidence), limit, "<=", "ms", runs))
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


def check_runs(
    runs: Sequence[str | Path | Run] | str | Path | Run,
    acceptance: str | Path | Acceptance,
    out_dir: str | Path | None = None,
    *,
    allow_incomplete: bool = False,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> Verdict:
    """Gate a run (or replicates of one configuration) on its SLAs: latency, errors, server shares,
    throughput at the reference load. Before/after criteria (gains, ratios) do not apply and are skipped."""
    return _check_or_report("check", runs, acceptance, out_dir, allow_incomplete, n_boot, seed)


def report_runs(
    runs: Sequence[str | Path | Run] | str | Path | Run,
    acceptance: str | Path | Acceptance | None = None,
    out_dir: str | Path | None = None,
    *,
    allow_incomplete: bool = False,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> Verdict:
    """The metrics of :func:`check_runs` with no verdict (``NONE``, no criteria): a capacity report.

    ``acceptance`` only sets the SLAs for the knees and the reference load.
    """
    return _check_or_report("report", runs, acceptance, out_dir, allow_incomplete, n_boot, seed)


def _check_or_report(
    kind: str,
    runs: Sequence[str | Path | Run] | str | Path | Run,
    acceptance: str | Path | Acceptance | None,
    out_dir: str | Path | None,
    allow_incomplete: bool,
    n_boot: int,
    seed: int,
) -> Verdict:
    started = time.perf_counter()
    acc = _acceptance(acceptance)
    stats = _analyze(_as_runs(runs, allow_incomplete), acc, n_boot, seed)
    verdict = evaluate_check(stats, acc, kind)
    verdict.elapsed_s = time.perf_counter() - started
    if out_dir is not None:
        from analysis.report import write_reports

        write_reports(verdict, Path(out_dir))
    return verdict


def evaluate_check(side: list[RunStats], acc: Acceptance, kind: str = "check") -> Verdict:
    """Criteria and metrics of a single-configuration check (runs already analysed); ``kind="report"``
    keeps the metrics and drops the verdict."""
    conf = acc.confidence
    sides = {"run": side}
    metrics: dict[str, Any] = {"interval_method": interval_method(len(side))}
    p = pooled([peak(rs)[0] for rs in side], conf)
    metrics["peak_throughput"] = {
        "unit": "successful operations/s",
        "run": _num(p.value),
        "ci": [_num(p.lo), _num(p.hi)],
    }
    ref, why = ref_steps(side, acc)
    metrics["reference"] = {"users": acc.reference_users, "step_users": [st.users for st in ref]}
    criteria: list[Criterion] = []
    if acc.min_ops_per_s is not None:
        desc = f"throughput at {_at(ref, acc)} (successful ops/s)"
        if ref:
            est = pooled([st.throughput for st in ref], conf)
            criteria.append(_criterion("throughput", desc, est, acc.min_ops_per_s, ">=", "ops/s", len(side)))
        else:
            criteria.append(_missing("throughput", desc, acc.min_ops_per_s, ">=", "ops/s", why))
    criteria += _sla_criteria(ref, why, acc, len(side), logon_op(side))
    criteria += _error_part(sides, "run", acc, metrics)
    servers = side[0].run.servers
    criteria += _share_part(side, servers, [], ref, acc, metrics, "server_share", "every server")
    metrics["operations"] = _op_table([], ref, acc) if ref else {}
    metrics.update(_capacity_metrics(sides, acc))
    return _finish(kind, criteria, metrics, _side_warnings(sides), acc, sides)


# ------------------------------------------------------------------------------------ metric tables


def _op_table(b_ref: list[StepStats], a_ref: list[StepStats], acc: Acceptance) -> dict[str, Any]:
    """Per operation at the reference load: percentiles per side and the p95 ratio with its change."""
    conf = acc.confidence
    ops = sorted(
        {op for st in a_ref for op in st.ops} | ({op for st in b_ref for op in st.ops} if b_ref else set())
    )
    table: dict[str, Any] = {}
    for op in [ALL, *ops]:
        row: dict[str, Any] = {}
        for side, steps in (("before", b_ref), ("after", a_ref)):
            if not steps:
                continue
            stats = [st.op(op) for st in steps if st.op(op) is not None]
            row[side] = {
                "count": int(sum(s.count for s in stats)),
                "error_rate": _num(pooled([s.error_rate for s in stats], conf).value) if stats else None,
                **{
                    q: _est(
                        pooled(
                            _latency(steps, op, q) if op in steps[0].paced else [s.q[q] for s in stats], conf
                        )
                    )
                    for q in ("p50", "p90", "p95", "p99")
                },
                "max": _num(
                    max((st.paced[op].max_ms for st in steps), default=math.nan)
                    if op in steps[0].paced
                    else max((s.max for s in stats), default=math.nan)
                ),
                "raw_p95": _est(pooled([s.q["p95"] for s in stats], conf)) if op in steps[0].paced else None,
            }
        if b_ref and a_ref:
            r = ratio(_latency(a_ref, op), _latency(b_ref, op), conf)
            row["p95_ratio"] = _est(r)
            row["change"] = change_label(r, acc.noise, lower_is_better=True)
        row["paced"] = bool(a_ref) and op in a_ref[0].paced
        table[op] = row
    return table


def _errors_by_class(side: Sequence[RunStats]) -> dict[str, dict[str, float]]:
    """Failures per error class over every steady window: count, and rate per operation."""
    counts: dict[str, int] = {}
    total = 0.0
    for rs in side:
        for st in rs.steps:
            total += float(st.blk_n.sum())
            for k, v in st.errors.items():
                counts[k] = counts.get(k, 0) + v
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return {k: {"count": v, "rate": _num(v / total) if total else None} for k, v in ordered}


def _server_table(
    shares: list[dict[str, Estimate]], new: list[str], conf: float, ref: Sequence[StepStats] = ()
) -> dict[str, Any]:
    """Per server: new or not, share of an even split (all steps), and latency at the reference load."""
    names = list(shares[0]) if shares else []
    out = {}
    for name in names:
        at_ref = [st.servers[name] for st in ref if name in st.servers]
        out[name] = {
            "new": name in new,
            "share_of_even": _est(pooled([s[name] for s in shares if name in s], conf)),
            "ops_at_reference": int(sum(x.count for x in at_ref)),
            "p50_ms_at_reference": _num(float(np.mean([x.p50 for x in at_ref]))) if at_ref else None,
            "p95_ms_at_reference": _num(float(np.mean([x.p95 for x in at_ref]))) if at_ref else None,
        }
    return out


def _usl(side: Sequence[RunStats]) -> dict[str, Any]:
    fit, why = capacity.fit_runs(side)
    return fit.as_dict() if fit is not None else {"error": why}


def _knees(side: Sequence[RunStats], acc: Acceptance) -> list[dict[str, Any]]:
    out = []
    for rs in side:
        for k in capacity.knees(rs, acc.sla_limits(rs.run.catalogue.logon)):
            out.append(
                {
                    "run": rs.run.name,
                    "op": k.op,
                    "limit_ms": k.limit_ms,
                    "users": k.users,
                    "step": k.step_index,
                    "p95": _est(k.p95) if k.p95 else None,
                }
            )
    return out


def _step_rows(rs: RunStats) -> dict[str, Any]:
    rows = []
    for st in rs.steps:
        w = st.window
        logon = capacity.logon_p95(st)
        rows.append(
            {
                "step": w.index,
                "users": w.users,
                "users_observed": _num(st.users_observed),
                "steady_s": round(w.duration, 3),
                "ramp_s": round(w.ramp_s, 3),
                "warmup_cut_s": round(w.warmup_s, 3),
                "steady": w.steady,
                "block_s": round(st.block_s, 3),
                "bootstrap_block_len": st.block_len,
                "throughput": _est(st.throughput),
                "request_rate": _num(st.request_rate),
                "sessions_per_s": _est(st.sessions),
                "error_rate": _est(st.error_rate),
                "p50_ms": _est(st.all.q["p50"]),
                "p95_ms": _est(st.all.q["p95"]),
                "p99_ms": _est(st.all.q["p99"]),
                "logon_p95_ms": _est(logon),
                "littles_law_ratio": _num(st.little.ratio) if st.little else None,
            }
        )
    return {"run": rs.run.name, "complete": rs.run.complete, "steps": rows}


def _health(rs: RunStats) -> dict[str, Any]:
    paced = []
    for st in rs.steps:
        for p in st.paced.values():
            paced.append(
                {
                    "step": st.window.index,
                    "users": st.users,
                    "op": p.op,
                    "planned_per_user": _num(p.rate.planned),
                    "achieved_per_user": _num(p.rate.achieved),
                    "shortfall": _num(p.rate.shortfall),
                    "flagged": p.flagged,
                    "raw_p99_ms": _num(st.ops[p.op].q["p99"].value) if p.op in st.ops else None,
                    "raw_max_ms": _num(st.ops[p.op].max) if p.op in st.ops else None,
                    "corrected_max_ms": _num(p.max_ms),
                    "corrected_p99_ms": _num(p.corrected["p99"].value),
                    "late_max_ms": _num(p.late_max_ms),
                }
            )
    little = [
        {
            "step": st.window.index,
            "users": _num(st.little.users),
            "predicted": _num(st.little.predicted),
            "ratio": _num(st.little.ratio),
            "ok": st.little.ok,
        }
        for st in rs.steps
        if st.little is not None
    ]
    return {"run": rs.run.name, "cpu_warnings": rs.run.cpu_warnings, "littles_law": little, "paced": paced}
