"""Before/after comparison and single-run checks against an acceptance file: the Python entry points.

:func:`compare_runs` and :func:`check_runs` (the campaign and ``gateload compare | check`` call these)
read runs, analyse them, judge them and write the reports; :func:`report_runs` gives a check's metrics
with no verdict (``gateload report``). The work is split by job:

- :mod:`gateload.analysis.verdict`    the verdict model (Criterion, Verdict) and its rules
                                      (PASS/FAIL/INCONCLUSIVE)
- :mod:`gateload.analysis.estimates`  per-run composite estimates (peaks, error rates, server shares)
- :mod:`gateload.analysis.criteria`   an acceptance file's criteria evaluated on analysed runs
- :mod:`gateload.analysis.tables`     the JSON-ready metric tables of a verdict
- :mod:`gateload.analysis.report`     the report files

The names tests and callers use from here (the verdict constants, ``Verdict``, ``evaluate_compare``,
``evaluate_check``, ``share_of_even``...) are re-exported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from gateload.analysis.acceptance import Acceptance, load_acceptance
from gateload.analysis.criteria import evaluate_check, evaluate_compare
from gateload.analysis.estimates import peak, ref_steps, share_of_even
from gateload.analysis.metrics import RunStats, analyze_run
from gateload.analysis.report import write_reports
from gateload.analysis.runs import Run, load_runs
from gateload.analysis.stats import DEFAULT_BOOT
from gateload.analysis.verdict import EXIT_CODES, FAIL, INCONCLUSIVE, NONE, PASS, Criterion, Verdict

__all__ = [
    "EXIT_CODES",
    "FAIL",
    "INCONCLUSIVE",
    "NONE",
    "PASS",
    "Criterion",
    "Verdict",
    "check_runs",
    "compare_runs",
    "evaluate_check",
    "evaluate_compare",
    "peak",
    "ref_steps",
    "report_runs",
    "share_of_even",
]


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
    # a run that never settles is analysed too: a report marks it, a verdict on it is INCONCLUSIVE
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


# ----------------------------------------------------------------------------------------- entry points


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
        write_reports(verdict, Path(out_dir))
    return verdict


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
    throughput at the reference load. Before/after criteria (gains, ratios) do not apply and are skipped.
    A run that never reached a steady state gets INCONCLUSIVE on every criterion, with the reason."""
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

    ``acceptance`` only sets the SLAs for the knees and the reference load. A run that never settles
    (a short fault-injection run, say) is marked NO STEADY STATE, its figures are each step's second
    half, and its timeline and fault windows are drawn as usual (a check or compare of it is INCONCLUSIVE).
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
        write_reports(verdict, Path(out_dir))
    return verdict
