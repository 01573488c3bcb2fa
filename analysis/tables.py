"""Metric tables of a verdict, as JSON-ready data (verdict.json ``metrics``; the reports render them).

Per operation at the reference load, errors by class, per server, the USL fit and knees, per step, and
the generator's health (paced operations, Little's law). Non-finite numbers become None (JSON null).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gateload.analysis import capacity
from gateload.analysis.acceptance import Acceptance
from gateload.analysis.estimates import change_label, latency_estimates
from gateload.analysis.metrics import ALL, RunStats, StepStats
from gateload.analysis.stats import Estimate, pooled, ratio


def num(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def est_json(e: Estimate | None) -> dict[str, float | None]:
    return e.as_dict() if e is not None else {"value": None, "ci_low": None, "ci_high": None}


# ------------------------------------------------------------------------------------ metric tables


def op_table(b_ref: list[StepStats], a_ref: list[StepStats], acc: Acceptance) -> dict[str, Any]:
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
            stats = [s for st in steps if (s := st.op(op)) is not None]
            row[side] = {
                "count": int(sum(s.count for s in stats)),
                "error_rate": num(pooled([s.error_rate for s in stats], conf).value) if stats else None,
                **{
                    q: est_json(
                        pooled(
                            latency_estimates(steps, op, q)
                            if op in steps[0].paced
                            else [s.q[q] for s in stats],
                            conf,
                        )
                    )
                    for q in ("p50", "p90", "p95", "p99")
                },
                "max": num(
                    max((st.paced[op].max_ms for st in steps), default=math.nan)
                    if op in steps[0].paced
                    else max((s.max for s in stats), default=math.nan)
                ),
                "raw_p95": est_json(pooled([s.q["p95"] for s in stats], conf))
                if op in steps[0].paced
                else None,
            }
        if b_ref and a_ref:
            r = ratio(latency_estimates(a_ref, op), latency_estimates(b_ref, op), conf)
            row["p95_ratio"] = est_json(r)
            row["change"] = change_label(r, acc.noise, lower_is_better=True)
        row["paced"] = bool(a_ref) and op in a_ref[0].paced
        table[op] = row
    return table


def errors_by_class(side: Sequence[RunStats]) -> dict[str, dict[str, float | None]]:
    """Failures per error class over every steady window: count, and rate per operation."""
    counts: dict[str, int] = {}
    total = 0.0
    for rs in side:
        for st in rs.steps:
            total += float(st.blk_n.sum())
            for k, v in st.errors.items():
                counts[k] = counts.get(k, 0) + v
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return {k: {"count": v, "rate": num(v / total) if total else None} for k, v in ordered}


def server_table(
    shares: list[dict[str, Estimate]], new: list[str], conf: float, ref: Sequence[StepStats] = ()
) -> dict[str, Any]:
    """Per server: new or not, share of an even split (all steps), and latency at the reference load."""
    names = list(shares[0]) if shares else []
    out = {}
    for name in names:
        at_ref = [st.servers[name] for st in ref if name in st.servers]
        out[name] = {
            "new": name in new,
            "share_of_even": est_json(pooled([s[name] for s in shares if name in s], conf)),
            "ops_at_reference": int(sum(x.count for x in at_ref)),
            "p50_ms_at_reference": num(float(np.mean([x.p50 for x in at_ref]))) if at_ref else None,
            "p95_ms_at_reference": num(float(np.mean([x.p95 for x in at_ref]))) if at_ref else None,
        }
    return out


def usl_table(side: Sequence[RunStats]) -> dict[str, Any]:
    fit, why = capacity.fit_runs(side)
    return fit.as_dict() if fit is not None else {"error": why}


def knee_table(side: Sequence[RunStats], acc: Acceptance) -> list[dict[str, Any]]:
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
                    "p95": est_json(k.p95) if k.p95 else None,
                }
            )
    return out


def step_rows(rs: RunStats) -> dict[str, Any]:
    rows = []
    for st in rs.steps:
        w = st.window
        logon = capacity.logon_p95(st)
        rows.append(
            {
                "step": w.index,
                "users": w.users,
                "users_observed": num(st.users_observed),
                "steady_s": round(w.duration, 3),
                "ramp_s": round(w.ramp_s, 3),
                "warmup_cut_s": round(w.warmup_s, 3),
                "steady": w.steady,
                "block_s": round(st.block_s, 3),
                "bootstrap_block_len": st.block_len,
                "throughput": est_json(st.throughput),
                "request_rate": num(st.request_rate),
                "sessions_per_s": est_json(st.sessions),
                "error_rate": est_json(st.error_rate),
                "p50_ms": est_json(st.all.q["p50"]),
                "p95_ms": est_json(st.all.q["p95"]),
                "p99_ms": est_json(st.all.q["p99"]),
                "logon_p95_ms": est_json(logon),
                "littles_law_ratio": num(st.little.ratio) if st.little else None,
            }
        )
    return {"run": rs.run.name, "complete": rs.run.complete, "steps": rows}


def health_table(rs: RunStats) -> dict[str, Any]:
    paced = []
    for st in rs.steps:
        for p in st.paced.values():
            paced.append(
                {
                    "step": st.window.index,
                    "users": st.users,
                    "op": p.op,
                    "planned_per_user": num(p.rate.planned),
                    "achieved_per_user": num(p.rate.achieved),
                    "shortfall": num(p.rate.shortfall),
                    "flagged": p.flagged,
                    "raw_p99_ms": num(st.ops[p.op].q["p99"].value) if p.op in st.ops else None,
                    "raw_max_ms": num(st.ops[p.op].max) if p.op in st.ops else None,
                    "corrected_max_ms": num(p.max_ms),
                    "corrected_p99_ms": num(p.corrected["p99"].value),
                    "late_max_ms": num(p.late_max_ms),
                }
            )
    little = [
        {
            "step": st.window.index,
            "users": num(st.little.users),
            "predicted": num(st.little.predicted),
            "ratio": num(st.little.ratio),
            "ok": st.little.ok,
        }
        for st in rs.steps
        if st.little is not None
    ]
    pauses = [
        {
            "process": p.process,
            "start": num(p.start),
            "seconds": num(p.end - p.start),
            "clock_jump": p.clock_jump,
        }
        for p in rs.run.generator_pauses
    ]
    return {
        "run": rs.run.name,
        "cpu_warnings": rs.run.cpu_warnings,
        "generator_pauses": pauses,
        "littles_law": little,
        "paced": paced,
    }
