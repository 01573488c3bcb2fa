"""Endurance: sustained HomeofficeUser load at the before farm's knee; the harness's memory stays flat.

A reference-before farm (subprocess, private state folder) and a headless ``locust`` run of ``USERS``
HomeofficeUsers (80, the farm's knee in the demo: keystroke p95 passes 500 ms there): ``--warmup``
seconds, then ``--minutes`` of measurement. Every ``--interval`` seconds the resident set size (VmRSS) of the
Locust process and of its children (the workers of ``--processes``) is sampled from /proc. At the
end: RSS at the start of the measurement (after the warm-up: the ramp, the first imports and
connections, malloc arenas and Locust's caches filling up), at the end and at its highest,
and the least-squares slope in MB/min over the whole measurement and over its second half (a leak
keeps growing; a warm-up settles). The run must complete with every sample on disk.

    .venv/bin/python bench/bench_endurance.py                  # 3 + 10 minutes at 80 users (RESULTS.md)
    .venv/bin/python bench/bench_endurance.py --smoke          # ~25 s, nothing appended
    .venv/bin/python bench/bench_endurance.py --trace DIR      # where the memory goes (bench/_memtrace.py)
    .venv/bin/python bench/bench_endurance.py --minutes 30 --users 60 --processes 2

"Flat" means the projected growth over the run (slope x minutes, second half) stays under
``FLAT_SHARE`` of the starting RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

USERS = 80  # the knee of reference-before (full demo: keystroke p95 passes 500 ms at 80 sessions)
FLAT_SHARE = 0.05
PROFILE = ROOT / "targets" / "profiles" / "reference-before.toml"
LOCUSTFILE = ROOT / "locustfiles" / "homeoffice.py"


@dataclass
class Series:
    """RSS samples: (seconds since start, MB of the Locust processes, MB of the farm, processes)."""

    t: list[float] = field(default_factory=list)
    harness_mb: list[float] = field(default_factory=list)
    farm_mb: list[float] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)

    def after(self, t0: float) -> tuple[list[float], list[float]]:
        keep = [i for i, t in enumerate(self.t) if t >= t0]
        return [self.t[i] for i in keep], [self.harness_mb[i] for i in keep]


def rss_mb(pid: int) -> float:
    """VmRSS of one process in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def rows_on_disk(run_dir: Path) -> int:
    """Samples in the run's finished part files."""
    import pyarrow.parquet as pq

    from gateload.analysis.schema import part_files

    return sum(pq.read_metadata(p).num_rows for p in part_files(run_dir))


def slope_mb_per_min(t: list[float], y: list[float]) -> float:
    """Least-squares slope of y (MB) over t (s), in MB per minute."""
    n = len(t)
    if n < 3:
        return float("nan")
    mt, my = sum(t) / n, sum(y) / n
    var = sum((a - mt) ** 2 for a in t)
    return 60.0 * sum((a - mt) * (b - my) for a, b in zip(t, y, strict=True)) / var if var else float("nan")


def run(args: argparse.Namespace, work: Path) -> tuple[Series, dict, float]:
    """Farm + Locust for ``args.minutes``, sampling RSS; (series, meta.json, measurement start)."""
    from gateload.targets.reference.harness import FarmProcess

    run_s = max(5, round(args.warmup + args.minutes * 60))
    series = Series()
    with FarmProcess(PROFILE, state_dir=work / "state") as farm:
        files = str(LOCUSTFILE) + (f",{BENCH / '_memtrace.py'}" if args.trace else "")
        cmd = [sys.executable, "-m", "locust", "-f", files, "--headless", "--only-summary"]
        cmd += ["-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{run_s}s"]
        cmd += ["--profile", str(farm.profile_path), "--results-dir", str(work / "results")]
        cmd += ["--label", "endurance", "--exit-code-on-error", "0"]
        if args.processes > 1:
            from gateload.locustrun import free_port

            port = str(free_port())
            cmd += ["--processes", str(args.processes), "--master-bind-host", "127.0.0.1"]
            cmd += ["--master-bind-port", port, "--master-port", port]
        with open(work / "locust.log", "w") as log:
            env = dict(os.environ, GATELOAD_MEMTRACE_DIR=str(args.trace)) if args.trace else None
            proc = subprocess.Popen(
                [*cmd, "HomeofficeUser"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        started = time.monotonic()
        deadline = started + run_s + 120  # bounded: the run ends by itself; this is the backstop
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                pids = tree(proc.pid)
                series.t.append(time.monotonic() - started)
                series.harness_mb.append(sum(rss_mb(p) for p in pids))
                series.farm_mb.append(rss_mb(farm.pid))
                series.processes.append(len(pids))
                time.sleep(args.interval)
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=60)
    run_dir = next((work / "results" / "endurance").iterdir())
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["rows_on_disk"] = rows_on_disk(run_dir)
    return series, meta, args.warmup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="~25 s at 10 users; nothing appended")
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="measured, after the warm-up (default 10)"
    )
    parser.add_argument("--users", type=int, default=USERS, help=f"HomeofficeUsers (default {USERS})")
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    parser.add_argument("--processes", type=int, default=1, help="Locust processes (default 1)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--trace", type=Path, help="write tracemalloc snapshots of Locust to this folder")
    # Malloc arenas and Locust's bounded caches (response-time windows) fill over the first ~3-4
    # minutes at the knee; measuring from the first minute would call that fill a leak.
    parser.add_argument("--warmup", type=float, default=180.0, help="seconds before the measurement")
    args = parser.parse_args(argv)
    if args.smoke:
        args.minutes, args.users, args.interval, args.warmup = 20 / 60, 10, 1.0, 5.0
    if args.minutes <= 0 or args.warmup < 0 or args.users < 1 or args.interval <= 0 or args.processes < 1:
        parser.error("--minutes, --users, --interval and --processes must be positive, --warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="gateload-bench-endurance-") as tmp:
        series, meta, warmup = run(args, Path(tmp))
    if args.trace:
        print_growth(args.trace, warmup)
    return report(args, series, meta, warmup)


def print_growth(folder: Path, since: float, top: int = 25) -> None:
    """What grew from the first sample ``since`` s after the start to the last (see _memtrace.py)."""
    rows = [json.loads(line) for line in (folder / "memory.jsonl").read_text().splitlines()]
    if len(rows) < 2:
        print(f"bench_endurance: {len(rows)} memory samples in {folder}; run longer")
        return
    first = next((r for r in rows if r["t"] - rows[0]["t"] >= since - 60), rows[0])
    last = rows[-1]
    print(f"growth over {(last['t'] - first['t']) / 60:.1f} min (kB, or objects):")
    for group in ("rss_kb", "malloc_kb"):
        for key, end in last.get(group, {}).items():
            start = first[group].get(key, 0)
            print(f"  {group}.{key:<12} {start:>9} -> {end:>9} ({end - start:+d})")
    print(f"  python objects       {first['objects']:>9} -> {last['objects']:>9}")
    snaps = sorted(folder.glob("snap-*.pickle"))
    if len(snaps) >= 2:
        _print_traced_growth(snaps[rows.index(first)], snaps[-1], top)


def _print_traced_growth(first_path: Path, last_path: Path, top: int) -> None:
    import tracemalloc

    first, last = (tracemalloc.Snapshot.load(str(p)) for p in (first_path, last_path))
    for stat in last.compare_to(first, "traceback")[:top]:
        print(f"{stat.size_diff / 1e3:+10.1f} kB {stat.count_diff:+8d} blocks")
        for line in stat.traceback.format(limit=4, most_recent_first=True):
            print("    " + line.strip())


def report(args: argparse.Namespace, series: Series, meta: dict, warmup: float) -> int:
    """Print (and in full mode record) the figures; exit 1 if the run failed or memory grew."""
    t, mb = series.after(warmup)
    if len(t) < 3:
        print("bench_endurance: too few RSS samples after the warm-up; run longer", file=sys.stderr)
        return 2
    half = [i for i, x in enumerate(t) if x >= (t[0] + t[-1]) / 2]
    slope = slope_mb_per_min(t, mb)
    slope_late = slope_mb_per_min([t[i] for i in half], [mb[i] for i in half])
    minutes = (t[-1] - t[0]) / 60.0
    growth = max(0.0, slope_late) * minutes
    flat = growth <= FLAT_SHARE * mb[0]
    locust = meta.get("locust") or {}
    figures = {
        "minutes": round(args.minutes, 2),
        "users": args.users,
        "processes": max(series.processes),
        "rss_start_mb": round(mb[0], 1),
        "rss_end_mb": round(mb[-1], 1),
        "rss_max_mb": round(max(mb), 1),
        "slope_mb_per_min": round(slope, 3),
        "slope_2nd_half_mb_per_min": round(slope_late, 3),
        "farm_rss_start_mb": round(series.farm_mb[series.t.index(t[0])], 1),
        "farm_rss_end_mb": round(series.farm_mb[-1], 1),
        "samples": meta.get("sample_count"),
        "samples_on_disk": meta.get("rows_on_disk"),
        "requests": locust.get("requests"),
        "failures": locust.get("failures"),
        "status": meta.get("status"),
        "flat": flat,
    }
    notes = (
        f"reference-before, {args.users} HomeofficeUsers, RSS every {args.interval:g} s after a "
        f"{warmup:g} s warm-up; flat = 2nd-half growth over the run <= {FLAT_SHARE:.0%} of start"
    )
    if args.smoke or args.trace:  # tracemalloc inflates memory: a traced run is diagnosis, not a figure
        for key, value in figures.items():
            print(f"  {key:<28} {value}")
    else:
        from _report import record

        record("endurance", figures, notes)
    complete = meta.get("status") == "completed" and meta.get("sample_count") == meta.get("rows_on_disk")
    if not complete:
        print(f"bench_endurance: the run is {meta.get('status')} or lost samples", file=sys.stderr)
    return 0 if flat and complete else 1


if __name__ == "__main__":
    sys.exit(main())
