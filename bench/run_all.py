"""Run every gateload benchmark in sequence (``make bench``), each in its own process.

    .venv/bin/python bench/run_all.py                 # full runs; each appends to bench/RESULTS.md
    .venv/bin/python bench/run_all.py --smoke         # seconds-long runs; nothing appended
    .venv/bin/python bench/run_all.py --only ssh,timing

The benchmarks, in the order of issue 7: portal (1), ssh (2), timing (3), scale (4), recorder (5),
analysis (6); then endurance (10 minutes of HomeofficeUsers at the farm's knee: the harness's memory
stays flat) and density (issue 15: sessions per generator core at human pace within the timing
limits). The machine's load matters (every figure is a ratio against a baseline measured in the
same run, but a busy machine still adds noise): before each full benchmark the runner waits, bounded
by ``--wait-s``, until the 1-minute load average is below ``--max-load``, and prints the load it
started at. A benchmark that crashes or overruns its time limit does not stop the others.

Exit code: 0 if every benchmark exited 0; 1 if any missed its target (full runs) or failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full_timeout_s: float
    smoke_timeout_s: float = 180.0


BENCHES = (
    Bench("portal", "bench_portal.py", 600),
    Bench("ssh", "bench_ssh.py", 600),
    Bench("timing", "bench_timing.py", 600),
    Bench("scale", "bench_scale.py", 1200),
    Bench("recorder", "bench_recorder.py", 300),
    Bench("analysis", "bench_analysis.py", 300),
    Bench("endurance", "bench_endurance.py", 1200),
    Bench("density", "bench_density.py", 1800),
    Bench("openvpn", "bench_openvpn.py", 600),
)


def wait_for_quiet(max_load: float, wait_s: float) -> float:
    """Wait (at most ``wait_s``) until the 1-minute load average is below ``max_load``; returns it."""
    deadline = time.monotonic() + wait_s
    load = os.getloadavg()[0]
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long runs; nothing appended")
    names = ",".join(b.name for b in BENCHES)
    parser.add_argument("--only", default="", help=f"comma-separated names, of {names}")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for a 1-min load below this")
    parser.add_argument("--wait-s", type=float, default=120.0, help="longest wait for the load, per bench")
    args = parser.parse_args(argv)
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(wanted) - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}")
    benches = [b for b in BENCHES if not wanted or b.name in wanted]
    summary = []
    for bench in benches:
        load = os.getloadavg()[0] if args.smoke else wait_for_quiet(args.max_load, args.wait_s)
        mode = "smoke" if args.smoke else "full"
        cpus = os.cpu_count()
        print(f"\n### {bench.name} ({mode}; 1-min load average {load:.2f}, {cpus} CPUs)", flush=True)
        cmd = [sys.executable, str(BENCH / bench.script), *(["--smoke"] if args.smoke else [])]
        timeout = bench.smoke_timeout_s if args.smoke else bench.full_timeout_s
        started = time.monotonic()
        try:
            code = subprocess.run(cmd, timeout=timeout, cwd=BENCH.parent).returncode
            outcome = "ok" if code == 0 else f"exit {code} (target missed or failed: see above)"
        except subprocess.TimeoutExpired:
            code, outcome = -1, f"did not finish within {timeout:g} s"
        summary.append((bench.name, code, outcome, time.monotonic() - started, load))
    print("\n### summary")
    for name, _code, outcome, seconds, load in summary:
        print(f"  {name:<9} {seconds:6.1f} s  load {load:5.2f}  {outcome}")
    if not args.smoke:
        print(f"  figures appended to {BENCH / 'RESULTS.md'}")
    return 0 if all(code == 0 for _, code, *_ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
