"""``gateload usl | compare | check | report``: the analysis commands.

Exit codes: 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 bad input (an InputError, printed as one line by
``gateload.cli``).

How ``compare`` tells before from after: see :data:`SIDES_HELP`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateload.errors import InputError

if TYPE_CHECKING:
    from gateload.analysis.compare import Verdict
    from gateload.analysis.runs import Run

SIDES_HELP = (
    "Runs are grouped by label (meta.json 'label', else the name of the folder above the run); runs that "
    "share a label are replicates. --before LABEL / --after LABEL choose the sides; by default the label "
    "'before' is the baseline if there is one, else the label of the first run given, and the one other "
    "label is after."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the analysis subcommands to the ``gateload`` parser."""
    from gateload.cli import exit_codes

    verdict_codes = exit_codes(
        "0    PASS",
        "1    FAIL",
        "3    INCONCLUSIVE (also: no steady state, no criteria, a PASS resting on an --allow-incomplete run)",
        "2    bad input: a usage error, a bad run folder or acceptance file, one line on stderr",
    )
    p = subparsers.add_parser(
        "usl",
        help="fit the Universal Scalability Law to a CSV of concurrency and throughput",
        description="Fit X(N) = lambda N / (1 + sigma (N-1) + kappa N (N-1)) by nonlinear least squares.",
        **exit_codes(
            "0    fitted",
            "2    bad input: a usage error, an unreadable CSV, a missing column, too few points",
        ),
    )
    p.add_argument("csv", type=Path, help="CSV file; a header row is optional, '#' lines are comments")
    p.add_argument("--n-col", help="concurrency column: header name or 1-based position (default: 1st)")
    p.add_argument("--x-col", help="throughput column: header name or 1-based position (default: 2nd)")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_usl)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="analyse runs whose status is not 'completed' (they are marked INCOMPLETE and cannot pass)",
    )
    common.add_argument(
        "--bootstrap", type=int, default=500, metavar="B", help="bootstrap replicates (default 500)"
    )
    common.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")

    c = subparsers.add_parser(
        "compare",
        parents=[common],
        help="compare before and after runs against an acceptance file",
        description=SIDES_HELP,
        **verdict_codes,
    )
    c.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN_OR_LABEL_DIR",
        help="run folders, label folders (replicates) or a results folder holding label folders",
    )
    c.add_argument("--acceptance", type=Path, required=True, help="acceptance margins (TOML)")
    c.add_argument(
        "--out",
        type=Path,
        required=True,
        help="report folder (report.html, summary.md, junit.xml, verdict.json)",
    )
    c.add_argument(
        "--before", metavar="LABEL", help="label of the baseline runs (default: the first run's label)"
    )
    c.add_argument(
        "--after", metavar="LABEL", help="label of the runs compared with it (default: the other label)"
    )
    c.set_defaults(func=cmd_compare)

    k = subparsers.add_parser(
        "check", parents=[common], help="gate a run on its SLAs (acceptance file)", **verdict_codes
    )
    k.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN_OR_LABEL_DIR",
        help="a run folder, or a label folder of replicates",
    )
    k.add_argument("--acceptance", type=Path, required=True, help="acceptance margins (TOML)")
    k.add_argument("--out", type=Path, help="also write the report files here")
    k.set_defaults(func=cmd_check)

    r = subparsers.add_parser(
        "report",
        parents=[common],
        help="capacity report of runs, without a verdict",
        description='Writes the report files with no verdict (verdict.json "verdict": "none"); '
        "gateload check gives one. A run that never settles is reported too, marked NO STEADY STATE.",
        **exit_codes(
            "0    report written (never a verdict: use gateload check to gate)",
            "2    bad input: a usage error, a bad run folder or acceptance file, one line on stderr",
        ),
    )
    r.add_argument("runs", nargs="+", type=Path, metavar="RUN_OR_LABEL_DIR")
    r.add_argument("--out", type=Path, required=True, help="report folder")
    r.add_argument("--acceptance", type=Path, help="optional: SLAs for the knee and reference load")
    r.set_defaults(func=cmd_report)


def _check_boot(args: argparse.Namespace) -> None:
    if args.bootstrap < 100:
        raise InputError(f"--bootstrap {args.bootstrap} is too few for 95% intervals; use 500 (at least 100)")


def cmd_usl(args: argparse.Namespace) -> int:
    from gateload.analysis.usl import fit_usl, read_usl_csv

    n, x = read_usl_csv(args.csv, args.n_col, args.x_col)
    fit = fit_usl(n, x)
    out = fit.as_dict()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"USL fit of {args.csv} ({fit.n_points} points, R^2 {fit.r_squared:.4f})")
    se = fit.std_error
    for key, value in (("lambda", fit.lam), ("sigma", fit.sigma), ("kappa", fit.kappa)):
        err = f" +- {se[key]:.4g}" if key in se else ""
        print(f"  {key:7} {value:.6g}{err}")
    print(f"  N*      {fit.n_star:.4g}   (peak concurrency, sqrt((1 - sigma) / kappa))")
    print(f"  x_max   {fit.x_max:.6g}   (throughput at N*)")
    return 0


def split_sides(runs: list[Run], before: str | None, after: str | None) -> tuple[list[Run], list[Run]]:
    """Split loaded runs into (before, after) by label; see the module docstring."""
    from gateload.analysis.runs import group_by_label

    groups = group_by_label(runs)
    labels = list(groups)
    for name, label in (("--before", before), ("--after", after)):
        if label is not None and label not in groups:
            raise InputError(f"{name} {label!r}: no run has that label; labels found: {', '.join(labels)}")
    base = before or ("before" if "before" in groups else labels[0])
    others = [lb for lb in labels if lb != base]
    if after is None:
        if len(others) != 1:
            found = ", ".join(labels)
            raise InputError(
                f"compare needs exactly two labels (before and after), found {len(labels)}: {found}; "
                "pass --before LABEL --after LABEL"
            )
        after = others[0]
    if after == base:
        raise InputError(f"--before and --after are the same label {base!r}; name two different labels")
    return groups[base], groups[after]


def cmd_compare(args: argparse.Namespace) -> int:
    from gateload.analysis.compare import compare_runs
    from gateload.analysis.runs import load_runs

    _check_boot(args)
    from gateload.analysis.acceptance import load_acceptance

    acc = load_acceptance(args.acceptance)  # fail fast on a bad file, before reading runs
    runs = load_runs(args.runs, allow_incomplete=args.allow_incomplete)
    before, after = split_sides(runs, args.before, args.after)
    verdict = compare_runs(before, after, acc, args.out, n_boot=args.bootstrap, seed=args.seed)
    _print(verdict, args.out)
    return verdict.exit_code


def cmd_check(args: argparse.Namespace) -> int:
    from gateload.analysis.acceptance import load_acceptance
    from gateload.analysis.compare import check_runs
    from gateload.analysis.runs import load_runs

    _check_boot(args)
    acc = load_acceptance(args.acceptance)
    runs = load_runs(args.runs, allow_incomplete=args.allow_incomplete)
    labels = {r.label for r in runs}
    if len(labels) > 1:
        raise InputError(
            f"check gates one configuration, got runs of {len(labels)} labels ({', '.join(sorted(labels))}); "
            "pass one label folder or run folder"
        )
    verdict = check_runs(runs, acc, args.out, n_boot=args.bootstrap, seed=args.seed)
    _print(verdict, args.out)
    return verdict.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    from gateload.analysis.acceptance import Acceptance, load_acceptance
    from gateload.analysis.compare import report_runs
    from gateload.analysis.runs import load_runs

    _check_boot(args)
    acc = load_acceptance(args.acceptance) if args.acceptance else Acceptance()
    runs = load_runs(args.runs, allow_incomplete=args.allow_incomplete)
    verdict = report_runs(runs, acc, args.out, n_boot=args.bootstrap, seed=args.seed)
    print(f"report written to {args.out}/report.html")
    for w in verdict.warnings:
        print(f"  warning: {w}")
    return 0


def _print(verdict: Verdict, out: Path | None) -> None:
    from gateload.analysis.report import fmt

    print(f"{verdict.kind}: {verdict.verdict}")
    for c in verdict.criteria:
        ci = f"[{fmt(c.ci_low)}, {fmt(c.ci_high)}]"
        print(
            f"  {c.verdict:12} {c.name}: {fmt(c.estimate)} {ci} {c.direction} {fmt(c.margin)} "
            f"{c.unit}".rstrip()
        )
        if c.note:
            print(f"               {c.note}")
    for w in verdict.warnings:
        print(f"  warning: {w}")
    if out is not None:
        print(f"report: {out / 'report.html'}")
    sys.stdout.flush()
