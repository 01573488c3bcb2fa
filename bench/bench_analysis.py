"""Benchmark: `gateload compare` of two 1,000,000-sample runs, intervals and report included.

Target (issue 4): <= 10 s and <= 1.5 GB peak RSS on the 2-core project machine.

Two synthetic step runs (6 steps, 4 vs 12 servers, known gain) are written with the results schema,
then each measurement runs in its own fresh Python process, so its peak RSS is its own:

- **compare**: ``gateload compare BEFORE AFTER --acceptance A --out D`` (reading, warm-up cut, every
  per-step percentile and rate with block-bootstrap intervals, USL fits with bootstrap intervals,
  acceptance verdicts, HTML/Markdown/JUnit/JSON reports with plots);
- **baseline**: what a bare pandas analysis costs on the same data: ``read_parquet`` of both runs and
  ``groupby(type, name).duration_ms.quantile([.5, .9, .95, .99])`` (no intervals, no warm-up cut).

Figures: wall time of each (in-process, and with interpreter start-up), peak RSS, and the compare /
baseline time ratio, measured in the same run.

    .venv/bin/python bench/bench_analysis.py            # 2 x 1M samples (about half a minute)
    .venv/bin/python bench/bench_analysis.py --smoke    # 2 x 20k samples, nothing appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
for p in (ROOT, BENCH):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

TARGET_S = 10.0
TARGET_MB = 1536.0
ACCEPTANCE = """
version = 1
[load]
reference_users = 80
[throughput]
min_peak_gain = 1.1
[logon]
max_p95_ms = 5000
[errors]
max_rate = 0.01
[servers]
min_share_of_even = 0.5
[sla]
"SSH keystroke" = 500
"""


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child_compare(before: str, after: str, acceptance: str, out: str) -> dict:
    t0 = time.perf_counter()
    from gateload.cli import main

    code = main(["compare", before, after, "--acceptance", acceptance, "--out", out])
    return {"wall_s": time.perf_counter() - t0, "peak_mb": _peak_mb(), "exit": code}


def child_baseline(before: str, after: str) -> dict:
    t0 = time.perf_counter()
    import pandas as pd

    rows = 0
    for run in (before, after):
        df = pd.read_parquet(Path(run) / "samples.parquet", columns=["type", "name", "duration_ms"])
        df.groupby(["type", "name"], observed=True)["duration_ms"].quantile([0.5, 0.9, 0.95, 0.99])
        rows += len(df)
    return {"wall_s": time.perf_counter() - t0, "peak_mb": _peak_mb(), "rows": rows}


def run_child(*args: str) -> dict:
    """Run this script in a fresh interpreter; its last stdout line is the JSON result."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench child {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["total_s"] = total
    return result


def make_runs(root: Path, samples: int) -> tuple[Path, Path]:
    from gateload.analysis.synthetic import SynthSpec, spec_for_samples, write_run

    old = tuple(f"old-{i:02d}" for i in range(1, 5))
    new = tuple(f"new-{i:02d}" for i in range(1, 9))
    # six 60-s steps; small runs get shorter steps and slower typing so that the sample count fits
    hold = 60.0 if samples >= 500_000 else 15.0
    steps = tuple((n, hold) for n in (10, 20, 40, 80, 120, 160))
    paced = 2.0 if samples >= 500_000 else 0.5
    before = SynthSpec(
        label="before",
        run_id="b1",
        steps=steps,
        ramp_s=5.0,
        usl=(30.0, 0.02, 0.0005),
        servers=old,
        paced_rate=paced,
    )
    before = spec_for_samples(before, samples)
    lam, sigma, kappa = before.usl
    # after: 3x the servers, contention and coherency divided accordingly; both runs are then rescaled
    # to the same sample count, so the gain left is modest (the bench measures speed, not the farm)
    after = before.with_(
        label="after", run_id="a1", servers=old + new, usl=(lam, sigma / 3, kappa / 9), seed=1
    )
    after = spec_for_samples(after, samples)
    return write_run(before, root), write_run(after, root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2 x 20k samples; nothing appended to RESULTS.md")
    ap.add_argument("--samples", type=int, help="samples per run (default 1,000,000; --smoke 20,000)")
    ap.add_argument("--keep", type=Path, help="write the runs and the report here and keep them")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = child_compare(*rest) if kind == "compare" else child_baseline(*rest)
        print(json.dumps(result))
        return 0

    samples = args.samples or (20_000 if args.smoke else 1_000_000)
    load_before = os.getloadavg()[0]  # a busy machine slows everything: say how busy it was
    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        before, after = make_runs(root / "runs", samples)
        gen_s = time.perf_counter() - t0
        acceptance = root / "acceptance.toml"
        acceptance.write_text(ACCEPTANCE)
        base = run_child("baseline", str(before), str(after))
        comp = run_child("compare", str(before), str(after), str(acceptance), str(root / "report"))
        verdict = json.loads((root / "report" / "verdict.json").read_text())

    figures = {
        "samples_per_run": base["rows"] // 2,
        "compare_s": round(comp["wall_s"], 2),
        "compare_with_startup_s": round(comp["total_s"], 2),
        "compare_peak_rss_mb": round(comp["peak_mb"]),
        "baseline_pandas_s": round(base["wall_s"], 2),
        "baseline_peak_rss_mb": round(base["peak_mb"]),
        "ratio_compare_vs_baseline": round(comp["wall_s"] / base["wall_s"], 2),
        "verdict": verdict["verdict"],
        "within_target": comp["total_s"] <= TARGET_S and comp["peak_mb"] <= TARGET_MB,
        "load_avg_1min": round(load_before, 2),
    }
    notes = (
        f"target <= {TARGET_S:g} s and <= {TARGET_MB:g} MB; baseline = pandas read_parquet + groupby "
        f"quantile (no intervals); synthetic runs generated in {gen_s:.1f} s (not timed)"
    )
    if args.smoke:
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"  {key:<{width}}  {value}")
        print(f"  notes: {notes}")
    else:
        from _report import record

        record("analysis", figures, notes)
    return 0 if figures["within_target"] or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
