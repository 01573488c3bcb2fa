"""The verdict model and its rules: criteria with their interval, margin and verdict, and how they combine.

Each criterion gets an estimate, a confidence interval and a verdict, the way criterion.rs decides:

- **PASS** only when the whole interval clears the margin;
- **FAIL** when the whole interval lies on the wrong side;
- **INCONCLUSIVE** otherwise, with a note saying how much more data would settle it if the estimate holds.

The overall verdict is FAIL if any criterion fails, else INCONCLUSIVE if any is inconclusive, else PASS
(``criteria.py`` downgrades a PASS resting on an incomplete run, and every criterion of a run that
never reached a steady state: :func:`unsettled`). A report has no verdict: ``NONE``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateload.analysis.acceptance import Acceptance
from gateload.analysis.metrics import RunStats
from gateload.analysis.stats import MIN_REPLICATES, Estimate
from gateload.analysis.tables import num

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
            "estimate": num(self.estimate),
            "ci_low": num(self.ci_low),
            "ci_high": num(self.ci_high),
            "margin": num(self.margin),
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
                        "steady": rs.steady,
                        "samples": len(rs.run.samples),
                    }
                    for rs in runs
                ]
                for side, runs in self.sides.items()
            },
        }


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


def criterion(
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


def unsettled(c: Criterion) -> Criterion:
    """``c`` made INCONCLUSIVE because its runs never settled: their figures (each step's second half)
    trend, so no interval of them bounds a steady value; the note keeps what the figures lean to."""
    if c.verdict == INCONCLUSIVE:
        return replace(c, note=f"no steady state; {c.note}" if c.note else "no steady state")
    return replace(
        c, verdict=INCONCLUSIVE, note=f"{c.verdict} on figures with no steady state, not a verdict"
    )


def missing(name: str, description: str, margin: float, direction: str, unit: str, why: str) -> Criterion:
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
